"""A whole (tiny) study: every stage runs once, a re-run does nothing, a new arm runs alone."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from vasomim.cli import main
from vasomim.data.synthetic import write_dataset
from vasomim.engines.study import StudyConfig, build_stages, run_study

TINY_VIT = {"embed_dim": 64, "depth": 2, "num_heads": 4}


def tiny_study(root, arms=None) -> StudyConfig:
    return StudyConfig(
        name="tiny study",
        out=str(root / "study"),
        labelled=str(root / "labelled"),
        unlabelled=[str(root / "unlabelled" / "images")],
        anatomy={"border": 3, "workers": 1},
        segmentor={"img_size": 64, "epochs": 1, "batch_size": 4, "workers": 0},
        pretrain={"data": {"img_size": 64}, "model": {"size": "tiny", **TINY_VIT, "decoder_embed_dim": 32,
                                                       "decoder_depth": 1, "decoder_num_heads": 4},
                  "optim": {"lr": 1e-3, "warmup_epochs": 0}, "epochs": 1, "batch_size": 4, "workers": 0,
                  "device": "cpu", "save_every": 1},
        finetune={"size": "tiny", **TINY_VIT, "img_size": 64, "epochs": 1, "batch_size": 4, "val_every": 1,
                  "folds": 2, "seeds": [0], "workers": 0, "device": "cpu", "decoder_channels": [32, 16, 16, 8, 8]},
        finetune_arms=arms or {"scratch": {"init": "scratch"}, "vasomim": {"init": "pretrain:vasomim"}},
        pretrain_arms={"vasomim": {}, "mae": {"masking": {"beta_E": 0.0}, "consistency": {"weight": 0.0}}},
        analysis_images=2,
        sweeps={"initialisation": {"scratch": "scratch", "vasomim": "vasomim"}},
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    write_dataset(root / "labelled", count=6, size=64, seed=0, progress=False)
    write_dataset(root / "unlabelled", count=6, size=64, seed=50, progress=False)
    return root


def ran(err: str) -> list[str]:
    return re.findall(r"\] (\S+): running", err)


def test_study_runs_caches_and_adds_an_arm(data, capsys):
    cfg = tiny_study(data)
    report = run_study(cfg)
    err = capsys.readouterr().err
    assert set(ran(err)) == {"corpus/corpus", "anatomy/anatomy", "segmentor/segmentor", "pretrain/vasomim",
                             "pretrain/mae", "finetune/scratch@1", "finetune/vasomim@1", "frangi/frangi", "frangi/frangi-fov"}
    md = report.read_text()
    html = report.with_name("index.html").read_text()
    for arm in ("Frangi", "scratch", "vasomim"):
        assert arm in md and arm in html
    for fig in ("vessel_share.png", "masking_map.png", "reconstructions.png", "clustering.png", "sweep_0.png", "curves_1.png",
                "case_Frangi_Sato_paper_best.png", "case_Frangi_Sato_fov_best.png"):
        assert (report.parent / "figures" / fig).is_file(), fig
    # the table holds the numbers the fine-tune stage computed
    graph = build_stages(cfg)
    m = graph["finetune"][("scratch", 1.0)].outputs(Path(cfg.out))["metrics"]["dice"]
    assert f"{100 * m['mean']:.2f} ± {100 * m['std']:.2f}" in md

    # paired per-image differences: vasomim minus scratch, recomputed from the two per-image CSVs
    from vasomim.engines.study_report import paired_rows

    (row,) = paired_rows(graph, Path(cfg.out))
    assert row["comparison"] == "vasomim - scratch" and "Paired per-image differences" in md
    per = {arm: {} for arm in ("vasomim", "scratch")}
    for arm in per:
        with open(graph["finetune"][(arm, 1.0)].outputs(Path(cfg.out))["per_image"], newline="") as fh:
            for r in csv.DictReader(fh):
                per[arm][r["image"]] = float(r["dice"])  # one seed: one score per image
    diffs = [per["vasomim"][i] - per["scratch"][i] for i in per["vasomim"]]
    assert row["ΔDSC (points)"].startswith(f"{100 * sum(diffs) / len(diffs):+.2f} ± ")
    # and per fold: the difference of the two arms' fold means, one per (seed, fold) run
    folds = {arm: {} for arm in per}
    for arm in folds:
        with open(graph["finetune"][(arm, 1.0)].outputs(Path(cfg.out))["per_image"], newline="") as fh:
            for r in csv.DictReader(fh):
                folds[arm].setdefault((r["seed"], r["fold"]), []).append(float(r["dice"]))
    fold_diffs = [sum(folds["vasomim"][k]) / len(folds["vasomim"][k]) - sum(folds["scratch"][k]) / len(folds["scratch"][k])
                  for k in folds["vasomim"]]
    assert row["ΔDSC per fold"].startswith(f"{100 * sum(fold_diffs) / len(fold_diffs):+.2f} ± ")
    assert row["ΔDSC per fold"].endswith(f"(n={len(fold_diffs)})")

    # the archive holds the records behind those figures: the paired row comes back from it alone
    from vasomim.engines.evaluate import compare_per_image
    from vasomim.engines.study import archive_study

    archive = data / "archive"
    kept = archive_study(cfg, archive)
    assert (archive / "report" / "report.md").read_text() == report.read_text()
    assert not [p for p in archive.rglob("*") if p.suffix in (".pth", ".png", ".safetensors")]
    assert all(p.stat().st_size < 2_000_000 for p in kept)
    stage_dirs = {arm: archive / graph["finetune"][(arm, 1.0)].dir(Path(cfg.out)).relative_to(cfg.out)
                  for arm in ("vasomim", "scratch")}
    back = compare_per_image(stage_dirs["vasomim"], stage_dirs["scratch"])["metrics"]["dice"]
    assert row["ΔDSC (points)"].startswith(f"{100 * back['mean']:+.2f} ± {100 * back['std']:.2f}")
    assert (stage_dirs["vasomim"] / "seed0" / "fold0" / "log.jsonl").is_file()

    run_study(cfg)
    assert ran(capsys.readouterr().err) == []  # a second run does no work

    cfg2 = tiny_study(data, arms={"scratch": {"init": "scratch"}, "vasomim": {"init": "pretrain:vasomim"},
                                  "unet": {"arch": "unet", "base_channels": 4, "levels": 2}})
    run_study(cfg2)
    assert ran(capsys.readouterr().err) == ["finetune/unet@1"]  # only the new arm


def test_dry_run_and_bad_arm(data, tmp_path, capsys):
    cfg = tiny_study(data)
    cfg = cfg.model_copy(update={"out": str(tmp_path / "fresh")})
    assert run_study(cfg, dry_run=True) is None
    err = capsys.readouterr().err
    assert "estimated cost" in err and "run " in err
    assert not (tmp_path / "fresh" / "finetune").exists()
    bad = tiny_study(data, arms={"x": {"init": "pretrain:nope"}}).model_copy(update={"sweeps": {}})
    with pytest.raises(ValueError, match="names no pre-training arm"):
        build_stages(bad)
    with pytest.raises(ValueError, match="not fine-tune arms"):
        build_stages(StudyConfig.model_validate({**tiny_study(data).model_dump(), "sweeps": {"x": {"nope": 1.0}}}))
    with pytest.raises(ValueError, match=r"fraction 0.5 is not one of the study's label fractions \(1\)"):
        build_stages(StudyConfig.model_validate({**tiny_study(data).model_dump(),
                                                 "sweeps": {"x": {"points": {"scratch": 1}, "fraction": 0.5}}}))


def test_a_sweep_reads_its_own_label_fraction_and_skips_arms_not_run(data, tmp_path):
    """``{points, fraction}`` plots the arms at that fraction; the plain ``{arm: x}`` form, the
    largest; arms without a finished run are left out and a sweep with none is skipped (the
    figure's table, written beside it, holds the recorded run scores)."""
    from vasomim.engines.study_report import _sweeps

    cfg = StudyConfig.model_validate({**tiny_study(data).model_dump(), "out": str(tmp_path / "s"),
                                      "label_fractions": [0.1, 1.0], "sweeps": {
        "pre-training epochs": {"points": {"scratch": 0, "vasomim": 16}, "fraction": 0.1},
        "initialisation": {"scratch": "scratch", "vasomim": "vasomim"},
        "none yet": {"points": {"vasomim": 1}, "fraction": 1.0}}})
    assert cfg.sweeps["initialisation"].fraction is None and cfg.sweeps["initialisation"].points["vasomim"] == "vasomim"
    graph, root = build_stages(cfg), Path(cfg.out)
    scores = {("scratch", 0.1): 0.50, ("vasomim", 0.1): 0.60, ("scratch", 1.0): 0.70}
    for (arm, frac), dice in scores.items():
        stage = graph["finetune"][(arm, frac)]
        stage.dir(root).mkdir(parents=True)
        runs = [{"seed": 0, "fold": f, "dice": dice + 0.02 * f, "cldice": dice} for f in (0, 1)]
        (stage.dir(root) / "stage.json").write_text(json.dumps({"outputs": {"runs": runs, "metrics": {}}}))
    graph = {**graph, "finetune": {k: s for k, s in graph["finetune"].items() if k in scores}}  # as the report has it
    figures = []
    rep = type("R", (), {"add_figure": lambda self, png, caption: figures.append((png.name, caption))})()
    _sweeps(cfg, graph, root, rep, tmp_path / "fig")
    assert [name for name, _ in figures] == ["sweep_0.png", "sweep_1.png"]
    assert "at 0.1 of the labels" in figures[0][1] and "at 0.1" not in figures[1][1]
    budget = json.loads((tmp_path / "fig" / "sweep_0.json").read_text())["table"]
    assert {(e["x"], round(e["dice_mean"], 6)) for e in budget} == {(0, 0.51), (16, 0.61)}
    init = json.loads((tmp_path / "fig" / "sweep_1.json").read_text())["table"]
    assert {(e["x"], round(e["dice_mean"], 6)) for e in init} == {("scratch", 0.71)}  # vasomim@1 never ran


def test_validation_rows_read_the_held_out_scores_each_finished_run_logged(tmp_path):
    """By hand: a training-only line and a cut line are skipped, a resumed run's repeated epoch
    counts once (its last line), and a run the stage does not list is not read."""
    from vasomim.engines.stages import Stage
    from vasomim.engines.study_report import validation_rows

    stage = Stage("finetune", "vasomim@0.1", {"v": 1}, lambda d, c, deps: {})
    d = stage.dir(tmp_path)
    (d / "seed0" / "fold0").mkdir(parents=True)
    (d / "seed1" / "fold0").mkdir(parents=True)
    (d / "stage.json").write_text(json.dumps({"outputs": {"runs": [{"seed": 0, "fold": 0}]}}))
    lines = [{"epoch": 0, "val_dice": 0.1, "val_cldice": 0.05}, {"epoch": 1, "loss": 0.9},
             {"epoch": 2, "val_dice": 0.5, "val_cldice": 0.4}, {"epoch": 2, "val_dice": 0.6, "val_cldice": 0.45}]
    (d / "seed0" / "fold0" / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"epoch": 3, "val_')
    (d / "seed1" / "fold0" / "log.jsonl").write_text(json.dumps({"epoch": 0, "val_dice": 0.9, "val_cldice": 0.9}))
    assert validation_rows(stage, tmp_path) == [
        {"arm": "vasomim", "x": 0, "seed": "0-0", "dice": 0.1, "cldice": 0.05},
        {"arm": "vasomim", "x": 2, "seed": "0-0", "dice": 0.6, "cldice": 0.45}]


def test_a_cnn_unet_pretraining_arm_runs_through_the_study_and_its_report(data, tmp_path):
    """VasoMIM for the CNN U-Net as a study arm: pre-trained, fine-tuned from, in the tables and the
    Fig. 3a curve and the clustering table; the reconstructions come from the first guided arm."""
    unet = {"arch": "unet", "base_channels": 4, "levels": 2, "norm": "batch", "patch_size": 4}
    cfg = tiny_study(data).model_copy(update={
        "out": str(tmp_path / "s"),
        "pretrain_arms": {"vasomim": {}, "unet_vasomim": {"model": unet}},
        "finetune_arms": {"unet_vasomim": {"arch": "unet", "base_channels": 4, "levels": 2,
                                           "init": "pretrain:unet_vasomim"}},
        "sweeps": {}})
    report = run_study(cfg)
    md = report.read_text()
    assert "unet_vasomim (CNN U-Net, init pretrain:unet_vasomim)" in md
    assert (report.parent / "figures" / "vessel_share.png").is_file()
    assert (report.parent / "figures" / "reconstructions.png").is_file()  # from the ViT arm
    assert "Clustering of patch embeddings" in md and "Analyses could not be produced" not in md
    clustering = md.split("Clustering of patch embeddings")[1]
    assert "unet_vasomim" in clustering and "vasomim" in clustering.replace("unet_vasomim", "")


def test_a_selection_study_pairs_every_arm_with_the_reference_it_names(data, tmp_path):
    """A study with no VasoMIM arm (an input-scale selection) names its reference arm with
    ``paired_with``; its report has the paired table, no pre-training corpus, and the arms' span of
    window sizes and scales."""
    unet = {"arch": "unet", "base_channels": 4, "levels": 2}
    arms = {"unet_s1": {**unet, "input_scale": 1.0}, "unet_s0.5": {**unet, "input_scale": 0.5, "img_size": 32}}
    cfg = tiny_study(data, arms=arms).model_copy(update={
        "out": str(tmp_path / "s"), "pretrain_arms": {}, "sweeps": {}, "frangi": False, "analyses": False})
    with pytest.raises(ValueError, match="paired_with names nope: not a fine-tune arm"):
        StudyConfig.model_validate({**cfg.model_dump(), "paired_with": ["nope"]})
    md = run_study(cfg).read_text()
    assert "Paired per-image differences" not in md  # no VasoMIM arm, no reference named
    cfg = StudyConfig.model_validate({**cfg.model_dump(), "paired_with": ["unet_s0.5"]})
    md = run_study(cfg).read_text()
    paired = md.split("Paired per-image differences")[1]
    assert "unet_s0.5 - unet_s1" in paired and "Each reference arm (unet_s0.5)" in paired
    assert "pre-training corpus" not in md
    assert "1 epochs at 32-64 px, input scale 0.5-1, 2 folds" in md


def test_held_out_set_is_scored_by_every_arm_and_the_frangi_rows(data, tmp_path):
    cfg = tiny_study(data).model_copy(update={"held_out": str(data / "unlabelled"), "label_fractions": [0.5, 1.0]})
    graph = build_stages(cfg)
    for stage in graph["finetune"].values():
        assert stage.config["val_data"] == str(data / "unlabelled") and stage.config["folds"] == 1
        assert stage.config["data"] == str(data / "labelled")
    assert {s.config["labelled"] for s in graph["frangi"]} == {str(data / "unlabelled")}
    assert {s.config["recipe"] for s in graph["frangi"]} == {"paper", "fov"}


def test_study_cli_reports_bad_file(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text("labelled: somewhere\nunknown_key: 1\n")
    assert main(["study", str(tmp_path / "s.yaml")]) == 2
    assert "unknown_key" in capsys.readouterr().err
    # --archive of a study that has not run: one line naming the folder, nothing written
    (tmp_path / "s.yaml").write_text(f"labelled: somewhere\nout: {tmp_path / 'never'}\n")
    assert main(["study", str(tmp_path / "s.yaml"), "--archive", str(tmp_path / "arch")]) == 2
    err = capsys.readouterr().err
    assert "never: no such study folder" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "arch").exists()


def test_example_studies_are_valid(tmp_path):
    """Every study in examples/ parses, and each of its arms builds a valid engine config."""
    from vasomim.config import build_config, deep_merge
    from vasomim.engines.finetune import FinetuneConfig
    from vasomim.engines.pretrain import PretrainConfig
    from vasomim.engines.segmentor import SegmentorConfig

    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("study_*.yaml"))
    assert len(examples) >= 3
    for path in examples:
        cfg = build_config(StudyConfig, path)
        seg = {k: v for k, v in cfg.segmentor.items() if k != "checkpoint"}
        SegmentorConfig(**seg, images="x", anatomy="y")
        for over in cfg.pretrain_arms.values():
            values = deep_merge(deep_merge(cfg.pretrain, over), {"data": {"images": "x", "anatomy": "y"},
                                                                "consistency": {"segmentor": None}})
            synthetic = values.pop("synthetic", None)  # the study turns it into a corpus spec
            if synthetic:
                assert set(synthetic) <= {"count", "size", "seed", "share", "preset", "config"}, path
            PretrainConfig.model_validate(values)
        for over in cfg.finetune_arms.values():
            over = dict(over)
            assert set(over.pop("label_fractions", cfg.label_fractions)) <= set(cfg.label_fractions), path
            FinetuneConfig.model_validate(deep_merge(deep_merge(cfg.finetune, over), {"data": "x"}))


def test_a_study_split_across_sessions_with_only(data, tmp_path, capsys):
    """``only`` runs part of the fine-tuning: stage keys ignore it, a stage with runs missing is
    reported as partial, and the next run trains only what is missing and completes the stage."""
    from vasomim.engines.study import StudyPart

    cfg = tiny_study(data, arms={"scratch": {"init": "scratch"}, "unet": {"arch": "unet", "base_channels": 4,
                                                                           "levels": 2}})
    cfg = cfg.model_copy(update={"out": str(tmp_path / "s"), "sweeps": {}, "analyses": False, "frangi": False,
                                 "pretrain_arms": {}})
    root = Path(cfg.out)
    first = cfg.model_copy(update={"only": StudyPart(arms=["scratch"], folds=[1])})
    assert {s.key for s in build_stages(first)["finetune"].values()} == \
        {s.key for s in build_stages(cfg)["finetune"].values()}
    md = run_study(first).read_text()
    err = capsys.readouterr().err
    assert ran(err) == ["finetune/scratch@1"] and "partly done" in err
    stage = build_stages(cfg)["finetune"][("scratch", 1.0)]
    assert stage.outputs(root) is None  # not finished ...
    part = stage.results(root)  # ... but its finished run is reported
    assert part["partial"] and part["n_runs_planned"] == 2 and [r["fold"] for r in part["runs"]] == [1]
    assert "1 of 2 runs (partial)" in md and "unet (CNN U-Net" not in md
    fold1 = (stage.dir(root) / "seed0" / "fold1" / "last.pth").stat().st_mtime_ns
    # the dry run costs what is left: fold 1 is done, fold 0 is still to train
    assert stage.cost_left(root) == pytest.approx(stage.cost / 2)
    run_study(cfg, dry_run=True)
    assert f"~{stage.cost / 2:.1f} of {stage.cost:.1f} CPU-min left" in capsys.readouterr().err

    md = run_study(cfg).read_text()  # the whole study: the missing fold and the other arm
    err = capsys.readouterr().err
    assert sorted(ran(err)) == ["finetune/scratch@1", "finetune/unet@1"] and "partly done" not in err
    assert (stage.dir(root) / "seed0" / "fold1" / "last.pth").stat().st_mtime_ns == fold1  # not retrained
    assert [r["fold"] for r in stage.outputs(root)["runs"]] == [0, 1]
    assert "(partial)" not in md and "unet (CNN U-Net" in md

    # a later invocation for one arm still reports every stage's time; a fine-tune trained by two
    # invocations counts both of its runs (its stage.json holds only the second invocation's time)
    record = stage.dir(root) / "seed0" / "fold1" / "result.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "wall_s": 1000.0}))  # a time to recognise
    wall0 = json.loads((stage.dir(root) / "seed0" / "fold0" / "result.json").read_text())["wall_s"]
    md = run_study(cfg.model_copy(update={"only": StudyPart(arms=["unet"])})).read_text()
    line = next(ln for ln in md.splitlines() if "stage wall times" in ln)
    assert f"finetune/scratch@1 {1000.0 + wall0:.0f} s" in line and "finetune/unet@1" in line


def test_cost_estimate_is_images_times_epochs_times_measured_seconds(data):
    """The dry-run estimate of a fine-tune stage, worked by hand: 2 folds of 6 images (3 train each),
    1 seed, 1 epoch at 64 px of a ViT-Tiny: 2 x 3 x 1 x 0.50 s x (64/256)^2 = 0.1875 s."""
    stage = build_stages(tiny_study(data))["finetune"][("scratch", 1.0)]
    assert stage.cost == pytest.approx(2 * 3 * 1 * 0.50 * (64 / 256) ** 2 / 60)


def test_an_arm_at_fewer_fractions_and_the_cost_of_synthetic_frames(data):
    """``label_fractions`` in a fine-tune arm runs it at those fractions only, and leaves the other
    arms' keys alone; a pre-training arm with synthetic frames at share 0.5 costs, by hand: an epoch
    of max(12 / 0.5, 30 / 0.5) = 60 frames at 0.034 s (64 px: x 1/4), plus 30 generated frames at
    0.06 s (64 px: x 1/16), for 2 epochs."""
    base = tiny_study(data).model_copy(update={"label_fractions": [0.5, 1.0], "sweeps": {}})
    arms = {**base.finetune_arms, "ablation": {"init": "pretrain:synth", "label_fractions": [1.0]}}
    pre = {**base.pretrain_arms, "synth": {"epochs": 2, "synthetic": {"count": 30, "size": 64, "share": 0.5}}}
    cfg = base.model_copy(update={"finetune_arms": arms, "pretrain_arms": pre})
    graph, before = build_stages(cfg), build_stages(base)
    assert sorted(k for k in graph["finetune"] if k[0] == "ablation") == [("ablation", 1.0)]
    for k, stage in before["finetune"].items():
        assert graph["finetune"][k].key == stage.key
    n_corpus = len(graph["corpus"].config["entries"])
    assert n_corpus == 12  # 6 unlabelled + 6 labelled images
    expected = (60 * 2 * 0.034 * (64 / 128) ** 2 + 30 * 2 * 0.06 * (64 / 256) ** 2) / 60
    assert graph["pretrain"]["synth"].cost == pytest.approx(expected)


def test_cost_left_of_started_stages_counts_the_epochs_not_logged(tmp_path):
    """By hand: a pre-training run of 10 epochs that logged 3 (and a line cut by a crash) has 70%
    of its cost left; a fine-tune stage of 2 seeds x 2 folds, 4 epochs each, with one run at
    epoch 1 and one finished, has 0.75 + 0 + 1 + 1 runs of 4 left when the whole stage runs, and
    0.75 + 0 + 1 when ``only`` picks seed 0 (a started run is always finished)."""
    import json

    from vasomim.engines.study import StudyPart, _finetune_minutes, _finetune_remaining, _pretrain_remaining

    pre = tmp_path / "pre"
    pre.mkdir()
    (pre / "log.jsonl").write_text("".join(json.dumps({"epoch": e, "loss": 1.0}) + "\n" for e in (1, 2, 3))
                                   + '{"epoch": 4, "lo')
    assert _pretrain_remaining(50.0, 10)(pre) == pytest.approx(35.0)

    v = {"seeds": [0, 1], "folds": 2, "epochs": 4, "img_size": 256, "size": "tiny"}
    per_run = _finetune_minutes(v, 8) / 4
    ft = tmp_path / "ft"
    for (seed, fold), epochs in {(0, 0): 1, (1, 1): 4}.items():
        run = ft / f"seed{seed}" / f"fold{fold}"
        run.mkdir(parents=True)
        (run / "last.pth").write_bytes(b"")
        (run / "log.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in range(1, epochs + 1)))
    assert _finetune_remaining(v, 8, None)(ft) == pytest.approx(per_run * (0.75 + 0 + 1 + 1))
    assert _finetune_remaining(v, 8, StudyPart(seeds=[0]))(ft) == pytest.approx(per_run * (0.75 + 1 + 0))


def test_dry_run_estimates_from_the_studys_own_finished_runs(data, tmp_path, capsys):
    """Finished runs' logged epoch times replace the table's fine-tuning cost: a ViT-Tiny run at
    128 px on 10 images with epochs of 0.5 s (and a validation epoch's 9 s that is training time
    too) is 0.05 s an image-epoch at 128 px, 4 x 0.05 at the table's 256 px; by hand over 25 epochs
    (24 x 0.5 + 9) / 25 / 10 / 0.25 = 0.336 s. A second run of 0.2 s -> median of the two. Short
    logs, unreadable records and a run without a record do not count; a U-Net run gives its own kind."""
    import json

    from vasomim.engines.study import _SECONDS_PER_IMAGE, measured_seconds_per_image

    def run(stage, seed, cfg, n_train, times, record=True):
        d = tmp_path / "study" / "finetune" / stage / f"seed{seed}" / "fold0"
        d.mkdir(parents=True)
        lines = [{"epoch": 0, "val_dice": 0.5}] + [{"epoch": e + 1, "epoch_s": t} for e, t in enumerate(times)]
        (d / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"epoch": 99, "ep')
        if record:
            (d / "result.json").write_text(json.dumps({"n_train": n_train, "config": cfg}))

    vit = {"arch": "vit", "size": "tiny", "img_size": 128}
    run("scratch@1-a", 0, vit, 10, [0.5] * 24 + [9.0])
    run("scratch@1-a", 1, vit, 10, [0.2 * 0.25 * 10] * 30)  # 0.2 s at 256 px
    run("scratch@1-a", 2, vit, 10, [5.0] * 19)  # too short a log
    run("scratch@1-a", 3, vit, 10, [5.0] * 30, record=False)  # still training
    run("unet@1-b", 0, {"arch": "unet", "img_size": 256}, 4, [0.4] * 20)
    bad = tmp_path / "study" / "finetune" / "unet@1-b" / "seed1" / "fold0"
    bad.mkdir(parents=True)
    (bad / "result.json").write_text("{not json")
    (bad / "log.jsonl").write_text(json.dumps({"epoch": 1, "epoch_s": 100.0}) + "\n")

    timing = measured_seconds_per_image(tmp_path / "study")
    assert set(timing) == {"finetune_vit", "finetune_unet"}
    assert timing["finetune_vit"][1] == 2
    assert timing["finetune_vit"][0] == pytest.approx(((24 * 0.5 + 9.0) / 25 / 10 / 0.25 + 0.2) / 2)
    assert timing["finetune_unet"] == (pytest.approx(0.1), 1)
    assert measured_seconds_per_image(tmp_path / "nowhere") == {}

    # the estimates scale by measured / table, and the plan says where they came from
    cfg = tiny_study(data).model_copy(update={"out": str(tmp_path / "study")})
    table, mine = build_stages(cfg), build_stages(cfg, timing)
    ratio = timing["finetune_vit"][0] / _SECONDS_PER_IMAGE["finetune_vit"][0]
    for key, stage in table["finetune"].items():
        assert mine["finetune"][key].cost == pytest.approx(ratio * stage.cost)
        assert mine["finetune"][key].key == stage.key  # timing never changes what a stage is
    assert mine["pretrain"]["vasomim"].cost == table["pretrain"]["vasomim"].cost
    run_study(cfg, dry_run=True)
    assert "finetune vit estimates from this study's 2 finished run(s)" in capsys.readouterr().err


def test_fraction_schedule_steps_gives_every_fraction_the_full_label_steps(data):
    """``fraction_schedule: steps``: at 25% labels 4x the epochs and warm-up (by hand: 3 -> 12
    epochs, 1 -> 4 warm-up), at 50% 2x; the full-label stage and its key do not change."""
    base = tiny_study(data).model_copy(update={"label_fractions": [0.25, 0.5, 1.0], "sweeps": {},
                                               "finetune": {**tiny_study(data).finetune, "epochs": 3,
                                                            "warmup_epochs": 1}})
    steps = base.model_copy(update={"fraction_schedule": "steps"})
    a, b = build_stages(base)["finetune"], build_stages(steps)["finetune"]
    assert (a[("scratch", 0.25)].config["epochs"], a[("scratch", 0.25)].config["warmup_epochs"]) == (3, 1)
    assert (b[("scratch", 0.25)].config["epochs"], b[("scratch", 0.25)].config["warmup_epochs"]) == (12, 4.0)
    assert (b[("scratch", 0.5)].config["epochs"], b[("scratch", 0.5)].config["warmup_epochs"]) == (6, 2.0)
    assert b[("scratch", 1.0)].key == a[("scratch", 1.0)].key
    assert b[("scratch", 0.25)].key != a[("scratch", 0.25)].key
    # the same steps: the cost of a quarter of the frames for four times the epochs
    assert b[("scratch", 0.25)].cost == pytest.approx(4 * a[("scratch", 0.25)].cost)


def test_a_lost_study_folder_refilled_from_its_archive_keeps_its_finished_runs(data, tmp_path, capsys):
    """The archive keeps each finished run's record (``result.json``): copied into a new study
    folder, those runs count in the stage without their weights, and only the rest is trained. The
    report's overlays come from the first run that still has its weights (fold 1 here)."""
    import shutil

    from vasomim.engines.study import StudyPart, archive_study

    cfg = tiny_study(data, arms={"scratch": {"init": "scratch"}})
    cfg = cfg.model_copy(update={"out": str(tmp_path / "s"), "sweeps": {}, "analyses": False, "frangi": False,
                                 "pretrain_arms": {}})
    run_study(cfg.model_copy(update={"only": StudyPart(folds=[0])}))
    archive_study(cfg, tmp_path / "archive")
    stage = build_stages(cfg)["finetune"][("scratch", 1.0)]
    archived = stage.dir(tmp_path / "archive")
    assert (archived / "seed0" / "fold0" / "result.json").is_file()
    assert not list(archived.rglob("*.pth"))
    with open(archived / "per_image.csv", newline="") as fh:
        fold0 = [r for r in csv.DictReader(fh) if r["fold"] == "0"]

    shutil.rmtree(tmp_path / "s")  # the study folder is lost (a new machine): its records come back
    shutil.copytree(archived / "seed0", stage.dir(Path(cfg.out)) / "seed0")
    capsys.readouterr()
    report = run_study(cfg.model_copy(update={"only": StudyPart(folds=[1])}))
    err = capsys.readouterr().err
    assert "partly done" not in err
    out = stage.outputs(Path(cfg.out))  # finished: fold 0 from its record, fold 1 trained now
    assert [r["fold"] for r in out["runs"]] == [0, 1] and not out.get("partial")
    assert not (stage.dir(Path(cfg.out)) / "seed0" / "fold0" / "last.pth").exists()
    with open(stage.dir(Path(cfg.out)) / "per_image.csv", newline="") as fh:
        assert [r for r in csv.DictReader(fh) if r["fold"] == "0"] == fold0
    assert "overlays of scratch skipped" not in err
    assert (report.parent / "figures" / "case_scratch_best.png").is_file()


def test_archiving_a_new_study_folder_keeps_the_runs_archived_from_a_lost_one(data, tmp_path, caplog):
    """Fold 0 finished and archived on one machine; its study folder lost; fold 1 run in a new folder
    that never held fold 0, then archived into the same archive. The archive's stage reports are
    those of both runs (the study folder's hold fold 1 only), and the stage is finished there."""
    import shutil

    from vasomim.engines.study import StudyPart, archive_study

    cfg = tiny_study(data, arms={"scratch": {"init": "scratch"}})
    cfg = cfg.model_copy(update={"out": str(tmp_path / "s"), "sweeps": {}, "analyses": False, "frangi": False,
                                 "pretrain_arms": {}})
    stage = build_stages(cfg)["finetune"][("scratch", 1.0)]
    archived, here = stage.dir(tmp_path / "archive"), stage.dir(Path(cfg.out))
    run_study(cfg.model_copy(update={"only": StudyPart(folds=[0])}))
    archive_study(cfg, tmp_path / "archive")
    assert (archived / "partial.json").is_file() and not (archived / "stage.json").exists()
    fold0 = [r for r in csv.DictReader(open(archived / "per_image.csv", newline=""))]
    first_report = (tmp_path / "archive" / "report" / "report.md").read_text()

    shutil.rmtree(tmp_path / "s")  # a new machine: fold 0 is not copied back
    run_study(cfg.model_copy(update={"only": StudyPart(folds=[1])}))
    assert json.loads((here / "partial.json").read_text())["outputs"]["n_runs_planned"] == 2
    fold1 = [r for r in csv.DictReader(open(here / "per_image.csv", newline=""))]
    assert {r["fold"] for r in fold1} == {"1"}
    kept = archive_study(cfg, tmp_path / "archive")

    rows = [r for r in csv.DictReader(open(archived / "per_image.csv", newline=""))]
    assert rows == fold0 + fold1  # fold 0 from the archive, fold 1 from the study folder
    summary = json.loads((archived / "summary.json").read_text())
    assert [(r["seed"], r["fold"]) for r in summary["runs"]] == [(0, 0), (0, 1)]
    means = [sum(float(r["dice"]) for r in rs) / len(rs) for rs in (fold0, fold1)]
    assert summary["metrics"]["dice"]["mean"] == pytest.approx(sum(means) / 2)
    record = json.loads((archived / "stage.json").read_text())  # both planned runs: finished
    assert not (archived / "partial.json").exists() and not record["outputs"].get("partial")
    assert record["outputs"]["metrics"] == summary["metrics"] and record["key"] == stage.key
    assert archived / "stage.json" in kept
    # the new folder's report knows fold 1 alone: the archive keeps the one it has, and says so
    assert (tmp_path / "archive" / "report" / "report.md").read_text() == first_report
    assert "its report kept" in caplog.text and "finetune/scratch@1" in caplog.text
    # the study folder itself is left as it was; archiving again changes nothing
    assert [r for r in csv.DictReader(open(here / "per_image.csv", newline=""))] == fold1
    before = {p: p.read_bytes() for p in archived.rglob("*") if p.is_file()}
    archive_study(cfg, tmp_path / "archive")
    assert {p: p.read_bytes() for p in archived.rglob("*") if p.is_file()} == before

    # both study folders gone: the report comes back from the archive alone, with both folds
    shutil.rmtree(tmp_path / "s")
    assert main(["study", str(_yaml(cfg, tmp_path)), "--report-from", str(tmp_path / "archive")]) == 0
    md = (tmp_path / "archive" / "report-records" / "report.md").read_text()
    m = summary["metrics"]["dice"]
    assert f"| scratch (ViT-tiny U-Net, init scratch) | {100 * m['mean']:.2f} ± {100 * m['std']:.2f} |" in md
    assert "2 runs (folds x seeds)" in md and "records alone" in md and "hardware.CPU" not in md
    curves = json.loads((tmp_path / "archive" / "report-records" / "figures" / "curves_1.json").read_text())["table"]
    assert {e["x"] for e in curves} == {0, 1} and {e["n"] for e in curves} == {2}  # both folds, epochs 0-1
    assert main(["study", str(_yaml(cfg, tmp_path)), "--report-from", str(tmp_path / "nothing")]) == 2


def _yaml(cfg: StudyConfig, folder: Path) -> Path:
    """``cfg`` as a study file (for the CLI)."""
    import yaml

    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json())))
    return path
