"""Results of the quality study (`quality.py`): statistics, `results.json`, the collapse plot and training curves.

Everything here reads what the cells wrote under the study's `work_dir` (per-prompt candidate scores, training logs),
so `python benchmarks/quality.py --config ... --report_only` rebuilds the report without running a model.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np

from trl_dynamicpo.io_utils import read_json, write_json
from trl_dynamicpo.losses import LOSS_SPECS


# The preference losses a study cell can train (cells are "sft" and "<loss>@<K>").
POLICY_LOSSES = ("dpo", "sdpo", "dmpo", "dynamicpo")


def parse_cell(name: str) -> tuple[str, int]:
    """`"dmpo@15"` -> `("dmpo", 15)`; `"sft"` -> `("sft", 0)`."""
    if name == "sft":
        return "sft", 0
    loss, _, k = name.partition("@")
    if loss not in POLICY_LOSSES or not k.isdigit() or not 1 <= int(k) <= 19:
        raise ValueError(f"Bad cell {name!r}: expected loss@K with loss in {POLICY_LOSSES} and 1 <= K <= 19.")
    return loss, int(k)


DISPLAY = {name: spec.display_name for name, spec in LOSS_SPECS.items()}
CURVE_METRICS = ("loss", "rewards/accuracies", "dynamicpo/nonboundary_grad_share")
BASELINES = {
    "popularity": "popularity (full train split)",
    "popularity_train_rows": "popularity (the study's training rows)",
    "sasrec": "SASRec teacher (full train split)",
    "random": "random",
}


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def prompts_fingerprint(prompts, candidates, targets) -> str:
    """SHA-256 of the evaluation rows (prompt, candidate list, target), so that two reports can be told apart or paired
    even when their split, sample size and seed agree but their data build does not."""
    text = json.dumps([list(prompts), [list(c) for c in candidates], list(targets)], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def metric_block(ranks: np.ndarray, resamples: int, seed: int) -> dict:
    """HR@1 and NDCG@10 with bootstrap intervals, HR@5 and MRR, from per-prompt target ranks."""
    from trl_dynamicpo.statistics import bootstrap_ci, hits_at, ndcg_at

    hr1, hr1_ci = bootstrap_ci(hits_at(ranks, 1), resamples, seed=seed)
    ndcg, ndcg_ci = bootstrap_ci(ndcg_at(ranks, 10), resamples, seed=seed)
    return {
        "hr@1": hr1,
        "hr@1_ci": list(hr1_ci),
        "hr@5": float(hits_at(ranks, 5).mean()),
        "ndcg@10": ndcg,
        "ndcg@10_ci": list(ndcg_ci),
        "mrr": float((1.0 / ranks).mean()),
    }


def paired_block(ranks_a: np.ndarray, ranks_b: np.ndarray, resamples: int, seed: int) -> dict:
    """HR@1 and NDCG@10 of `a - b` on the same prompts, with paired bootstrap intervals."""
    from trl_dynamicpo.statistics import hits_at, ndcg_at, paired_bootstrap_ci

    hr, hr_ci = paired_bootstrap_ci(hits_at(ranks_a, 1), hits_at(ranks_b, 1), resamples, seed=seed)
    nd, nd_ci = paired_bootstrap_ci(ndcg_at(ranks_a, 10), ndcg_at(ranks_b, 10), resamples, seed=seed)
    return {"hr@1": hr, "hr@1_ci": list(hr_ci), "ndcg@10": nd, "ndcg@10_ci": list(nd_ci)}


def baseline_ranks(study) -> dict:
    """Per-prompt target ranks of the baselines on the study's prompts: popularity (full train split), random, the
    teacher (when the study has one) and popularity of the study's own training rows."""
    from trl_dynamicpo.evaluation import baseline_scores, target_indices, target_ranks

    args = study.args
    target_index = target_indices(study.eval["candidates"], study.eval["target"])
    teacher = {"teacher_scores": study.teacher_scores, "teacher_name": args.teacher} if args.teacher else {}
    ranks = {}
    for name, scores in baseline_scores(study.eval["candidates"], study.items, seed=args.seed, **teacher).items():
        ranks[f"baseline:{name}"] = target_ranks(scores, target_index)
    # The same rule on the only rows the models learn from: how often each title is the target in the training rows.
    # It is what a perfect frequency learner could reach from those rows (the full-split popularity uses 77k rows).
    counts = Counter(study.train["chosen"])
    table = {
        "title": study.items["title"],
        "train_count": [counts.get(t, 0) for t in study.items["title"]],
        "popularity_group": study.items["popularity_group"],
    }
    scores = baseline_scores(study.eval["candidates"], table, seed=args.seed)["popularity"]
    ranks["baseline:popularity_train_rows"] = target_ranks(scores, target_index)
    return ranks


