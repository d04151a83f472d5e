"""Jobs side by side on one study folder: a folder is held by one live process at a time."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from vasomim.engines.common import IN_USE, FolderInUse, claim, folder_holder
from vasomim.engines.stages import Stage, run_stages


def test_a_held_folder_refuses_a_second_claim_until_released(tmp_path):
    with claim(tmp_path / "run"):
        holder = json.loads((tmp_path / "run" / IN_USE).read_text())
        assert holder["pid"] > 0 and holder["host"] == socket.gethostname()
        with pytest.raises(FolderInUse) as err, claim(tmp_path / "run"):
            pass
        msg = str(err.value)
        assert "\n" not in msg and str(tmp_path / "run") in msg and f"process {holder['pid']}" in msg
        assert f"delete {tmp_path / 'run' / IN_USE}" in msg
    assert not (tmp_path / "run" / IN_USE).exists() and folder_holder(tmp_path / "run") is None
    assert [p.name for p in (tmp_path / "run").iterdir()] == []  # no temporary file left behind
    with claim(tmp_path / "run"):
        pass


def test_a_stale_marker_is_taken_over_and_another_hosts_is_not(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(gone.stdout)  # that process has exited
    folder = tmp_path / "run"
    folder.mkdir()
    for stale in (json.dumps({"pid": dead_pid, "host": socket.gethostname(), "since": "then"}), "", "{not json"):
        (folder / IN_USE).write_text(stale)
        assert folder_holder(folder) is None
        with claim(folder):
            assert json.loads((folder / IN_USE).read_text())["pid"] != dead_pid
        assert not (folder / IN_USE).exists()
    other = {"pid": 1, "host": socket.gethostname() + "-elsewhere", "since": "then"}
    (folder / IN_USE).write_text(json.dumps(other))
    assert folder_holder(folder) == other  # its liveness cannot be checked from here
    with pytest.raises(FolderInUse, match="-elsewhere"), claim(folder):
        pass
    assert json.loads((folder / IN_USE).read_text()) == other  # not removed by the refused claim


def _stage(calls):
    def work(d, cfg, deps):
        calls.append("ran")
        return {"value": 1}
    return Stage("pretrain", "arm", {"p": 1}, work, cost=1.0)


@pytest.mark.parametrize("other_finishes", [True, False])
def test_a_stage_another_job_runs_is_waited_for(tmp_path, other_finishes):
    calls, lines = [], []
    stage = _stage(calls)
    folder = stage.dir(tmp_path)
    held, release = threading.Event(), threading.Event()

    def other_job():  # holds the stage, then finishes it (its stage.json) or gives up
        with claim(folder):
            held.set()
            release.wait(5)
            if other_finishes:
                (folder / "stage.json").write_text(json.dumps({"kind": "pretrain", "name": "arm", "key": stage.key,
                                                               "outputs": {"value": 2}}))

    t = threading.Thread(target=other_job)
    t.start()
    held.wait(5)
    threading.Timer(0.3, release.set).start()
    t0 = time.perf_counter()
    report = run_stages([stage], tmp_path, log=lines.append, poll=0.05)
    t.join()
    assert time.perf_counter() - t0 >= 0.25  # it waited for the other job
    assert sum("waiting, " in line and "in use by process" in line for line in lines) == 1
    if other_finishes:  # the other job's outputs are taken, nothing runs twice
        assert calls == [] and report.cached == ["pretrain/arm"] and report.outputs["pretrain/arm"] == {"value": 2}
    else:
        assert calls == ["ran"] and report.ran == ["pretrain/arm"]
    assert not (folder / IN_USE).exists()


def test_a_shared_stage_is_not_held_as_a_whole(tmp_path):
    calls, lines = [], []
    stage = _stage(calls)
    stage.shared = True
    with claim(stage.dir(tmp_path)):  # held elsewhere: a shared stage's runs hold themselves
        report = run_stages([stage], tmp_path, log=lines.append, poll=0.05)
    assert calls == ["ran"] and report.ran == ["pretrain/arm"] and not any("waiting" in line for line in lines)
