"""Anatomy worker processes die with their parent: a SIGKILLed `vasomim anatomy --workers 2` leaves
no process behind (an orphaned worker would hang on its task queue, or write masks no manifest
line records)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def children(pid: int) -> list[int]:
    """Pids whose parent is `pid` (from /proc/*/stat)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_sigkilled_parent_leaves_no_worker_behind(tmp_path):
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(48):  # enough work that the run is still going when it is killed
        Image.fromarray(rng.integers(0, 256, (384, 384), dtype=np.uint8)).save(images / f"noise_{i:02d}.png")
    code = "import sys; from vasomim.cli import main; sys.exit(main())"
    proc = subprocess.Popen([sys.executable, "-c", code, "anatomy", str(images), str(tmp_path / "out"),
                             "--workers", "2", "--border", "4", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            workers = children(proc.pid)
        time.sleep(0.5)
        workers = children(proc.pid)  # the two workers, and multiprocessing's resource tracker
        assert len(workers) >= 2, "the run did not start two worker processes"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 20  # a worker still importing checks its parent once it is up
        while any(alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if alive(w)], "processes outlived their killed parent"
    finally:
        proc.kill()
        for w in workers:  # never leave an orphan behind, even when the test fails
            if alive(w):
                os.kill(w, signal.SIGKILL)
