"""The ``vasomim`` command line: one entry point, one module per subcommand.

Each module in :data:`COMMANDS` exposes ``register(subparsers)`` (adds its parser; must stay light:
no torch import at module level) and ``run(args) -> int``.  Heavy imports happen inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# (subcommand, module under vasomim.cli)
COMMANDS: list[tuple[str, str]] = [
    ("demo", "demo"),
    ("study", "study"),
    ("synth", "synth"),
    ("anatomy", "anatomy"),
    ("train-segmentor", "train_segmentor"),
    ("pretrain", "pretrain"),
    ("data", "data"),
    ("analyze", "analyze"),
    ("finetune", "finetune"),
    ("evaluate", "evaluate"),
    ("predict", "predict"),
    ("export", "export"),
    ("models", "models"),  # also `ship`
]


def build_parser() -> argparse.ArgumentParser:
    from vasomim import __version__

    parser = argparse.ArgumentParser(
        prog="vasomim",
        description="Vascular anatomy-aware masked image modeling for X-ray angiogram vessel segmentation.",
    )
    parser.add_argument("--version", action="version", version=f"vasomim {__version__}")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("--quiet", "-q", dest="log_quiet", action="store_true",
                       help="only warnings and errors on stderr, no progress bars (as COMMAND --quiet)")
    noise.add_argument("--verbose", "-v", dest="log_verbose", action="store_true",
                       help="also debug messages of the vasomim logger")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for _name, module in COMMANDS:
        mod = importlib.import_module(f"vasomim.cli.{module}")
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    quiet = args.log_quiet or getattr(args, "quiet", False)
    if args.log_quiet and hasattr(args, "quiet"):
        args.quiet = True  # no progress bars either
    configure_logging(logging.DEBUG if args.log_verbose else logging.WARNING if quiet else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # an output the system refused: read-only, full disk, permission ...
        print(f"error: {os_error_line(exc)}", file=sys.stderr)
        return 1


class _StderrHandler(logging.StreamHandler):
    """A stream handler on whatever ``sys.stderr`` is when a message comes (tests and tqdm replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def configure_logging(level: int) -> None:
    """Messages of the ``vasomim`` logger go to stderr, one per line, from `level` up.

    The library only logs (``logging.getLogger("vasomim...")``); the command line decides where the
    messages go. Calling this again replaces the handler it installed (no duplicate lines).
    """
    logger = logging.getLogger("vasomim")
    for handler in [h for h in logger.handlers if getattr(h, "_vasomim_cli", False)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler._vasomim_cli = True
    logger.addHandler(handler)
    logger.setLevel(level)


def os_error_line(exc: OSError) -> str:
    """``PATH: reason`` in one line (the atomic writers name the file they were writing)."""
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    return f"{exc.filename}: {reason}" if exc.filename is not None else reason


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
