"""Learning curve of the quality study: HR@1 against training rows, next to what the same rows allow by counting.

    python benchmarks/quality_curve.py --config benchmarks/quality_ml100k_cpu_curve.yaml --rows 256 768 2048 4096 8192

Runs `quality.py` once per row count (each in `work_dir/rows-N`, resumable per cell, sharing `cache_dir`), then
writes `learning_curve.json` and `learning_curve.png` to `output_dir`: ranking HR@1 of every cell against N, with
the popularity baseline of the full train split, the random baseline, and the *frequency oracle* of the same N rows
(each candidate scored by how often it is the target among the N most recent training rows — what a perfect learner
of item popularity could reach from the rows the models see). `--rows` may list counts that are only plotted for the
oracle with `--oracle_only`.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np


sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    import argparse

    import quality

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--rows", type=int, nargs="+", required=True)
    parser.add_argument("--oracle_rows", type=int, nargs="*", default=[256, 512, 1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--oracle_only", action="store_true", help="Skip the model runs (plot what exists).")
    args, extra = parser.parse_known_args(argv)

    from trl import TrlParser

    (base,) = TrlParser((quality.QualityArguments,)).parse_args_and_config(["--config", args.config, *extra])
    out = Path(base.output_dir)
    for n in args.rows:
        study_args = [
            "--config", args.config, *extra, "--train_rows", str(n),
            "--work_dir", str(Path(base.work_dir) / f"rows-{n}"), "--output_dir", str(out / f"rows-{n}"),
        ]  # fmt: skip
        if args.oracle_only:
            if (out / f"rows-{n}" / "results.json").exists():
                continue  # the committed report of that row count is all the curve needs
            study_args.append("--report_only")
        quality.main(study_args)
    # Every row count that has a report joins the curve, also those run in an earlier session (their work_dir may be
    # gone: only the committed results.json is read).
    points = []
    reports = {int(path.parent.name.split("-")[1]): path for path in out.glob("rows-*/results.json")}
    for n, path in sorted(reports.items()):
        for cell in json.loads(path.read_text())["cells"]:
            points.append({"train_rows": n, **{k: cell[k] for k in ("name", "hr@1", "hr@1_ci", "ndcg@10")}})
    previous = quality.read_json(out / "learning_curve.json") or {}

    # The frequency oracle on the same evaluation prompts, for many N (no model involved).
    from trl_dynamicpo.evaluation import baseline_scores, target_indices, target_ranks
    from trl_dynamicpo.statistics import bootstrap_ci, hits_at

    study = quality.Study(base)
    study.load_data()
    train = study.dataset["train"]
    target_index = target_indices(study.eval["candidates"], study.eval["target"])
    oracle = []
    chosen = train["chosen"]
    for n in sorted(set(args.oracle_rows) | set(args.rows)):
        counts = Counter(chosen[max(0, len(chosen) - n) :])
        table = {
            "title": study.items["title"],
            "train_count": [counts.get(t, 0) for t in study.items["title"]],
            "popularity_group": study.items["popularity_group"],
        }
        scores = baseline_scores(study.eval["candidates"], table, seed=base.seed)["popularity"]
        hr, ci = bootstrap_ci(hits_at(target_ranks(scores, target_index), 1), base.bootstrap_resamples, seed=base.seed)
        oracle.append({"train_rows": n, "hr@1": hr, "hr@1_ci": list(ci)})
    floors = {}
    baselines = baseline_scores(study.eval["candidates"], study.items, seed=base.seed)
    for name, scores in baselines.items():
        floors[name] = float(hits_at(target_ranks(scores, target_index), 1).mean())

    # Does a model know anything popularity does not? Add its scores to λ·log(1 + train count) and compare with
    # popularity alone on the same prompts, λ cross-fitted (chosen on the even prompts for the odd ones and back).
    fusion = []
    earlier = {(f["train_rows"], f["name"]): f for f in previous.get("popularity_fusion", [])}
    for point in points:
        path = Path(base.work_dir) / f"rows-{point['train_rows']}" / "cells" / point["name"] / "scores.npy"
        if not path.exists():  # scored in an earlier session: keep what it measured, if anything
            if (point["train_rows"], point["name"]) in earlier:
                fusion.append(earlier[point["train_rows"], point["name"]])
            continue
        scores = np.load(path)
        fusion.append(
            {"train_rows": point["train_rows"], "name": point["name"],
             **popularity_fusion(scores, baselines["popularity"], target_index, base.bootstrap_resamples, base.seed)}
        )  # fmt: skip

    result = {"split": base.eval_split, "num_prompts": len(target_index), "cells": points, "oracle": oracle,
              "baselines": floors, "popularity_fusion": fusion}  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    quality.write_json(out / "learning_curve.json", result)
    _plot(result, out / "learning_curve.png")
    print(json.dumps({"oracle": oracle, "baselines": floors, "cells": points, "popularity_fusion": fusion}, indent=1))
    return 0


FUSION_WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0, 13.0, 21.0, 1e6)


def popularity_fusion(scores, popularity, target_index, num_resamples: int, seed: int) -> dict:
    """HR@1 of `scores + λ·log(1 + popularity)` with λ cross-fitted over two halves of the prompts, and its paired
    difference to popularity alone (λ = 1e6 is popularity with the model only breaking ties).

    Args:
        scores (`np.ndarray` `[N, A]`): the model's candidate scores (summed log-probs).
        popularity (`np.ndarray` `[N, A]`): the candidates' train counts.
        target_index (`Sequence[int]`): the target's position among each prompt's candidates.
        num_resamples (`int`), seed (`int`): of the paired bootstrap.
    """
    from trl_dynamicpo.evaluation import target_ranks
    from trl_dynamicpo.statistics import hits_at, paired_bootstrap_ci

    target_index = np.asarray(target_index)
    prior = np.log1p(np.nan_to_num(np.asarray(popularity, dtype=float), nan=0.0))
    hits = {lam: hits_at(target_ranks(scores + lam * prior, target_index), 1) for lam in FUSION_WEIGHTS}
    halves = [np.arange(len(target_index)) % 2 == parity for parity in (0, 1)]
    fused = np.zeros(len(target_index))
    chosen = []
    for fit, apply in ((halves[0], halves[1]), (halves[1], halves[0])):
        lam = max(FUSION_WEIGHTS, key=lambda w: (hits[w][fit].mean(), -w))  # ties: the smaller weight
        fused[apply] = hits[lam][apply]
        chosen.append(lam)
    popularity_hits = hits_at(target_ranks(popularity, target_index), 1)
    diff, ci = paired_bootstrap_ci(fused, popularity_hits, num_resamples, seed=seed)
    return {"hr@1": float(fused.mean()), "weights": chosen, "hr@1_minus_popularity": diff,
            "hr@1_minus_popularity_ci": list(ci)}  # fmt: skip


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    oracle = result["oracle"]
    xs = [p["train_rows"] for p in oracle]
    ax.plot(xs, [p["hr@1"] for p in oracle], "k.-", label="frequency oracle of the same rows")
    ax.fill_between(xs, [p["hr@1_ci"][0] for p in oracle], [p["hr@1_ci"][1] for p in oracle], color="k", alpha=0.08)
    styles = {"sft": "tab:red", "dmpo@15": "tab:orange", "dynamicpo@15": "tab:green"}
    for name in sorted({p["name"] for p in result["cells"]}):
        pts = sorted((p for p in result["cells"] if p["name"] == name), key=lambda p: p["train_rows"])
        x = [p["train_rows"] for p in pts]
        y = [p["hr@1"] for p in pts]
        err = [[p["hr@1"] - p["hr@1_ci"][0] for p in pts], [p["hr@1_ci"][1] - p["hr@1"] for p in pts]]
        ax.errorbar(x, y, yerr=err, fmt="o-", capsize=3, color=styles.get(name), label=name)
    ax.axhline(result["baselines"]["popularity"], color="k", linestyle="--", label="popularity (full train split)")
    ax.axhline(result["baselines"]["random"], color="grey", linestyle=":", label="random")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training rows (most recent)")
    ax.set_ylabel(f"ranking HR@1 ({result['num_prompts']} {result['split']} prompts)")
    ax.set_title("Learning curve (95% bootstrap CI)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