def _baseline_blocks(ranks: dict, args) -> dict:
    return {
        name: metric_block(ranks[f"baseline:{name}"], args.bootstrap_resamples, args.seed)
        for name in BASELINES
        if f"baseline:{name}" in ranks
    }


def update_baselines(study) -> None:
    """Recompute the baselines on the study's prompts and write them into the existing `results.json` (cells kept)."""
    path = Path(study.args.output_dir) / "results.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: run the study first (`--baselines_only` updates its baselines)."
        )
    results = read_json(path)
    blocks = _baseline_blocks(baseline_ranks(study), study.args)
    if any(results["baselines"].get(name, {}).get("hr@1") != block["hr@1"] for name, block in blocks.items()
           if name in results["baselines"]):  # fmt: skip
        raise RuntimeError(f"The baselines already in {path} differ from these prompts': not the same study.")
    results["baselines"] = blocks
    results["baselines_commit"] = _commit()
    results.setdefault("settings", {})["teacher"] = study.args.teacher
    write_json(path, results, indent=1)
    # The table and the collapse plot depend on results.json alone; the training curves need the cells' logs.
    (path.parent / "table.md").write_text(markdown_table(results) + "\n")
    if results["cells"]:
        plot_hr_vs_k(results, path.parent / "hr_vs_k.png")
    for name, block in blocks.items():
        print(f"{BASELINES[name]}: HR@1 {_fmt_ci(block['hr@1'], block['hr@1_ci'])}, NDCG@10 "
              f"{_fmt_ci(block['ndcg@10'], block['ndcg@10_ci'])}")  # fmt: skip


