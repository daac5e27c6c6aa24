"""Levers of the quality study side by side: cells of different study runs, paired on the same evaluation prompts.

    python benchmarks/quality_levers.py --output_dir benchmarks/results/ml100k-cpu-levers \\
        --baselines benchmarks/results/ml100k-cpu-curve/rows-4096/results.json \\
        --run "2 layers, 1 epoch=outputs/quality/ml100k-cpu-curve/rows-4096:dynamicpo@15" \\
        --run "4 layers=outputs/quality/ml100k-cpu-capacity/layers-4/rows-4096:dynamicpo@15"

Each `--run LABEL=DIR:CELL` names a cell of a `quality.py` run: DIR is either the run's `work_dir` (the cell's
per-prompt ranking scores, `scores.npy`, and `eval.json` are in `DIR/cells/CELL`) or its `output_dir`, whose
`ranks.json` keeps every cell's per-prompt target ranks (committed with `results.json`, so that a run can be paired
with one whose work folder is gone). The first run is the reference. Every run must have been scored on the same
prompts (same split, prompt sample and seed, the same target indices and, when both runs record it, the same
fingerprint of the prompts: checked), so that each lever's difference to the reference is a *paired* bootstrap
interval, far tighter than comparing two independent intervals. Writes `levers.json` and `table.md`.
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
    """`LABEL=DIR:CELL` -> the cell's label, settings, target indices and per-prompt ranks."""
    label, equals, where = spec.rpartition("=")  # a label may hold "=" (score=mean), a path rarely
    where_dir, colon, cell = where.rpartition(":")
    if not (equals and colon and label and cell):
        raise SystemExit(f"error: --run {spec!r}: expected LABEL=DIR:CELL, e.g. '4 layers=outputs/run:dmpo@15'.")
    folder = Path(where_dir) / "cells" / cell
    run = {"label": label, "cell": cell, "work_dir": where_dir, "prompts_sha256": None}
    if (folder / "eval.json").is_file() and (folder / "scores.npy").is_file():
        record = read_json(folder / "eval.json")
        train = read_json(folder / "train.json") or {}
        sft = read_json(folder.parent / "sft" / "train.json") or {}
        target = np.asarray(record["target_index"], dtype=np.int64)
        # sft_settings: rows, layers, LoRA, SFT schedule, what the cell's fingerprint hashes.
        return {
            **run,
            "settings": record["settings"],
            "train_settings": train.get("settings"),
            "sft_settings": sft.get("settings"),
            "target": target,
            "ranks": target_ranks(np.load(folder / "scores.npy"), target),
        }
    report = read_json(Path(where_dir) / "ranks.json")
    if report is None or "settings" not in report["cells"].get(cell, {}):
        raise SystemExit(
            f"error: --run {label!r}: neither {folder} (eval.json and scores.npy) nor {where_dir}/ranks.json has an "
            f"evaluated cell {cell!r} (cell not evaluated)."
        )
    return {
        **run,
        "settings": report["cells"][cell]["settings"],
        "train_settings": None,  # a report keeps the study's settings in its results.json, not the cell's fingerprint
        "sft_settings": None,
        "target": np.asarray(report["target_index"], dtype=np.int64),
        "ranks": np.asarray(report["cells"][cell]["ranks"], dtype=np.int64),
        "prompts_sha256": report["prompts_sha256"],
    }


def compare(runs: list[dict], resamples: int, seed: int) -> list[dict]:
    """Every run's metrics with intervals and, after the first, its paired difference to the first."""
    reference = runs[0]
    for run in runs[1:]:
        same = {k: run["settings"][k] == reference["settings"][k] for k in ("split", "num_eval_prompts", "seed")}
        same["target_index"] = np.array_equal(run["target"], reference["target"])
        if run["prompts_sha256"] and reference["prompts_sha256"]:  # runs read from a report's ranks.json
            same["prompts"] = run["prompts_sha256"] == reference["prompts_sha256"]
        if not all(same.values()):
            differs = [k for k, ok in same.items() if not ok]
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
        "--run",
        action="append",
        required=True,
        help="LABEL=DIR:CELL (DIR: a work_dir or an output_dir with ranks.json); the first is the reference.",
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
