"""Does the teacher's stacking leak reach a hybrid model? Train-row vs validation HR@1 of a study's cells and of the
teacher, on the same rows (issue #25, point 1).

    python benchmarks/hybrid_leak.py --config benchmarks/quality_ml100k_cpu_hybrid.yaml \\
        --output benchmarks/results/ml100k-cpu-hybrid/leak

The teacher (SASRec of the builder) is trained on every train row, so its features of train rows are in-sample:
its own HR@1 is higher there than on validation. A hybrid model trained on those rows sees optimistic item and state
vectors and may learn to trust them more than they deserve at test time. This scores each cell of a `quality.py`
run (`--config`, the run's own config: same work_dir, caches and rows) on its training rows, through the training
rows' trunk cache, and puts the train - validation gap of each cell next to the teacher's. A model gap far above the
teacher's says the model overfits its rows (an LLM gap); a gap that follows the teacher's says the leak passes
through the vectors. Writes `leak.json` and `leak.md` to `--output`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def teacher_ranks(candidate_scores, target_index) -> np.ndarray:
    from trl_dynamicpo.evaluation import target_ranks

    width = max(len(row) for row in candidate_scores)
    scores = np.full((len(candidate_scores), width), np.nan)
    for i, row in enumerate(candidate_scores):
        scores[i, : len(row)] = row
    return target_ranks(scores, target_index)


def gap_block(train: np.ndarray, valid: np.ndarray, resamples: int, seed: int) -> dict:
    """HR@1 on each set with its interval, and the train - validation difference with an unpaired interval (the
    two sets are different rows: each is resampled on its own)."""
    from quality_report import metric_block

    rng = np.random.default_rng(seed)
    a, b = (train == 1).astype(float), (valid == 1).astype(float)
    diffs = [rng.choice(a, a.size).mean() - rng.choice(b, b.size).mean() for _ in range(resamples)]
    return {
        "train": metric_block(train, resamples, seed),
        "validation": metric_block(valid, resamples, seed),
        "gap": float(a.mean() - b.mean()),
        "gap_ci": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))],
    }


def train_row_scores(study, cell: str, tokenizer) -> np.ndarray:
    """The cell's candidate scores of its training rows (cached in the cell's folder as `train_scores.npy`)."""
    from trl_dynamicpo.evaluation import score_candidates

    path = study.cell_dir(cell) / "train_scores.npy"
    if path.is_file():
        return np.load(path)
    model = study.load_cell(cell)
    with study.autocast():  # as the validation scores were computed
        scores = score_candidates(
            model,
            tokenizer,
            study.train["prompt"],
            study.train["candidates"],
            batch_size=study.args.eval_batch_size,
            score=study.args.score,
            trunk_cache=study.train_cache,
            show_progress=not os.environ.get("TQDM_DISABLE"),
            item_tokens=study.item_token_data(tokenizer),
            user_states=study.user_states(study.train),
        )
    np.save(path, scores)
    return scores


def markdown(results: dict) -> str:
    lines = [
        f"Train rows: the {results['train_rows']:,} rows the cells trained on; validation: "
        f"{results['validation_rows']:,} prompts. HR@1 [95% CI]; gap = train - validation [95% CI, unpaired].",
        "",
        "| model | train HR@1 | validation HR@1 | gap |",
        "|---|---:|---:|---:|",
    ]
    for name, block in results["models"].items():
        t, v = block["train"], block["validation"]
        lines.append(
            f"| {name} | {t['hr@1']:.3f} [{t['hr@1_ci'][0]:.3f}, {t['hr@1_ci'][1]:.3f}] | {v['hr@1']:.3f} "
            f"[{v['hr@1_ci'][0]:.3f}, {v['hr@1_ci'][1]:.3f}] | {block['gap']:+.3f} "
            f"[{block['gap_ci'][0]:+.3f}, {block['gap_ci'][1]:+.3f}] |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from quality import QualityArguments, Study
    from trl import TrlParser

    from trl_dynamicpo.evaluation import target_indices, target_ranks

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="The quality.py config of the run (its work_dir and rows).")
    parser.add_argument("--output", required=True, help="Folder for leak.json and leak.md.")
    parser.add_argument("--cells", nargs="*", default=None, help="Cells to score (default: sft and the grid).")
    parser.add_argument("--resamples", type=int, default=2000, help="Bootstrap resamples.")
    options = parser.parse_args(argv)
    (args,) = TrlParser((QualityArguments,)).parse_args_and_config(["--config", options.config])
    study = Study(args)
    study.load_data()
    if args.teacher is None:
        raise SystemExit("The run has no teacher: there is no leak to measure.")
    model, tokenizer = study.load_base()
    study.train_cache = study.cache("train", study.train, model, tokenizer)  # the run's own: already built
    del model
    train_target = target_indices(study.train["candidates"], study.train["chosen"])
    valid_target = target_indices(study.eval["candidates"], study.eval["target"])
    if "candidate_scores" not in study.train.column_names:
        raise SystemExit("Run with item_tokens: the study's training rows then come from the teacher build.")
    train_teacher = study.train["candidate_scores"]
    models = {
        args.teacher: gap_block(
            teacher_ranks(train_teacher, train_target),
            teacher_ranks(study.teacher_scores, valid_target),
            options.resamples,
            args.seed,
        )
    }
    for cell in options.cells or ["sft", *args.grid]:
        if study.evaluated(cell) is None:
            print(f"{cell}: not evaluated on validation, skipped")
            continue
        train = target_ranks(train_row_scores(study, cell, tokenizer), train_target)
        valid = target_ranks(np.load(study.cell_dir(cell) / "scores.npy"), valid_target)
        models[cell] = gap_block(train, valid, options.resamples, args.seed)
    results = {
        "config": options.config,
        "train_rows": len(train_target),
        "validation_rows": len(valid_target),
        "models": models,
    }
    out = Path(options.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "leak.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "leak.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
