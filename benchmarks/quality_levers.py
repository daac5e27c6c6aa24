"""Levers of the quality study side by side: cells of different study runs, paired on the same evaluation prompts.

    python benchmarks/quality_levers.py --output_dir benchmarks/results/ml100k-cpu-levers \\
        --baselines benchmarks/results/ml100k-cpu-curve/rows-4096/results.json \\
        --run "2 layers, 1 epoch=outputs/quality/ml100k-cpu-curve/rows-4096:dynamicpo@15" \\
        --run "4 layers=outputs/quality/ml100k-cpu-capacity/layers-4/rows-4096:dynamicpo@15"

Each `--run LABEL=WORK_DIR:CELL` names a cell of a `quality.py` run (its per-prompt ranking scores, `scores.npy`, and
`eval.json` are in `WORK_DIR/cells/CELL`); the first run is the reference. Every run must have been scored on the same
prompts (same split, prompt sample and seed: checked), so that each lever's difference to the reference is a *paired*
bootstrap interval, far tighter than comparing two independent intervals. Writes `levers.json` and `table.md`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_report import metric_block, paired_block  # noqa: E402

from trl_dynamicpo.evaluation import format_value, target_ranks  # noqa: E402
from trl_dynamicpo.io_utils import read_json, write_json  # noqa: E402


METRICS = ("hr@1", "ndcg@10")  # the paired differences to the reference


def load_run(spec: str) -> dict:
    """`LABEL=WORK_DIR:CELL` -> the cell's label, settings, target indices and per-prompt ranks."""
    label, equals, where = spec.rpartition("=")  # a label may hold "=" (score=mean), a path rarely
    work_dir, colon, cell = where.rpartition(":")
    if not (equals and colon and label and cell):
        raise SystemExit(f"error: --run {spec!r}: expected LABEL=WORK_DIR:CELL, e.g. '4 layers=outputs/run:dmpo@15'.")
    folder = Path(work_dir) / "cells" / cell
    if not (folder / "eval.json").is_file() or not (folder / "scores.npy").is_file():
        raise SystemExit(f"error: --run {label!r}: {folder} has no eval.json and scores.npy (cell not evaluated).")
    record = read_json(folder / "eval.json")
    train = read_json(folder / "train.json") or {}
    sft = read_json(folder.parent / "sft" / "train.json") or {}
    target = np.asarray(record["target_index"], dtype=np.int64)
    return {
        "label": label,
        "cell": cell,
        "work_dir": work_dir,
        "settings": record["settings"],
        "train_settings": train.get("settings"),
        "sft_settings": sft.get("settings"),  # rows, layers, LoRA, SFT schedule: what the cell's fingerprint hashes
        "target": target,
        "ranks": target_ranks(np.load(folder / "scores.npy"), target),
    }


def compare(runs: list[dict], resamples: int, seed: int) -> list[dict]:
    """Every run's metrics with intervals and, after the first, its paired difference to the first."""
    reference = runs[0]
    for run in runs[1:]:
        same = {k: run["settings"][k] == reference["settings"][k] for k in ("split", "num_eval_prompts", "seed")}
        if not all(same.values()) or not np.array_equal(run["target"], reference["target"]):
            differs = [k for k, ok in same.items() if not ok] or ["target_index"]
            raise SystemExit(
                f"error: run {run['label']!r} was scored on other prompts than {reference['label']!r} "
                f"({', '.join(differs)} differ): paired differences need the same prompts."
            )
    rows = []
    for run in runs:
        row = {"label": run["label"], "cell": run["cell"], "work_dir": run["work_dir"], "eval": run["settings"]}
        row["train"], row["sft"] = run["train_settings"], run["sft_settings"]
        row.update(metric_block(run["ranks"], resamples, seed))  # the study report's own statistics
        if run is not reference:
            paired = paired_block(run["ranks"], reference["ranks"], resamples, seed)
            for name in METRICS:
                row[f"{name}_minus_reference"], row[f"{name}_minus_reference_ci"] = paired[name], paired[f"{name}_ci"]
        rows.append(row)
    return rows


def table(rows: list[dict], baselines: dict) -> str:
    def interval(row, key):
        lo, hi = row[f"{key}_ci"]
        return f"{format_value(key, row[key])} [{format_value(key, lo)}, {format_value(key, hi)}]"

    def signed(row, key):
        if f"{key}_minus_reference" not in row:
            return "reference"
        lo, hi = row[f"{key}_minus_reference_ci"]
        return f"{row[f'{key}_minus_reference']:+.3f} [{lo:+.3f}, {hi:+.3f}]"

    lines = [
        "| run | cell | HR@1 [95% CI] | NDCG@10 [95% CI] | HR@1 − reference [paired 95% CI] | NDCG@10 − reference [paired] |",
        "|---|---|---|---|---|---|",
    ]
    for name, values in baselines.items():
        lines.append(f"| {name} | - | {interval(values, 'hr@1')} | {interval(values, 'ndcg@10')} | - | - |")
    for row in rows:
        lines.append(
            f"| {row['label']} | {row['cell']} | {interval(row, 'hr@1')} | {interval(row, 'ndcg@10')} | "
            f"{signed(row, 'hr@1')} | {signed(row, 'ndcg@10')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--run", action="append", required=True, help="LABEL=WORK_DIR:CELL; the first is the reference."
    )
    parser.add_argument("--output_dir", required=True, help="Where levers.json and table.md go.")
    parser.add_argument("--baselines", help="A results.json on the same prompts whose baselines join the table.")
    parser.add_argument("--bootstrap_resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    runs = [load_run(spec) for spec in args.run]
    rows = compare(runs, args.bootstrap_resamples, args.seed)
    baselines = {}
    if args.baselines:
        report = json.loads(Path(args.baselines).read_text())
        if report.get("num_test_prompts") != len(runs[0]["target"]):
            raise SystemExit(f"error: --baselines {args.baselines} has another number of prompts than the runs.")
        baselines = {
            name: report["baselines"][name] for name in ("popularity", "random") if name in report["baselines"]
        }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "levers.json", {"num_prompts": len(runs[0]["target"]), "baselines": baselines, "runs": rows})
    text = table(rows, baselines)
    (out / "table.md").write_text(text, encoding="utf-8")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
