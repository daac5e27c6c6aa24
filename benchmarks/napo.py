"""NAPO in-batch negative sharing: packed (prompt once) vs concatenated (prompt per answer) training step.

Batch of 8 rows, K = 3 own negatives each, every other row's negatives shared (`in_batch_fraction=1.0`): each row
scores its chosen answer, 3 own and 21 shared negatives under its own prompt (~300 tokens). Loss `napo`, LoRA r=8,
fp32, CPU. The concatenated layout repeats the prompt for all 25 answers of every row, so the model is cut to a few
of SmolLM2-135M's layers (`--layers`) to keep it within memory on a 24 GB machine; the ratio is what matters.

    python benchmarks/napo.py                 # SmolLM2-135M-Instruct, first 4 layers, and a tiny model
    python benchmarks/napo.py --models tiny
"""

import argparse

from _measure import run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2", "tiny"], choices=["smollm2", "tiny"])
    parser.add_argument("--layers", type=int, default=4, help="SmolLM2 layers kept (30 in the full model)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=300)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()

    print(
        "| model | rows x answers | packed step (s) | concatenated step (s) | speed-up | packed peak (MB) "
        "| concatenated peak (MB) | memory ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for model in args.models:
        results = {}
        for layout in ("packed", "concatenated"):
            spec = dict(
                model=model,
                layers=args.layers if model == "smollm2" else None,
                layout=layout,
                batch_size=args.batch_size,
                num_negatives=args.negatives,
                prompt_tokens=args.prompt_tokens,
                loss_type="napo",
                in_batch=True,
                warmup=1,
                steps=args.steps,
            )
            results[layout] = run(spec)
        p, c = results["packed"], results["concatenated"]
        assert abs(p["loss"] - c["loss"]) < 1e-3, (p["loss"], c["loss"])
        name = f"{model} ({args.layers} layers)" if model == "smollm2" else model
        print(
            f"| {name} | {args.batch_size} x {p['num_answers']} | {p['step_s']:.2f} | {c['step_s']:.2f} | "
            f"{c['step_s'] / p['step_s']:.1f}x | {p['peak_mb']:.0f} | {c['peak_mb']:.0f} | "
            f"{c['peak_mb'] / max(p['peak_mb'], 1):.1f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()
