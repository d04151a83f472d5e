"""`vasomim anatomy` on a messy tree: good files, bad files, resume, shards."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from vasomim.cli import main
from vasomim.data.io import read_mask
from vasomim.data.synthetic import synthesize
from vasomim.engines.anatomy import AnatomyConfig, in_shard, list_images, read_manifest, run_anatomy


def make_tree(root: Path) -> dict[str, np.ndarray]:
    imgs = {}
    (root / "sub").mkdir(parents=True)
    for i in range(3):
        img, _ = synthesize(seed=i, size=96)
        Image.fromarray(img).save(root / f"good{i}.png")
        imgs[f"good{i}.png"] = img
    img, _ = synthesize(seed=10, size=96)
    Image.fromarray(img).convert("RGBA").save(root / "sub" / "rgba.png")
    imgs["sub/rgba.png"] = img
    Image.fromarray(img.astype(np.uint16) * 257).save(root / "sub" / "deep16.png")
    imgs["sub/deep16.png"] = img
    Image.fromarray(img).save(root / "sub" / "frame.jpg", quality=95)
    data = (root / "good0.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    return imgs


def test_cli_mixed_tree_resume(tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    imgs = make_tree(src)
    rc = main(["anatomy", str(src), str(out), "--border", "6", "--workers", "2", "--quiet"])
    assert rc == 1  # two files failed
    err = capsys.readouterr().err
    assert "truncated.png" in err and "empty.png" in err and "0 bytes" in err
    recs = read_manifest(out)
    assert set(recs) == set(imgs) | {"truncated.png", "empty.png", "sub/frame.jpg"}
    assert {k for k, r in recs.items() if r["status"] == "failed"} == {"truncated.png", "empty.png"}
    for rel in imgs:
        r = recs[rel]
        mask = read_mask(out / r["mask"])
        assert mask.shape == (96, 96) and mask.any()
        assert abs(mask.mean() - r["vessel_fraction"]) < 1e-6
        raw = np.asarray(Image.open(out / r["mask"]))
        assert set(np.unique(raw)) <= {0, 255}
    # 8-bit, RGBA and 16-bit versions of one image give the same mask
    m = [read_mask(out / recs[k]["mask"]) for k in ("sub/rgba.png", "sub/deep16.png")]
    assert np.array_equal(m[0], m[1])
    assert not list(out.rglob("*.tmp"))

    before = (out / "manifest.jsonl").read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    rc = main(["anatomy", str(src), str(out), "--border", "6", "--quiet"])
    assert rc == 1  # the corpus still holds two bad files
    assert "0 written" in capsys.readouterr().out
    assert (out / "manifest.jsonl").read_text() == before  # nothing redone
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == mtimes

    # fixing a bad file gets it processed on the next run
    Image.fromarray(imgs["good1.png"]).save(src / "truncated.png")
    rc = main(["anatomy", str(src), str(out), "--border", "6", "--quiet"])
    assert read_manifest(out)["truncated.png"]["status"] == "ok"
    assert rc == 1  # empty.png is still bad


def test_interrupted_run_resumes(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_tree(src)
    cfg = AnatomyConfig(border=6, workers=1)
    run_anatomy(src, out, cfg, progress=False)
    # simulate a crash: one mask lost, a torn manifest line
    recs = read_manifest(out)
    (out / recs["good2.png"]["mask"]).unlink()
    with open(out / "manifest.jsonl", "a") as fh:
        fh.write('{"file": "good1.pn')
    s = run_anatomy(src, out, cfg, progress=False)
    assert s.processed == 1 and s.skipped == s.total - 1
    assert (out / recs["good2.png"]["mask"]).is_file()


def test_shards_partition_the_corpus(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(40):
        (src / f"f{i:03d}.png").write_bytes(b"x")
    files = list_images(src)
    parts = [[f for f in files if in_shard(f, (i, 3))] for i in range(3)]
    assert sorted(sum(parts, [])) == files
    assert all(parts) and len(set(map(tuple, parts))) == 3


def test_sharded_runs_write_separate_manifests(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for i in range(6):
        Image.fromarray(synthesize(seed=i, size=64)[0]).save(src / f"a{i}.png")
    for k in range(2):
        assert main(["anatomy", str(src), str(out), "--border", "4", "--shard", f"{k}/2", "--quiet", "--workers", "1"]) == 0
    assert sorted(p.name for p in out.glob("manifest*.jsonl")) == ["manifest-0of2.jsonl", "manifest-1of2.jsonl"]
    assert len(read_manifest(out)) == 6
    lines = [json.loads(x) for p in out.glob("manifest*.jsonl") for x in p.read_text().splitlines()]
    assert len(lines) == 6


def test_bad_arguments(tmp_path, capsys):
    assert main(["anatomy", str(tmp_path / "missing"), str(tmp_path / "o")]) == 2
    assert "input folder not found" in capsys.readouterr().err
    (tmp_path / "in").mkdir()
    assert main(["anatomy", str(tmp_path / "in"), str(tmp_path / "o"), "--shard", "3/2"]) == 2


def test_batched_device_path_equals_worker_path(tmp_path):
    """The GPU code path (batches of equal-sized images through torch), run on the CPU here."""
    from vasomim.engines import anatomy as eng

    src = tmp_path / "in"
    make_tree(src)
    run_anatomy(src, tmp_path / "ref", AnatomyConfig(border=6, workers=1), progress=False)
    ref = read_manifest(tmp_path / "ref")
    todo = [(rel, rel) for rel in ("good0.png", "good1.png", "sub/rgba.png", "empty.png")]
    cfg = AnatomyConfig(border=6, device="cpu", batch_size=2)
    out = tmp_path / "batched"
    records = {r["file"]: r for r in eng._process_batched(src, out, todo, cfg)}
    assert records["empty.png"]["status"] == "failed" and "0 bytes" in records["empty.png"]["error"]
    for rel in ("good0.png", "good1.png", "sub/rgba.png"):
        assert records[rel]["status"] == "ok"
        np.testing.assert_array_equal(read_mask(out / rel), read_mask(tmp_path / "ref" / ref[rel]["mask"]))
        assert abs(records[rel]["threshold"] - ref[rel]["threshold"]) <= 1e-3 * ref[rel]["threshold"]
