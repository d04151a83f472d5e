"""The cached stage runner: a second run does nothing, a new arm runs alone, upstream changes propagate."""

from __future__ import annotations

import json

import pytest

from vasomim.engines.common import IN_USE
from vasomim.engines.stages import Stage, archive_records, run_stages, stage_seconds


def make(calls, arms=("a",), up_param=1):
    def up(d, cfg, deps):
        calls.append("up")
        (d / "x.txt").write_text(str(cfg["p"]))
        return {"file": str(d / "x.txt")}

    def arm(d, cfg, deps):
        calls.append(cfg["arm"])
        return {"value": cfg["arm"] * 2, "from": deps["up/base"]["file"]}

    base = Stage("up", "base", {"p": up_param}, up, cost=1.0)
    return [Stage("arm", a, {"arm": a}, arm, deps=[base], cost=2.0) for a in arms]


def test_second_run_does_no_work_and_new_arm_runs_alone(tmp_path):
    calls = []
    r1 = run_stages(make(calls), tmp_path, log=lambda _: None)
    assert calls == ["up", "a"] and r1.ran == ["up/base", "arm/a"]
    r2 = run_stages(make(calls), tmp_path, log=lambda _: None)
    assert calls == ["up", "a"] and r2.ran == [] and r2.outputs["arm/a"]["value"] == "aa"
    r3 = run_stages(make(calls, arms=("a", "b")), tmp_path, log=lambda _: None)
    assert calls == ["up", "a", "b"] and r3.ran == ["arm/b"]


def test_upstream_change_reruns_downstream(tmp_path):
    calls = []
    run_stages(make(calls), tmp_path, log=lambda _: None)
    run_stages(make(calls, up_param=2), tmp_path, log=lambda _: None)
    assert calls == ["up", "a", "up", "a"]


def test_crash_propagates_leaves_no_marker_and_reruns(tmp_path):
    calls = []

    def boom(d, cfg, deps):
        calls.append("boom")
        raise RuntimeError("killed")

    def fine(d, cfg, deps):
        calls.append("fine")
        return {"ok": True}

    s = Stage("arm", "x", {"v": 1}, boom)
    with pytest.raises(RuntimeError, match="killed"):  # a runner never swallows a stage's failure
        run_stages([s], tmp_path, log=lambda _: None)
    assert s.outputs(tmp_path) is None
    # the re-run does the stage again (same config, so same folder) and then caches it
    again = Stage("arm", "x", {"v": 1}, fine)
    report = run_stages([again], tmp_path, log=lambda _: None)
    assert calls == ["boom", "fine"] and report.ran == ["arm/x"]
    assert again.outputs(tmp_path) == {"ok": True}
    assert run_stages([again], tmp_path, log=lambda _: None).ran == [] and calls == ["boom", "fine"]


def test_dry_run_prints_plan_and_cost(tmp_path):
    lines = []
    calls = []
    run_stages(make(calls), tmp_path, dry_run=True, log=lines.append)
    assert calls == []
    assert any("estimated cost" in l and "~3 CPU-minutes" in l for l in lines)
    run_stages(make(calls), tmp_path, log=lambda _: None)
    lines.clear()
    run_stages(make(calls, arms=("a", "b")), tmp_path, dry_run=True, log=lines.append)
    assert sum("cached" in l for l in lines) == 2 and any("~2 CPU-minutes" in l for l in lines)



def test_stage_times_come_from_this_runs_stages_only(tmp_path):
    calls = []
    first = make(calls, up_param=1)
    run_stages(first, tmp_path, log=lambda _: None)
    # upstream change: new folders for both stages; the old ones stay on disk with other times
    for marker in tmp_path.glob("*/*/stage.json"):
        rec = json.loads(marker.read_text())
        marker.write_text(json.dumps({**rec, "seconds": 999.0}))
    second = make(calls, up_param=2)
    report = run_stages(second, tmp_path, log=lambda _: None)
    stages = [second[0].deps[0], second[0]]
    times = [stage_seconds(s, tmp_path) for s in stages]
    assert all(t is not None and t != 999.0 for t in times)
    assert times == [pytest.approx(report.seconds[f"{s.kind}/{s.name}"], abs=0.051) for s in stages]
    assert stage_seconds(first[0], tmp_path) == 999.0  # the older folder keeps its own
    # a cached run changes no recorded time
    again = run_stages(make(calls, up_param=2), tmp_path, log=lambda _: None)
    assert again.seconds == {} and [stage_seconds(s, tmp_path) for s in stages] == times


