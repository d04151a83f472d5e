"""The synthetic data source: generated per (seed, index), exact masks, mixing at shares, workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from vasomim.data.datasets import PretrainDataset
from vasomim.data.sources import FolderSource, load_source
from vasomim.data.synthetic import SynthConfig, synthesize, write_dataset
from vasomim.data.sources.synthetic import MixSource, SyntheticSource, mix_counts


def test_items_are_deterministic_per_seed_and_index_and_match_vasomim_synth(tmp_path):
    source = load_source({"type": "synthetic", "count": 4, "size": 64, "seed": 10, "preset": "classic"})
    again = SyntheticSource(4, size=64, seed=10, preset="classic")
    assert [it.id for it in source.items] == ["synth_000000", "synth_000001", "synth_000002", "synth_000003"]
    for a, b in zip(source.items, again.items):
        assert np.array_equal(a.load_image(), b.load_image()) and np.array_equal(a.load_mask(), b.load_mask())
    assert not np.array_equal(source.items[0].load_image(), source.items[1].load_image())
    # item i is the file i that `vasomim synth --seed 10` writes (same seeds, same pixels)
    paths = write_dataset(tmp_path, count=4, size=64, seed=10, progress=False)
    files = FolderSource(tmp_path / "images", tmp_path / "masks").items
    for item, disk, path in zip(source.items, files, paths):
        assert disk.image_path == str(path)
        assert np.array_equal(item.load_image(), disk.load_image())
        assert np.array_equal(item.load_mask(), disk.load_mask())


def test_mask_is_the_generators_exact_mask_and_the_default_preset_is_realistic():
    source = SyntheticSource(3, size=96, seed=5)
    for k, item in enumerate(source.items):
        image, mask = synthesize(5 + k, 96, SynthConfig.realistic())
        got_image, got_mask = item.load_pair()
        assert np.array_equal(got_mask, mask) and got_mask.dtype == bool
        assert np.array_equal(np.rint(got_image * 255).astype(np.uint8), image)
        assert np.array_equal(item.load_mask(), mask)
    # config overrides replace the preset's fields
    plain = SyntheticSource(1, size=96, seed=5, config={"anatomy": False, "gamma": [1.0, 1.0]})
    assert plain.config.anatomy is False and plain.config.gamma == (1.0, 1.0) and plain.config.overlap is True


@pytest.mark.parametrize("entry, message", [
    ({"type": "synthetic"}, "needs key(s) count"),
    ({"type": "synthetic", "count": 0}, "count must be >= 1"),
    ({"type": "synthetic", "count": 2, "size": 8}, "size must be at least"),
    ({"type": "synthetic", "count": 2, "preset": "wild"}, "unknown preset"),
    ({"type": "synthetic", "count": 2, "config": {"nosie": 0.1}}, "unknown config key"),
    ({"type": "synthetic", "count": 2, "colour": 1}, "unknown key(s) colour"),
])
def test_bad_specs_are_one_line_errors(entry, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_source(entry).items


def test_mix_counts_by_hand():
    # 55 real at share 0.5 with 3000 synthetic: the epoch is 6000, the real frames fill 3000 slots
    assert mix_counts([55, 3000], [0.5, None]) == [3000, 3000]
    # shares given for all are weights: 1:3 -> synthetic sets the epoch (4000), real gets 1000
    assert mix_counts([55, 3000], [1, 3]) == [1000, 3000]
    # the real set is the larger: it sets the epoch, 2368 / 0.8 = 2960, synthetic 592
    assert mix_counts([2368, 100], [None, 0.2]) == [2368, 592]
    # two sources without a share split the rest in proportion to their sizes
    assert mix_counts([10, 30, 60], [0.5, None, None]) == [90, 30, 60]
    with pytest.raises(ValueError, match="leaving nothing"):
        mix_counts([10, 10], [1.0, None])
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        mix_counts([10, 10], [0.0, None])
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        mix_counts([10, 10], [1.5, None])


def _spec(tmp_path, real_share):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"sources": [
        {"type": "synthetic", "count": 7, "size": 48, "seed": 1000, "preset": "classic", "name": "real", "share": real_share},
        {"type": "synthetic", "count": 200, "size": 48, "seed": 0, "name": "synth"},
    ]}))
    return spec


def test_mixed_epoch_holds_each_source_at_its_share(tmp_path):
    source = load_source(_spec(tmp_path, 0.3))
    assert isinstance(source, MixSource)
    items = source.items
    real = [it for it in items if it.id.startswith("real/")]
    assert len(items) == round(200 / 0.7) and len(real) == len(items) - 200
    counts = np.bincount([int(it.id[-6:]) for it in real])
    assert counts.size == 7 and counts.max() - counts.min() <= 1  # oversampled evenly
    assert {it.id for it in items if it.id.startswith("synth/")} == {f"synth/synth_{i:06d}" for i in range(200)}


def test_shuffled_batches_draw_real_frames_at_the_share_within_binomial_tolerance(tmp_path):
    """Through a DataLoader with 2 workers: batches of a shuffled epoch hold ~share real frames."""
    items = load_source(_spec(tmp_path, 0.4)).items
    dataset = PretrainDataset(items)  # identity transform: 48x48 tensors
    gen = torch.Generator().manual_seed(0)
    loader = DataLoader(dataset, batch_size=40, shuffle=True, num_workers=2, generator=gen)
    n = k = 0
    for batch in loader:
        assert batch["image"].shape[1:] == (1, 48, 48) and batch["anatomy"].shape[1:] == (1, 48, 48)
        k += sum(i.startswith("real/") for i in batch["id"])
        n += len(batch["id"])
    assert n == len(items)
    assert k / n == pytest.approx(0.4, abs=1 / n + 1e-9)  # the epoch's share is exact
    # a random 120-sample subset: the share lies within 3 binomial standard deviations
    first = next(iter(DataLoader(dataset, batch_size=120, shuffle=True, generator=torch.Generator().manual_seed(1))))
    share = sum(i.startswith("real/") for i in first["id"]) / 120
    assert abs(share - 0.4) <= 3 * np.sqrt(0.4 * 0.6 / 120)


def test_workers_give_the_same_pixels_as_the_main_process():
    source = SyntheticSource(6, size=48, seed=3)
    dataset = PretrainDataset(source.items)
    main = [dataset[i] for i in range(6)]
    loader = DataLoader(dataset, batch_size=3, num_workers=2)
    batches = list(loader)
    images = torch.cat([b["image"] for b in batches])
    anatomy = torch.cat([b["anatomy"] for b in batches])
    for i, sample in enumerate(main):
        assert torch.equal(images[i], sample["image"]) and torch.equal(anatomy[i], sample["anatomy"])
        expected = torch.from_numpy(synthesize(3 + i, 48, SynthConfig.realistic())[1].astype(np.float32))
        assert torch.equal(anatomy[i, 0], expected)


def test_study_corpus_spec_and_cache_key(tmp_path):
    from vasomim.engines.study import StudyConfig, _synthetic_spec, build_stages

    anatomy = {"images": str(tmp_path / "corpus"), "anatomy": str(tmp_path / "masks")}
    assert _synthetic_spec(tmp_path / "a", anatomy, None) is None
    assert _synthetic_spec(tmp_path / "a", anatomy, {"count": 0}) is None
    spec = _synthetic_spec(tmp_path / "b", anatomy, {"count": 30, "size": 64, "share": 0.5})
    doc = yaml.safe_load(spec.read_text())
    assert doc["sources"][0] == {"type": "anatomy", "images": str((tmp_path / "corpus").resolve()),
                                 "anatomy": str((tmp_path / "masks").resolve()), "name": "real"}
    assert doc["sources"][1] == {"type": "synthetic", "name": "synthetic", "count": 30, "size": 64, "share": 0.5}
    with pytest.raises(ValueError, match="unknown key"):
        _synthetic_spec(tmp_path / "c", anatomy, {"count": 3, "ratio": 0.5})

    labelled = tmp_path / "lab"
    write_dataset(labelled, count=2, size=32, progress=False)
    arms = {"vasomim": {}, "real_only": {"synthetic": {"count": 0}}}

    def keys(synthetic):
        cfg = StudyConfig(labelled=str(labelled), out=str(tmp_path / "s"), synthetic=synthetic, pretrain_arms=arms,
                          finetune_arms={"vasomim": {"init": "pretrain:vasomim"}}, frangi=False)
        graph = build_stages(cfg)
        return {arm: stage.key for arm, stage in graph["pretrain"].items()}, graph

    none, _ = keys(None)
    half, graph = keys({"count": 300, "share": 0.5})
    third, _ = keys({"count": 300, "share": 0.3})
    assert graph["pretrain"]["vasomim"].config["synthetic"] == {"count": 300, "share": 0.5}
    assert none["vasomim"] != half["vasomim"] != third["vasomim"] != none["vasomim"]
    # the arm that turns them off runs (and caches) the same stage as a study without them
    assert half["real_only"] == third["real_only"] == none["real_only"]
