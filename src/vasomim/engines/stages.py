"""A tiny cached-stage runner: every stage runs once, keyed by a hash of its config and inputs.

A study is a graph of stages (anatomy -> segmentor -> pre-training arms -> fine-tunes).  Each stage
has a name, a plain-data config and the stages it depends on.  Its key is the hash of
``(kind, config, keys of its dependencies)``, so changing anything upstream re-runs everything
downstream and nothing else.  A finished stage leaves ``<root>/<kind>/<name>-<key>/stage.json``
holding its outputs (paths, numbers); a re-run finds it and does nothing.  A stage that crashed
leaves no ``stage.json``: the next run starts it again (engines resume from their own last
checkpoint inside the same folder).  A stage whose run returns ``{"partial": True, ...}`` (a study
told to run only some of its fine-tuning runs this session) leaves ``partial.json`` instead: the
report shows what it holds, and the next run continues it.

Several study jobs may run side by side on one study folder (one per arm, or per seed). A stage is
held by the job that runs it (:func:`~vasomim.engines.common.claim`); another job that needs it
waits, then takes its outputs. A ``shared`` stage (the fine-tunes, whose seeds and folds separate
jobs may train at once) is not held as a whole: each of its runs is.

:func:`archive_records` copies the small text records of the finished and partial stages (configs,
logs, per-image scores, summaries; no weights, images or masks) to a folder of their own, laid out
like the study: figures quoted from a study can be re-derived from the archive when the study
folder itself is gone (``vasomim evaluate --compare`` reads its fine-tuning folders).
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from vasomim.config import config_hash
from vasomim.data.io import atomic_file, write_text_atomic
from vasomim.engines.common import IN_USE, FolderInUse, claim

# The records a study stage writes that say what it did and how well (text, small); weights,
# images, masks and the figures of the report stay behind.
RECORD_NAMES = ("stage.json", "partial.json", "stage_config.json", "config.json", "summary.json",
                "per_image.csv", "log.jsonl", "result.json")


@dataclass
class Stage:
    """One unit of cached work.

    Attributes:
        kind: the stage type (``anatomy``, ``segmentor``, ``pretrain``, ``finetune``, ...).
        name: a readable name, unique within its kind.
        config: plain data that fully determines the work (with the dependencies).
        run: ``(stage_dir, config, dep_outputs) -> outputs`` (JSON-able dict).
        deps: stages whose outputs this one reads.
        cost: a rough cost estimate in CPU-minutes for ``--dry-run``.
        remaining: ``stage_dir -> CPU-minutes`` still to spend on a started stage (what its
            finished epochs and runs leave of ``cost``); None: ``cost``.
        shared: several jobs may work in the stage at once (each holds its own runs); otherwise
            the job that runs it holds the whole stage folder and the others wait.
    """

    kind: str
    name: str
    config: dict
    run: Callable[[Path, dict, dict[str, dict]], dict]
    deps: list["Stage"] = field(default_factory=list)
    cost: float = 0.0
    remaining: Callable[[Path], float] | None = None
    shared: bool = False

    def cost_left(self, root: Path) -> float:
        """The estimate of what running the stage now costs (0 when it is finished)."""
        if self.outputs(root) is not None:
            return 0.0
        d = self.dir(root)
        return self.remaining(d) if self.remaining is not None and d.is_dir() else self.cost

    @property
    def key(self) -> str:
        return config_hash(self.kind, self.config, [d.key for d in self.deps])

    def dir(self, root: Path) -> Path:
        return root / self.kind / f"{self.name}-{self.key}"

    def record(self, root: Path) -> dict | None:
        """What a finished run recorded (``outputs``, ``seconds``, ...), or ``None``."""
        marker = self.dir(root) / "stage.json"
        if not marker.is_file():
            return None
        return json.loads(marker.read_text())

    def outputs(self, root: Path) -> dict | None:
        """The outputs recorded by a finished run, or ``None``."""
        record = self.record(root)
        return None if record is None else record["outputs"]

    def latest_record(self, root: Path) -> dict | None:
        """What a finished run recorded, else what a partial one did (``partial.json``), else ``None``."""
        record = self.record(root)
        if record is not None:
            return record
        marker = self.dir(root) / "partial.json"
        return json.loads(marker.read_text()) if marker.is_file() else None

    def results(self, root: Path) -> dict | None:
        """The outputs of a finished run, else those of a partial one (``partial: True``), else ``None``."""
        record = self.latest_record(root)
        return None if record is None else record["outputs"]


def topological(stages: list[Stage]) -> list[Stage]:
    """Every stage and its dependencies, each once, dependencies first (stable order)."""
    seen: dict[str, Stage] = {}

    def visit(s: Stage) -> None:
        ident = f"{s.kind}/{s.name}-{s.key}"
        if ident in seen:
            return
        for d in s.deps:
            visit(d)
        seen[ident] = s

    for s in stages:
        visit(s)
    return list(seen.values())


@dataclass
class RunReport:
    """What a study run did."""

    ran: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    outputs: dict[str, dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # stages run now


@contextmanager
def _held(folder: Path, say, what: str, poll: float):
    """Hold ``folder`` for the block, first waiting (a line, then every ``poll`` s) while another job does."""
    with ExitStack() as stack:
        told = False
        while True:
            try:
                stack.enter_context(claim(folder))
                break
            except FolderInUse as e:
                if not told:
                    say(f"{what}: waiting, {e}")
                    told = True
                time.sleep(poll)
        yield


def run_stages(stages: list[Stage], root: str | os.PathLike, dry_run: bool = False, log=None,
               poll: float = 30.0) -> RunReport:
    """Run what is missing, in dependency order; print one progress line per stage.

    Args:
        stages: the stages wanted (their dependencies are added).
        root: the study folder.
        dry_run: only print the plan (``run`` / ``cached``) and the estimated cost.
        log: a callable taking one line (default: print to stderr).
        poll: seconds between looks at a stage that another job is running.
    """
    root = Path(root)
    say = log or logging.getLogger(__name__).info
    order = topological(stages)
    report = RunReport()
    if dry_run:
        total = 0.0
        say(f"plan for {root} ({len(order)} stages):")
        for s in order:
            done = s.outputs(root) is not None
            left = 0.0 if done else s.cost_left(root)
            total += left
            what = "cached" if done else ("resume" if left < s.cost else "run   ")
            cost = f"~{s.cost:.1f} CPU-min" if done or left >= s.cost else f"~{left:.1f} of {s.cost:.1f} CPU-min left"
            say(f"  {what}  {s.kind:<10} {s.name:<24} {s.key}  {cost}")
        say(f"estimated cost of what would run: ~{total:.0f} CPU-minutes")
        return report
    for i, s in enumerate(order, 1):
        ident = f"{s.kind}/{s.name}"
        prefix = f"[{i}/{len(order)}] {ident}"
        d = s.dir(root)
        record = s.record(root)
        if record is None:
            d.mkdir(parents=True, exist_ok=True)
            hold = nullcontext() if s.shared else _held(d, say, prefix, poll)
            with hold:
                record = s.record(root)  # another job may have finished it while this one waited
                if record is None:
                    say(f"{prefix}: running ...")
                    write_text_atomic(d / "stage_config.json", json.dumps(s.config, indent=2, default=str))
                    t0 = time.perf_counter()
                    dep_out = {f"{dep.kind}/{dep.name}": report.outputs[f"{dep.kind}/{dep.name}"] for dep in s.deps}
                    outputs = s.run(d, s.config, dep_out)
                    dt = time.perf_counter() - t0
                    _finish(s, d, outputs, dt, prefix, report, say)
                    continue
        say(f"{prefix}: cached ({d})")
        report.cached.append(ident)
        report.outputs[ident] = record["outputs"]
    return report


def _finish(s: Stage, d: Path, outputs: dict, dt: float, prefix: str, report: RunReport, say) -> None:
    """Write a stage's ``stage.json`` (``partial.json`` when it is partial) and enter it in the report;
    a stage finished at last drops the ``partial.json`` of its earlier runs."""
    ident = f"{s.kind}/{s.name}"
    partial = bool(outputs.get("partial"))
    write_text_atomic(d / ("partial.json" if partial else "stage.json"),
                      json.dumps({"kind": s.kind, "name": s.name, "key": s.key, "seconds": round(dt, 1),
                                  "outputs": outputs}, indent=2, default=str))
    if not partial:
        (d / "partial.json").unlink(missing_ok=True)
    say(f"{prefix}: {'partly done' if partial else 'done'} in {dt:.0f} s")
    report.ran.append(ident)
    report.outputs[ident] = outputs
    report.seconds[ident] = dt


def archive_records(stages: Iterable[Stage], root: str | os.PathLike, dest: str | os.PathLike,
                    names: Iterable[str] = RECORD_NAMES, max_bytes: int = 2_000_000,
                    merge: Callable[[Stage, Path, Path], list[Path]] | None = None) -> list[Path]:
    """Copy the text records of every finished or partial stage under ``root`` to ``dest``.

    Each stage's folder ``<kind>/<name>-<key>`` is mirrored under ``dest`` with the files named in
    ``names`` found anywhere below it (a fine-tune's ``seed0/fold0/log.jsonl`` keeps its place).
    Stages that have not finished or started are skipped, and so are the fine-tuning runs still in
    progress in a partial stage (``last.pth``, or the in-use marker of a job that has not saved one
    yet, without ``result.json``: their log would be half of one); a file is rewritten only when
    its content changed, through a temporary file (a reader never sees half of one); a stage
    record that differs from the archived one in its time alone (the stage re-run on a new machine)
    is left as archived. A stage archived while partial and finished since loses its stale
    ``partial.json`` in the archive, as it did in the study folder. Records the archive holds and
    the study folder no longer does (a run finished on another machine) are kept; ``merge`` then
    brings the stage's own summaries in line with all of them.

    Args:
        stages: the study's stages (their dependencies are added).
        root: the study folder.
        dest: the archive folder (created).
        names: the file names to copy.
        max_bytes: a file larger than this is not a record: it is skipped with a warning.
        merge: ``(stage, study_dir, archive_dir) -> paths written``, called for each stage after
            its records are copied (the study's fine-tune stages rebuild their summaries there from
            the union of the runs' records).

    Returns:
        The archive paths written or already up to date, sorted.
    """
    root, dest = Path(root), Path(dest)
    if dest.resolve() == root.resolve() or root.resolve() in dest.resolve().parents:
        raise ValueError(f"{dest}: the archive must lie outside the study folder {root}")
    wanted = set(names)
    kept: list[Path] = []
    for s in topological(list(stages)):
        src = s.dir(root)
        if s.results(root) is None:
            continue
        for f in sorted(p for p in src.rglob("*") if p.name in wanted and p.is_file()):
            if _unfinished_run(f.parent):
                continue
            size = f.stat().st_size
            if size > max_bytes:
                logging.getLogger(__name__).warning("%s: %d bytes, not archived (over %d)", f, size, max_bytes)
                continue
            target = dest / f.relative_to(root)
            if f.name == "stage.json" and _same_but_time(f, target):
                kept.append(target)  # the same stage re-run elsewhere: the archived record stands
                continue
            kept.append(copy_if_changed(f, target))
        stale = dest / src.relative_to(root) / "partial.json"
        if (src / "stage.json").is_file() and stale.is_file():
            stale.unlink()
        if merge is not None:
            kept += merge(s, src, dest / src.relative_to(root))
    return sorted(set(kept))


def _same_but_time(a: Path, b: Path) -> bool:
    """Two stage records that differ in their ``seconds`` alone (``b`` may be missing)."""
    if not b.is_file():
        return False
    try:
        ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    except ValueError:
        return False
    return ra != rb and {**ra, "seconds": None} == {**rb, "seconds": None}


def _unfinished_run(folder: Path) -> bool:
    """A fine-tuning run not finished: it has written no ``result.json`` and keeps ``last.pth`` or,
    in its first epoch (before the first ``last.pth``), the marker of the job training in it."""
    if (folder / "result.json").is_file():
        return False
    return (folder / "last.pth").is_file() or (folder / IN_USE).is_file()


def epoch_seconds(lines: Iterable[str]) -> list[float]:
    """The training-epoch times (``epoch_s``) of a fine-tuning run's ``log.jsonl`` lines, in order;
    validation-only lines, and a line cut by a crash, are skipped."""
    times = []
    for line in lines:
        try:
            times.append(float(json.loads(line)["epoch_s"]))
        except (ValueError, KeyError, TypeError):
            continue
    return times


def _run_seconds(result: Path) -> float:
    """One fine-tuning run's wall time: its record's ``wall_s``; for older records that hold 0, the
    sum of the epoch times its ``log.jsonl`` beside it logged (training only, so a lower bound)."""
    wall = float(json.loads(result.read_text()).get("wall_s") or 0.0)
    log = result.parent / "log.jsonl"
    if wall > 0 or not log.is_file():
        return wall
    return sum(epoch_seconds(log.read_text().splitlines()))


def stage_seconds(stage: Stage, root: str | os.PathLike) -> float | None:
    """Compute time a stage has cost so far, over every invocation that worked on it.

    A fine-tune's runs may be trained by several invocations (``only``, ``--resume``), so its time is
    the sum of its finished runs' records (``seedS/foldF/result.json``); any other stage's is the
    ``seconds`` of its ``stage.json`` (or ``partial.json``). ``None`` when nothing is recorded.
    """
    root = Path(root)
    d = stage.dir(root)
    results = sorted(d.glob("seed*/fold*/result.json"))
    if results:
        return sum(_run_seconds(r) for r in results)
    record = stage.latest_record(root)
    return None if record is None else record.get("seconds")


def copy_if_changed(src: Path, target: Path) -> Path:
    """Copy ``src`` to ``target`` unless ``target`` already holds the same bytes; the folder is
    created and the copy goes through a temporary file (a reader never sees half of it)."""
    data = src.read_bytes()
    if not (target.is_file() and target.read_bytes() == data):
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(target) as fh:
            fh.write(data)
    return target