def _writer(d, cfg, deps):
    (d / "model.pth").write_bytes(b"\0" * 64)  # weights: not a record
    (d / "summary.json").write_text('{"dice": 0.5}')
    (d / "seed0" / "fold0").mkdir(parents=True)
    (d / "seed0" / "fold0" / "log.jsonl").write_text('{"epoch": 1}\n')
    (d / "per_image.csv").write_text("image,dice\na,0.5\n" + "b,0.25\n" * cfg.get("rows", 0))
    return {"ok": True}


def test_archive_copies_the_text_records_of_finished_stages_in_the_study_layout(tmp_path, caplog):
    root, dest = tmp_path / "study", tmp_path / "archive"
    done = Stage("finetune", "a@1", {"v": 1}, _writer)
    big = Stage("finetune", "b@1", {"v": 2, "rows": 40}, _writer)
    run_stages([done, big], root, log=lambda _: None)
    started = Stage("finetune", "c@1", {"v": 3}, _writer)  # a folder but no stage.json: not archived
    started.dir(root).mkdir(parents=True)
    (started.dir(root) / "summary.json").write_text("{}")
    never = Stage("finetune", "d@1", {"v": 4}, _writer)

    kept = archive_records([done, big, started, never], root, dest, max_bytes=200)
    rel = sorted(str(p.relative_to(dest)) for p in kept)
    a, b = f"finetune/a@1-{done.key}", f"finetune/b@1-{big.key}"
    assert rel == sorted([f"{a}/per_image.csv", f"{a}/seed0/fold0/log.jsonl", f"{a}/stage.json",
                          f"{a}/stage_config.json", f"{a}/summary.json",
                          f"{b}/seed0/fold0/log.jsonl", f"{b}/stage.json", f"{b}/stage_config.json",
                          f"{b}/summary.json"])
    assert "per_image.csv" in caplog.text and "not archived" in caplog.text  # b's table is over the cap
    for p in kept:  # byte-identical copies
        assert p.read_bytes() == (root / p.relative_to(dest)).read_bytes()
    assert not list(dest.rglob("*.pth")) and not (dest / "finetune" / f"c@1-{started.key}").exists()

    # a second archive rewrites nothing that did not change, and takes up a changed record
    before = {p: p.stat().st_mtime_ns for p in kept}
    (done.dir(root) / "summary.json").write_text('{"dice": 0.75}')
    again = archive_records([done, big], root, dest, max_bytes=200)
    assert again == kept
    changed = dest / a / "summary.json"
    assert changed.read_text() == '{"dice": 0.75}'
    assert all(p.stat().st_mtime_ns == t for p, t in before.items() if p != changed)

    with pytest.raises(ValueError, match="outside the study folder"):
        archive_records([done], root, root / "archive")


def test_archive_keeps_its_record_of_a_stage_re_run_elsewhere_that_differs_in_time_alone(tmp_path):
    root, dest = tmp_path / "study", tmp_path / "archive"
    stage = Stage("anatomy", "a", {"v": 1}, _writer)
    run_stages([stage], root, log=lambda _: None)
    archive_records([stage], root, dest)
    record = stage.dir(root) / "stage.json"
    archived = dest / record.relative_to(root)
    first = archived.read_text()
    again = json.loads(record.read_text())  # re-run on a new machine: the same outputs, its own time
    record.write_text(json.dumps({**again, "seconds": again["seconds"] + 60.0}))
    assert archived in archive_records([stage], root, dest) and archived.read_text() == first
    record.write_text(json.dumps({**again, "outputs": {"ok": False}}))  # other outputs: taken up
    archive_records([stage], root, dest)
    assert json.loads(archived.read_text())["outputs"] == {"ok": False}


