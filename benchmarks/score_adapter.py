"""Score a committed hybrid adapter (LoRA + item-token projector) on any split and prompt sample of MovieLens-100K.

    python benchmarks/score_adapter.py --adapter benchmarks/results/ml100k-cpu-hybrid/chosen-adapter \\
        --raw_dir ../shared/data/movielens/ml-100k --split test --num_prompts 1000

The quality study chose the adapter on validation and scored test once; this re-scores it on prompts it was never
chosen on (another `--seed` draws another sample, `--num_prompts 0` takes the whole split). The dataset is rebuilt
from the raw files with the SASRec teacher (`--teacher sasrec`, the study's seed 42), whose item table and user
states the projector reads: MovieLens may not be redistributed, so neither the data nor the table is committed. A
rebuild on another CPU can differ in the last bits of the teacher's vectors, and bf16 autocast (where the CPU has
it natively, as in the study) in the last digits of the scores. Prints and writes (`--output`) the ranking HR@1,
NDCG@10 and MRR with 95% intervals next to SASRec, popularity and random on the same prompts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", required=True, help="Adapter folder (adapter_*.json/safetensors, item_tokens.*).")
    parser.add_argument("--raw_dir", default=None, help="MovieLens-100K raw folder (default: download).")
    parser.add_argument("--data_dir", default="outputs/score_adapter/ml100k-sasrec", help="Where the build goes.")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="Base model the adapter was trained on.")
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"], help="Split to score.")
    parser.add_argument("--num_prompts", type=int, default=1000, help="Seeded sample size (0: the whole split).")
    parser.add_argument("--seed", type=int, default=42, help="Seed of the prompt sample (the study's: 42).")
    parser.add_argument("--limit", type=int, default=None, help="Score only the first N prompts of the sample.")
    parser.add_argument("--batch_size", type=int, default=4, help="Prompts per forward pass.")
    parser.add_argument("--output", default=None, help="JSON file for the results.")
    args = parser.parse_args(argv)

    import torch
    from peft import PeftModel

    from dataset_builders import BuildConfig, run_build
    from dataset_builders.folder import load_dataset_folder
    from trl_dynamicpo.data import subsample_indices
    from trl_dynamicpo.device import fast_bf16
    from trl_dynamicpo.evaluation import evaluate_recommender, format_results_table
    from trl_dynamicpo.item_tokens import ItemEmbeddingTable, ItemTokens, load_item_tokens
    from trl_dynamicpo.model_utils import load_causal_lm

    data_dir = Path(args.data_dir)
    if not (data_dir / "build_info.json").is_file():
        run_build("movielens-100k", data_dir, BuildConfig(raw_dir=args.raw_dir, teacher="sasrec", verbose=False))
    split = load_dataset_folder(data_dir)[args.split]
    items = load_dataset_folder(data_dir, config="items")
    items = items[next(iter(items))]
    indices = subsample_indices(len(split), args.num_prompts or None, seed=args.seed, name=args.split)
    rows = split.select(indices[: args.limit] if args.limit else indices)

    model, tokenizer = load_causal_lm(args.model, attn_implementation="sdpa")
    model = PeftModel.from_pretrained(model, args.adapter)
    if load_item_tokens(model, args.adapter) is None:
        raise SystemExit(f"{args.adapter} has no item-token projector (item_tokens.json): not a hybrid adapter.")
    item_tokens = ItemTokens.for_model(model, ItemEmbeddingTable.from_folder(data_dir))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if fast_bf16() else contextlib.nullcontext()
    with autocast:
        results = evaluate_recommender(
            model,
            tokenizer,
            rows,
            protocols=["ranking"],
            item_table=items,
            item_tokens=item_tokens,
            batch_size=args.batch_size,
            seed=args.seed,
            bootstrap_resamples=2000,
        )
    print(f"{args.adapter} on {len(rows)} {args.split} prompts (seed {args.seed}):")
    print(format_results_table(results))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(results, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
