"""Packed (prompt once) vs concatenated (TRL's layout, prompt per answer): training step time and peak memory.

One row with a ~300-token recommendation prompt and K negatives, LoRA r=8 on all projections, fp32, CPU; each
configuration in its own process (see `_measure.py`). Prints a markdown table with the ratios measured side by side.

    python benchmarks/forward.py                      # SmolLM2-135M-Instruct and a tiny model, K = 1, 3, 7, 15
    python benchmarks/forward.py --models tiny --negatives 1 3
"""

import argparse

from _measure import run


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2", "tiny"], choices=["smollm2", "tiny"])
    parser.add_argument("--negatives", nargs="+", type=int, default=[1, 3, 7, 15])
    parser.add_argument("--prompt-tokens", type=int, default=300)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    print(
        "| model | K | prompt tokens | packed step (s) | concatenated step (s) | speed-up | packed peak (MB) "
        "| concatenated peak (MB) | memory ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model in args.models:
        for k in args.negatives:
            results = {}
            for layout in ("packed", "concatenated"):
                spec = dict(
                    model=model,
                    layout=layout,
                    batch_size=1,
                    num_negatives=k,
                    prompt_tokens=args.prompt_tokens,
                    warmup=1,
                    steps=args.steps,
                )
                results[layout] = run(spec)
            p, c = results["packed"], results["concatenated"]
            assert abs(p["loss"] - c["loss"]) < 1e-3, (p["loss"], c["loss"])  # same objective, same numbers
            print(
                f"| {model} | {k} | {p['prompt_len']} | {p['step_s']:.3f} | {c['step_s']:.3f} | "
                f"{c['step_s'] / p['step_s']:.1f}x | {p['peak_mb']:.0f} | {c['peak_mb']:.0f} | "
                f"{c['peak_mb'] / max(p['peak_mb'], 1):.1f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
