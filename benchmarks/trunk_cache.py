"""Frozen-trunk cache vs the full forward pass: one training step and one ranking batch, side by side.

    python benchmarks/trunk_cache.py [--trainable-layers 2] [--rows 8] [--repeats 3]

Real MovieLens-100K rows (the builder's defaults: 10 history items, 20 candidates, ~380 prompt tokens) on
SmolLM2-135M-Instruct with LoRA r=8 on every projection of the top `--trainable-layers` layers. For each of fp32 and
bf16 autocast it times, with and without `TrunkCache`:

- a DynamicPO training step (K = 15 negatives, batch `--rows`, reference log-probs precomputed, AdamW), and
- scoring the 20 candidates of `--rows` prompts (the ranking evaluation),

and the one-off cost of caching a row. The cached and full log-probs are compared (max |Δ|), and on
`--agreement-rows` other prompts the ranking decisions of bf16 autocast are compared with fp32 (same top-1 candidate,
same target rank). A study that trains and
evaluates many models on the same rows pays the trunk once per row instead of once per row and use.
"""

import argparse
import contextlib
import random
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from _measure import median_time  # noqa: E402


TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--raw-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/movielens/ml-100k")
    )
    parser.add_argument("--trainable-layers", type=int, default=2)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--agreement-rows", type=int, default=64, help="prompts on which bf16 and fp32 ranking decisions are compared"
    )
    args = parser.parse_args()

    from peft import LoraConfig, get_peft_model

    from dataset_builders import BuildConfig, run_build
    from trl_dynamicpo.evaluation import score_candidates
    from trl_dynamicpo.model_utils import load_causal_lm
    from trl_dynamicpo.packing import DataCollatorForMultiNegativePreference, answer_logps
    from trl_dynamicpo.trunk_cache import TrunkCache

    work = Path(tempfile.mkdtemp(prefix="trunk_cache_bench_"))
    raw = args.raw_dir if Path(args.raw_dir).is_dir() else None
    data = run_build("movielens-100k", work / "data", BuildConfig(raw_dir=raw, verbose=False, progress=False)).dataset
    rows = data["test"].select(sorted(random.Random(0).sample(range(len(data["test"])), args.rows)))
    model, tokenizer = load_causal_lm("smollm2-135m-instruct", attn_implementation="sdpa")
    total = model.config.num_hidden_layers
    layers = list(range(total - args.trainable_layers, total))
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, target_modules=TARGETS, layers_to_transform=layers))
    print(f"SmolLM2-135M, LoRA on layers {layers[0]}-{layers[-1]} of {total}, {args.rows} rows x 20 candidates")

    results = []
    for precision in ("fp32", "bf16"):
        autocast = (
            (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
        )
        start = time.perf_counter()
        cache = TrunkCache.build(
            model, tokenizer, rows, work / f"cache-{precision}", num_trainable_layers=args.trainable_layers,
            autocast_dtype="bfloat16" if precision == "bf16" else None, show_progress=False, verify=False,
        )  # fmt: skip
        cache_seconds = (time.perf_counter() - start) / args.rows

        def rank(trunk_cache, autocast=autocast):
            with autocast():
                return score_candidates(
                    model, tokenizer, rows["prompt"], rows["candidates"], batch_size=args.rows,
                    trunk_cache=trunk_cache, show_progress=False,
                )  # fmt: skip

        full_rank = median_time(lambda: rank(None), args.repeats)
        cached_rank = median_time(lambda cache=cache: rank(cache), args.repeats)
        diff = float(abs(rank(None) - rank(cache)).max())

        # One training step: the chosen answer and 15 negatives per row, loss = DMPO on precomputed reference values.
        from trl_dynamicpo.data import tokenize_prompt_answers

        examples = []
        for i, row in enumerate(rows):
            prompt_ids, answer_ids = tokenize_prompt_answers(
                tokenizer, row["prompt"], [row["chosen"], *row["rejected"]]
            )
            located = cache.locate(i, prompt_ids, answer_ids, ["chosen"] + [f"rejected[{k}]" for k in range(19)])
            examples.append(
                {"prompt_ids": prompt_ids, "chosen_ids": answer_ids[0], "rejected_ids": answer_ids[1:],
                 "row_index": i, "trunk_row": i, "trunk_answers": located}
            )  # fmt: skip
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)

        def step(trunk_cache, autocast=autocast, examples=examples, optimizer=optimizer):
            collator = DataCollatorForMultiNegativePreference(
                pad_token_id=tokenizer.pad_token_id, num_negatives=15, trunk_cache=trunk_cache
            )
            batch = collator(examples)
            with autocast():
                logps = answer_logps(model, batch)
            loss = -torch.nn.functional.logsigmoid(logps[:, 0] - logps[:, 1:].mean(dim=1)).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        model.train()
        full_step = median_time(lambda: step(None), args.repeats)
        cached_step = median_time(lambda cache=cache: step(cache), args.repeats)
        model.eval()
        results.append((precision, cache_seconds, full_step, cached_step, full_rank, cached_rank, diff))

    # Does bf16 autocast change the ranking decisions? The same prompts scored in fp32 and in bf16 (full forward).
    agreement = data["test"].select(sorted(random.Random(1).sample(range(len(data["test"])), args.agreement_rows)))
    scores = {}
    for precision in ("fp32", "bf16"):
        context = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        with context:
            scores[precision] = score_candidates(
                model, tokenizer, agreement["prompt"], agreement["candidates"], batch_size=8, show_progress=False
            )
    from trl_dynamicpo.evaluation import target_indices, target_ranks

    target = target_indices(agreement["candidates"], agreement["chosen"])
    same_top1 = float((scores["fp32"].argmax(1) == scores["bf16"].argmax(1)).mean())
    same_rank = float((target_ranks(scores["fp32"], target) == target_ranks(scores["bf16"], target)).mean())
    max_diff = float(abs(scores["fp32"] - scores["bf16"]).max())

    print()
    print(
        "| precision | caching (s / row, once) | train step full (s) | train step cached (s) | speed-up "
        "| ranking full (s / prompt) | ranking cached (s / prompt) | speed-up | max |Δ score| |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for precision, cache_seconds, full_step, cached_step, full_rank, cached_rank, diff in results:
        print(
            f"| {precision} | {cache_seconds:.3f} | {full_step:.2f} | {cached_step:.2f} | {full_step / cached_step:.1f}x "
            f"| {full_rank / args.rows:.3f} | {cached_rank / args.rows:.3f} | {full_rank / cached_rank:.1f}x "
            f"| {diff:.1e} |"
        )
    print()
    print(
        f"bf16 vs fp32 ranking on {args.agreement_rows} other test prompts: same top-1 candidate {same_top1:.1%}, "
        f"same target rank {same_rank:.1%}, max |Δ score| {max_diff:.2f} nats"
    )


if __name__ == "__main__":
    main()