def collect(study) -> tuple[dict, dict]:
    """The results dictionary, and the per-prompt record of `ranks.json`: the target rank of every evaluated cell and
    baseline on each prompt, with what pairs them (the prompts' fingerprint, target indices, each cell's evaluation
    settings)."""
    from trl_dynamicpo.evaluation import target_indices, target_ranks

    args = study.args
    target_index = target_indices(study.eval["candidates"], study.eval["target"])
    seed = args.seed
    ranks = baseline_ranks(study)
    results = {
        "num_test_prompts": len(target_index),
        "split": args.eval_split,
        "baselines": {},
        "cells": [],
        "comparisons": {},
        "settings": {
            k: v for k, v in vars(args).items() if k not in ("cells", "report_only", "baselines_only", "chosen_cell")
        },
        "commit": _commit(),
    }
    if getattr(args, "chosen_cell", None) is not None:  # the arguments of a run started before the option lack it
        results["chosen_cell"] = args.chosen_cell
    results["baselines"] = _baseline_blocks(ranks, args)
    scores = {}  # per-cell candidate scores, loaded once (the extrapolation below reuses them)
    settings = {}  # per-cell evaluation settings, read once with eval.json (ranks.json records them)
    for cell in ["sft", *args.grid]:
        evaluation = study.evaluated(cell)
        if evaluation is None:
            continue
        settings[cell] = evaluation["settings"]
        trained = study.trained(cell)
        scores[cell] = np.load(study.cell_dir(cell) / "scores.npy")
        ranks[cell] = target_ranks(scores[cell], target_index)
        loss, k = parse_cell(cell)
        entry = {
            "name": cell,
            "loss": loss,
            "num_negatives": k,
            **metric_block(ranks[cell], args.bootstrap_resamples, seed),
            "train_rows": trained["train_rows"],
            "steps": trained["steps"],
            "train_seconds": trained["train_seconds"],
            "eval_seconds": evaluation["ranking_seconds"] + evaluation.get("generation_seconds", 0.0),
        }
        entry["wall_seconds"] = entry["train_seconds"] + entry["eval_seconds"]
        if "generation" in evaluation:
            generation = evaluation["generation"]
            entry["generation"] = {
                "hr@1": generation["hr@1"],
                "valid_ratio": generation["valid_ratio"],
                "num_prompts": evaluation["settings"]["num_generation_prompts"],
            }
            constrained = read_json(study.cell_dir(cell) / "constrained.json")
            if constrained is not None and study.args.constrained_generation:
                entry["generation"]["constrained_hr@1"] = constrained["metrics"]["hr@1"]
        results["cells"].append(entry)
    by_name = {c["name"]: c for c in results["cells"]}
    resamples = args.bootstrap_resamples
    for cell, entry in by_name.items():
        if "baseline:popularity" in ranks:
            entry["vs_popularity"] = paired_block(ranks[cell], ranks["baseline:popularity"], resamples, seed)
        if cell != "sft" and "sft" in ranks:
            entry["vs_sft"] = paired_block(ranks[cell], ranks["sft"], resamples, seed)
    if args.extrapolation != 1.0 and "sft" in ranks:
        sft = scores["sft"]
        for cell, entry in by_name.items():
            if cell == "sft":
                continue
            extrapolated = target_ranks(sft + args.extrapolation * (scores[cell] - sft), target_index)
            entry["extrapolated"] = {
                "extrapolation": args.extrapolation,
                **metric_block(extrapolated, resamples, seed),
                "vs_sft": paired_block(extrapolated, ranks["sft"], resamples, seed),
                "vs_cell": paired_block(extrapolated, ranks[cell], resamples, seed),
            }
            if "baseline:popularity" in ranks:
                entry["extrapolated"]["vs_popularity"] = paired_block(
                    extrapolated, ranks["baseline:popularity"], resamples, seed
                )
    teacher_key = f"baseline:{args.teacher}" if args.teacher else None
    if teacher_key in ranks:
        for cell, entry in by_name.items():
            entry["vs_teacher"] = paired_block(ranks[cell], ranks[teacher_key], resamples, seed)
        teacher = teacher_logits(study.teacher_scores, scores[next(iter(scores))].shape) if scores else None
        for cell, entry in by_name.items():
            lambdas = [args.fusion_lambda] if args.fusion_lambda is not None else FUSION_GRID
            if args.fusion_lambda is None and args.eval_split == "test":
                continue  # λ is chosen on validation; on test only the chosen one is scored
            best, sweep = fusion_sweep(scores[cell], teacher, target_index, lambdas)
            fused = sweep[best]
            ranks[f"fusion:{cell}"] = fused
            entry["fusion"] = {
                "lambda": best,
                "chosen_on": "given" if args.fusion_lambda is not None else f"{args.eval_split} (grid)",
                "grid_hr@1": {str(lam): float(np.mean(r == 1)) for lam, r in sweep.items()},
                **metric_block(fused, resamples, seed),
                "vs_teacher": paired_block(fused, ranks[teacher_key], resamples, seed),
                "vs_cell": paired_block(fused, ranks[cell], resamples, seed),
            }
    for cell in by_name:
        loss, k = parse_cell(cell)
        if loss == "dynamicpo" and f"dmpo@{k}" in ranks:
            results["comparisons"][f"dynamicpo@{k} - dmpo@{k}"] = paired_block(
                ranks[cell], ranks[f"dmpo@{k}"], resamples, seed
            )
    per_prompt = {
        "split": args.eval_split,
        "num_prompts": len(target_index),
        "seed": seed,
        "prompts_sha256": prompts_fingerprint(study.eval["prompt"], study.eval["candidates"], study.eval["target"]),
        "target_index": target_index.tolist(),
        "cells": {
            name: {
                "ranks": r.tolist(),
                **({"settings": settings[name]} if name in settings else {}),
            }
            for name, r in ranks.items()
        },
    }
    return results, per_prompt


# Fusion weights tried on validation: score = LLM log-prob sum + λ · teacher logit.
FUSION_GRID = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]


def fusion_sweep(scores: np.ndarray, teacher: np.ndarray, target_index, lambdas) -> tuple[float, dict]:
    """The target ranks of `scores + λ · teacher` for each λ of `lambdas`, and the λ with the highest HR@1 (the
    smallest on a tie: the least teacher that does as well).

    Args:
        scores (`np.ndarray`): the LLM's candidate scores `[N, A]` (NaN-padded).
        teacher (`np.ndarray`): the teacher's logits, same shape (`teacher_logits`).
        target_index: the target's candidate index per prompt.
        lambdas: the weights to try.

    Returns:
        `(best λ, {λ: ranks [N]})`.
    """
    from trl_dynamicpo.evaluation import target_ranks

    sweep = {lam: target_ranks(scores + lam * teacher, target_index) for lam in lambdas}
    best = max(sweep, key=lambda lam: (np.mean(sweep[lam] == 1), -lam))
    return best, sweep