def test_archive_leaves_out_the_runs_still_training_in_a_partial_stage(tmp_path):
    root, dest = tmp_path / "study", tmp_path / "archive"
    stage = Stage("finetune", "a@1", {"v": 1}, _writer)
    run_stages([stage], root, log=lambda _: None)
    d = stage.dir(root)
    (d / "seed0" / "fold0" / "result.json").write_text('{"wall_s": 5.0}')
    (d / "seed1" / "fold0").mkdir(parents=True)  # seed 1 is training: a checkpoint, half a log, no record
    (d / "seed1" / "fold0" / "last.pth").write_bytes(b"\0" * 8)
    (d / "seed1" / "fold0" / "log.jsonl").write_text('{"epoch": 1}\n')
    rel = {str(p.relative_to(dest / d.relative_to(root))) for p in archive_records([stage], root, dest)}
    assert "seed0/fold0/log.jsonl" in rel and "seed0/fold0/result.json" in rel
    assert not any(r.startswith("seed1") for r in rel) and not (dest / d.relative_to(root) / "seed1").exists()
    (d / "seed2" / "fold0").mkdir(parents=True)  # seed 2 just started: its job's marker, no checkpoint yet
    (d / "seed2" / "fold0" / IN_USE).write_text('{"pid": 1, "host": "h"}')
    (d / "seed2" / "fold0" / "log.jsonl").write_text('{"event": "init"}\n')
    rel = {str(p.relative_to(dest / d.relative_to(root))) for p in archive_records([stage], root, dest)}
    assert not any(r.startswith("seed2") for r in rel) and not (dest / d.relative_to(root) / "seed2").exists()


def test_archive_drops_the_partial_marker_of_a_stage_finished_since(tmp_path):
    root, dest = tmp_path / "study", tmp_path / "archive"
    stage = Stage("finetune", "a@1", {"v": 1}, lambda d, cfg, deps: {"partial": True})
    run_stages([stage], root, log=lambda _: None)
    mirror = dest / stage.dir(root).relative_to(root)
    archive_records([stage], root, dest)
    assert (mirror / "partial.json").is_file() and not (mirror / "stage.json").exists()
    done = Stage("finetune", "a@1", {"v": 1}, _writer)  # the same stage, its missing runs now done
    run_stages([done], root, log=lambda _: None)
    assert not (stage.dir(root) / "partial.json").exists()
    archive_records([done], root, dest)
    assert (mirror / "stage.json").is_file() and not (mirror / "partial.json").exists()


def test_stage_seconds_sums_the_runs_of_a_fine_tune_and_reads_other_stages_records(tmp_path):
    fine = Stage("finetune", "a@1", {"v": 1}, _writer)
    other = Stage("pretrain", "p", {"v": 2}, lambda d, cfg, deps: {"ok": True})
    never = Stage("pretrain", "q", {"v": 3}, lambda d, cfg, deps: {"ok": True})
    run_stages([fine, other], tmp_path, log=lambda _: None)
    assert stage_seconds(never, tmp_path) is None
    recorded = json.loads((other.dir(tmp_path) / "stage.json").read_text())["seconds"]
    assert stage_seconds(other, tmp_path) == recorded
    d = fine.dir(tmp_path)
    (d / "seed0" / "fold0" / "result.json").write_text('{"wall_s": 12.5}')
    (d / "seed1" / "fold0").mkdir(parents=True)  # an older record without a time: its log's epoch times
    (d / "seed1" / "fold0" / "result.json").write_text('{"wall_s": 0.0}')
    (d / "seed1" / "fold0" / "log.jsonl").write_text('{"event": "init"}\n{"epoch": 1, "epoch_s": 2.25}\n'
                                                     '{"epoch": 1, "val_dice": 0.5}\n{"epoch": 2, "epoch_s": 1.5}\n')
    (d / "seed2" / "fold0").mkdir(parents=True)  # still training: not counted
    (d / "seed2" / "fold0" / "log.jsonl").write_text('{"epoch": 1, "epoch_s": 99.0}\n')
    assert stage_seconds(fine, tmp_path) == pytest.approx(12.5 + 2.25 + 1.5)
