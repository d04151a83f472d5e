"""The demo: a small but complete study on the embedded synthetic angiograms (or on your folder).

``vasomim demo`` synthesizes a labelled set and an unlabelled corpus, then runs the study of
:mod:`vasomim.engines.study` with laptop budgets: anatomy, the consistency segmentor, a tiny
VasoMIM and a tiny MAE, fine-tuning from scratch, from MAE and from VasoMIM (plus the CNN U-Net
arm), the Frangi baseline, and the report.  About 7.5 minutes on 2 CPU cores; re-running takes seconds
(every stage is cached).  ``--data DIR`` runs the same study on a folder with ``images/`` and
``masks/`` (any layout ``vasomim data check`` accepts).
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import Field

from vasomim.config import StrictModel
from vasomim.data.synthetic import write_dataset
from vasomim.engines.study import StudyConfig, run_study

logger = logging.getLogger(__name__)


class DemoConfig(StrictModel):
    """Parameters of ``vasomim demo``."""

    out: str = Field("vasomim-demo", description="output folder")
    data: str | None = Field(None, description="labelled folder to use instead of synthetic images")
    count: int = Field(24, ge=4, description="synthetic labelled images")
    unlabelled: int = Field(48, ge=0, description="synthetic unlabelled images for pre-training")
    size: int = Field(128, ge=64, description="synthetic image size and network input size (multiple of 32)")
    seed: int = 0
    pretrain_epochs: int = Field(60, ge=1)
    finetune_epochs: int = Field(30, ge=1)
    folds: int = Field(3, ge=2)


def demo_study(cfg: DemoConfig):
    """The :class:`~vasomim.engines.study.StudyConfig` of the demo (writes the synthetic data)."""

    out = Path(cfg.out)
    if cfg.size % 32:
        raise ValueError(f"--size must be a multiple of 32 (the segmentor's stride), got {cfg.size}")
    unlabelled = []
    if cfg.data is None:
        logger.info(f"[demo] synthesizing {cfg.count} labelled + {cfg.unlabelled} unlabelled angiograms "
                    f"({cfg.size}x{cfg.size}) in {out / 'data'}")
        write_dataset(out / "data" / "labelled", count=cfg.count, size=cfg.size, seed=cfg.seed, progress=False)
        labelled: str = str(out / "data" / "labelled")
        if cfg.unlabelled:
            # other seeds: the corpus never contains the labelled images' exact twins
            write_dataset(out / "data" / "unlabelled", count=cfg.unlabelled, size=cfg.size,
                          seed=cfg.seed + 100_000, progress=False)
            unlabelled = [str(out / "data" / "unlabelled" / "images")]
    else:
        labelled = cfg.data
    size = cfg.size
    # one optimizer step per epoch at least, even for a toy corpus
    corpus = cfg.count + cfg.unlabelled if cfg.data is None else 16
    pre_batch = min(16, max(2, corpus // 2))
    border = max(2, round(20 * size / 512))
    return StudyConfig(
        name="vasomim demo" + (" (synthetic angiograms)" if cfg.data is None else f" ({cfg.data})"),
        out=str(out / "study"),
        labelled=labelled,
        unlabelled=unlabelled,
        anatomy={"border": border, "workers": 2},
        segmentor={"img_size": size, "epochs": 30, "batch_size": 8, "val_fraction": 0.1, "workers": 0},
        pretrain={
            "data": {"img_size": size},
            "model": {"size": "tiny", "decoder_embed_dim": 128, "decoder_depth": 2, "decoder_num_heads": 4},
            "optim": {"lr": 1.0e-3, "warmup_epochs": 2},
            "epochs": cfg.pretrain_epochs, "batch_size": pre_batch, "workers": 0, "device": "cpu",
            "save_every": 5, "seed": cfg.seed,
        },
        finetune={
            "size": "tiny", "img_size": size, "epochs": cfg.finetune_epochs, "batch_size": 8, "lr": 5.0e-4,
            "warmup_epochs": 2, "val_every": 5, "folds": cfg.folds, "seeds": [cfg.seed], "workers": 0,
            "device": "cpu",
        },
        finetune_arms={
            "scratch": {"init": "scratch"},
            "mae": {"init": "pretrain:mae"},
            "vasomim": {"init": "pretrain:vasomim"},
            "unet": {"arch": "unet", "lr": 1.0e-3},
        },
        analysis_images=4,
    )


def run_demo(cfg: DemoConfig) -> Path:
    """Run the demo study and return the path of its ``report.md``."""
    study = demo_study(cfg)
    command = "vasomim demo" + (f" --data {cfg.data}" if cfg.data else "") + (f" --out {cfg.out}" if cfg.out != "vasomim-demo" else "")
    return run_study(study, command=command)