def teacher_logits(teacher_scores, shape) -> np.ndarray:
    """The teacher's candidate scores (sigmoid probabilities) as logits, `[N, A]` (NaN-padded like the cells')."""
    out = np.full(shape, np.nan)
    for i, row in enumerate(teacher_scores):
        p = np.clip(np.asarray(row, dtype=np.float64), 1e-12, 1 - 1e-12)
        out[i, : len(p)] = np.log(p) - np.log1p(-p)
    return out


def _fmt_ci(value: float, ci) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _fmt_diff(block: dict | None, key: str = "hr@1") -> str:
    if not block:
        return "-"
    return f"{block[key]:+.3f} [{block[key + '_ci'][0]:+.3f}, {block[key + '_ci'][1]:+.3f}]"


def markdown_table(results: dict) -> str:
    """The README's results table: baselines first, then every cell."""
    lines = [
        "| model | K | HR@1 [95% CI] | NDCG@10 [95% CI] | HR@1 − SFT [paired 95% CI] | HR@1 − popularity [paired 95% CI] "
        "| generation HR@1 / ValidRatio | train rows / steps | wall (s) |",
        "|---|---:|---|---|---|---|---|---|---:|",
    ]
    for name, block in results["baselines"].items():
        lines.append(
            f"| {BASELINES[name]} | - | {_fmt_ci(block['hr@1'], block['hr@1_ci'])} | "
            f"{_fmt_ci(block['ndcg@10'], block['ndcg@10_ci'])} | - | - | - | - | - |"
        )
    for cell in results["cells"]:
        generation = cell.get("generation")
        gen = f"{generation['hr@1']:.3f} / {generation['valid_ratio']:.3f}" if generation else "-"
        if generation and "constrained_hr@1" in generation:  # constrained decoding: ValidRatio 1 by construction
            gen += f"; constrained {generation['constrained_hr@1']:.3f}"
        lines.append(
            f"| {DISPLAY[cell['loss']]} | {cell['num_negatives'] or '-'} | {_fmt_ci(cell['hr@1'], cell['hr@1_ci'])} | "
            f"{_fmt_ci(cell['ndcg@10'], cell['ndcg@10_ci'])} | {_fmt_diff(cell.get('vs_sft'))} | "
            f"{_fmt_diff(cell.get('vs_popularity'))} | {gen} | {cell['train_rows']} / {cell['steps']} | "
            f"{cell['wall_seconds']:.0f} |"
        )
        if "extrapolated" in cell:
            ext = cell["extrapolated"]
            lines.append(
                f"| {DISPLAY[cell['loss']]}, extrapolated x{ext['extrapolation']:g} from SFT | "
                f"{cell['num_negatives']} | {_fmt_ci(ext['hr@1'], ext['hr@1_ci'])} | "
                f"{_fmt_ci(ext['ndcg@10'], ext['ndcg@10_ci'])} | {_fmt_diff(ext.get('vs_sft'))} | "
                f"{_fmt_diff(ext.get('vs_popularity'))} | - | - | - |"
            )
        if "fusion" in cell:
            fusion = cell["fusion"]
            lines.append(
                f"| {DISPLAY[cell['loss']]} + teacher (fusion, λ = {fusion['lambda']:g}) | "
                f"{cell['num_negatives'] or '-'} | {_fmt_ci(fusion['hr@1'], fusion['hr@1_ci'])} | "
                f"{_fmt_ci(fusion['ndcg@10'], fusion['ndcg@10_ci'])} | - | - | - | - | - |"
            )
    teacher_rows = [c for c in results["cells"] if "vs_teacher" in c]
    if teacher_rows:
        lines += ["", "| HR@1 − teacher (paired 95% CI) | model | fusion with the teacher |", "|---|---|---|"]
        for cell in teacher_rows:
            fused = _fmt_diff(cell["fusion"]["vs_teacher"]) if "fusion" in cell else "-"
            lines.append(f"| {cell['name']} | {_fmt_diff(cell['vs_teacher'])} | {fused} |")
    if results["comparisons"]:
        lines += ["", "| paired difference | HR@1 [95% CI] | NDCG@10 [95% CI] |", "|---|---|---|"]
        for name, block in results["comparisons"].items():
            lines.append(f"| {name} | {_fmt_diff(block)} | {_fmt_diff(block, 'ndcg@10')} |")
    return "\n".join(lines)


