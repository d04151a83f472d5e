"""Give archived fine-tuning stages made before run records existed their ``result.json`` files.

Fine-tuning runs now leave ``seed<S>/fold<F>/result.json`` (see docs/study.md, "A lost study
folder"); archives made earlier hold the same facts spread over the stage's ``summary.json``
(each run's summary line), ``per_image.csv`` (its per-image scores) and ``config.json``. This
script writes each run's record from those three files, for every fine-tuning stage under an
archive that lacks them, so the archive can refill a lost study folder. It changes no figure:
the records it writes hold the archived numbers as they are.

    python benchmarks/records_from_tables.py benchmarks/results/study_arcade
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import fields
from pathlib import Path

from vasomim.data.io import write_text_atomic
from vasomim.engines.finetune_run import RunResult

# what save_result keeps of a RunResult besides its rows
RUN_FIELDS = tuple(f.name for f in fields(RunResult) if f.name not in ("rows", "trained_epochs"))


def stage_records(stage: Path) -> dict[Path, dict]:
    """The run records of one archived fine-tuning stage, by the path each belongs at."""
    summary = json.loads((stage / "summary.json").read_text())
    config = json.loads((stage / "config.json").read_text())
    with open(stage / "per_image.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    records = {}
    for run in summary["runs"]:
        rows = [{k: (v if k == "image" else float(v)) for k, v in r.items() if k not in ("seed", "fold")}
                for r in table if int(r["seed"]) == run["seed"] and int(r["fold"]) == run["fold"]]
        if not rows:
            raise ValueError(f"{stage}: seed {run['seed']} fold {run['fold']} has no rows in per_image.csv")
        record = {k: run[k] for k in RUN_FIELDS}
        record.update(rows=rows, config=config)
        records[stage / f"seed{run['seed']}" / f"fold{run['fold']}" / "result.json"] = record
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", type=Path, help="an archive written by `vasomim study --archive`")
    args = parser.parse_args(argv)
    for stage in sorted((args.archive / "finetune").glob("*")):
        if not (stage / "summary.json").is_file():
            continue
        for path, record in stage_records(stage).items():
            if path.exists():
                continue
            write_text_atomic(path, json.dumps(record, indent=1) + "\n")
            print(f"{path}: {len(record['rows'])} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
