"""Shared test fixtures: where the real angiograms live, and a skip when they are absent."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


def shared_data(*parts: str) -> Path:
    """Path under the shared real-data folder; skips the calling test with a reason when absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real angiograms not available: {path} is absent (tests on real data are skipped)")
    return path


@pytest.fixture
def real_data() -> Path:
    return shared_data()


def pytest_configure(config):
    """One torch thread per test process: the tests use tiny models, and several processes (DDP
    tests, DataLoader workers) spinning on 2 shared cores would otherwise slow each other ~10x."""
    import logging

    import torch

    from vasomim.cli import configure_logging

    torch.set_num_threads(1)
    # the library's messages reach stderr as under the command line, where capsys sees them
    configure_logging(logging.INFO)


@pytest.fixture(autouse=True)
def _library_messages_on_stderr():
    """Every test starts with the library's messages on stderr at INFO: a CLI call with ``--quiet``
    in an earlier test must not silence the messages a later test reads."""
    import logging

    from vasomim.cli import configure_logging

    configure_logging(logging.INFO)