def plot_hr_vs_k(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    colors = {"sdpo": "tab:blue", "dmpo": "tab:orange", "dynamicpo": "tab:green", "dpo": "tab:purple"}
    for loss in ("sdpo", "dmpo", "dynamicpo", "dpo"):
        cells = sorted((c for c in results["cells"] if c["loss"] == loss), key=lambda c: c["num_negatives"])
        if not cells:
            continue
        ks = [c["num_negatives"] for c in cells]
        hr = [c["hr@1"] for c in cells]
        lo = [c["hr@1_ci"][0] for c in cells]
        hi = [c["hr@1_ci"][1] for c in cells]
        style = "o-" if len(cells) > 1 else "D"
        ax.plot(ks, hr, style, color=colors[loss], label=DISPLAY[loss])
        if len(cells) > 1:
            ax.fill_between(ks, lo, hi, color=colors[loss], alpha=0.15)
        else:
            ax.errorbar(ks, hr, yerr=[[hr[0] - lo[0]], [hi[0] - hr[0]]], color=colors[loss], capsize=3)
    lines = (("popularity", ("k", "--")), ("popularity_train_rows", ("k", ":")), ("random", ("grey", ":")),
             ("sasrec", ("tab:brown", "-.")))  # fmt: skip
    for name, style in lines:
        if name in results["baselines"]:
            block = results["baselines"][name]
            ax.axhline(block["hr@1"], color=style[0], linestyle=style[1], label=BASELINES[name])
    sft = next((c for c in results["cells"] if c["loss"] == "sft"), None)
    if sft:
        ax.axhline(sft["hr@1"], color="tab:red", linestyle="-.", label="SFT (K = 0)")
        ax.axhspan(sft["hr@1_ci"][0], sft["hr@1_ci"][1], color="tab:red", alpha=0.07)
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 3, 7, 15])
    ax.set_xticklabels(["1", "3", "7", "15"])
    ax.set_xlabel("negatives per row K")
    ax.set_ylabel(f"ranking HR@1 ({results['num_test_prompts']} {results['split']} prompts)")
    ax.set_title("HR@1 vs number of negatives (95% bootstrap CI)")
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_training_curves(study, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(13, 3.6))
    for cell in study.args.grid:
        loss, k = cell.partition("@")[0], int(cell.partition("@")[2])
        trained = study.trained(cell)
        if k != 15 or trained is None:
            continue
        history = [h for h in trained["log_history"] if "loss" in h and "step" in h]
        for ax, metric in zip(axes, CURVE_METRICS):
            steps = [h["step"] for h in history if metric in h]
            values = np.array([h[metric] for h in history if metric in h], dtype=float)
            if len(values) == 0:
                continue
            window = max(1, len(values) // 20)  # light smoothing: per-step values of batch 8 are noisy
            smooth = np.convolve(values, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1 :], smooth, label=f"{DISPLAY[loss]} (K = 15)")
    for ax, metric in zip(axes, CURVE_METRICS):
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Training curves of the K = 15 runs (moving average)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(study, timings: dict) -> dict:
    out = Path(study.args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, per_prompt = collect(study)
    results["timings"] = timings
    cells = {c["name"]: c for c in results["cells"]}
    results["timings"]["cells_total"] = sum(c["wall_seconds"] for c in cells.values())
    results["timings"]["study_total"] = results["timings"]["cells_total"] + sum(
        v for k, v in timings.items() if k.startswith("cache_") or k in ("data", "reference_logps")
    )
    write_json(out / "results.json", results, indent=1)
    # Committed with results.json (a few kB): later runs pair with these prompts by prompt even once work_dir is gone.
    write_json(out / "ranks.json", per_prompt, indent=None)
    if results["cells"]:
        plot_hr_vs_k(results, out / "hr_vs_k.png")
        plot_training_curves(study, out / "training_curves.png")
    table = markdown_table(results)
    (out / "table.md").write_text(table + "\n")
    print(table)
    return results
