"""bf16 autocast vs fp32 on this CPU, side by side: what `"auto"` precision decides from.

    python benchmarks/cpu_bf16.py [--rows 4] [--repeats 3]

bf16 autocast is a speed lever on CPUs that multiply bf16 in hardware (AVX512-BF16, AMX). On other CPUs (e.g. AVX2
only) PyTorch emulates it and it is far slower than fp32, so the recipes' `bf16: null`, `trunk_cache.autocast_dtype:
auto` and the quality study's `trunk_autocast: auto` run fp32 there (`trl_dynamicpo.device.fast_bf16`). This script
prints whether the CPU has native bf16 and times, in fp32 and under bf16 autocast:

- one matrix product of SmolLM2-135M's MLP shape (2,048 tokens x 576 x 1,536), and
- the frozen-trunk pass of `--rows` real MovieLens-100K rows (the builder's defaults: 10 history items, 20
  candidates), the one-off cost per row that a quality study pays for every training and evaluation row.
"""

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from _measure import median_time  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--raw-dir", default=str(Path(__file__).resolve().parents[2] / "shared/data/movielens/ml-100k")
    )
    parser.add_argument("--rows", type=int, default=4, help="rows of the trunk pass (each precision)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of the matrix product")
    args = parser.parse_args()

    import warnings

    from dataset_builders import BuildConfig, run_build
    from trl_dynamicpo.device import cpu_has_native_bf16, fast_bf16
    from trl_dynamicpo.model_utils import load_causal_lm
    from trl_dynamicpo.trunk_cache import TrunkCache

    warnings.filterwarnings("ignore", message=".*native bf16")  # asking for bf16 here is the point
    native = cpu_has_native_bf16()
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, native bf16: {native}, threads "
          f"{torch.get_num_threads()}; 'auto' precision here: {'bf16' if fast_bf16() else 'fp32'}")  # fmt: skip

    a, w = torch.randn(2048, 576), torch.randn(576, 1536)
    matmul = {}
    for name, (x, y) in {"fp32": (a, w), "bf16": (a.bfloat16(), w.bfloat16())}.items():
        matmul[name] = median_time(lambda x=x, y=y: x @ y, args.repeats)

    work = Path(tempfile.mkdtemp(prefix="cpu_bf16_bench_"))
    raw = args.raw_dir if Path(args.raw_dir).is_dir() else None
    data = run_build("movielens-100k", work / "data", BuildConfig(raw_dir=raw, verbose=False, progress=False)).dataset
    rows = data["test"].select(sorted(random.Random(0).sample(range(len(data["test"])), args.rows)))
    model, tokenizer = load_causal_lm("smollm2-135m-instruct", attn_implementation="sdpa")
    model.eval()
    trunk = {}
    for name, dtype in (("fp32", None), ("bf16", "bfloat16")):
        TrunkCache.build(model, tokenizer, rows.select([0]), work / f"warm-{name}", num_trainable_layers=2,
                         autocast_dtype=dtype, show_progress=False, verify=False)  # fmt: skip
        start = time.perf_counter()
        TrunkCache.build(model, tokenizer, rows, work / f"cache-{name}", num_trainable_layers=2,
                         autocast_dtype=dtype, show_progress=False, verify=False)  # fmt: skip
        trunk[name] = (time.perf_counter() - start) / args.rows

    print()
    print("| measured side by side | fp32 | bf16 autocast | bf16 / fp32 time |")
    print("|---|---:|---:|---:|")
    print(f"| matrix product 2048 x 576 x 1536 | {matmul['fp32'] * 1e3:.1f} ms | {matmul['bf16'] * 1e3:.1f} ms | "
          f"{matmul['bf16'] / matmul['fp32']:.2f}x |")  # fmt: skip
    print(f"| trunk pass, s / row (20 candidates, layers 0-27) | {trunk['fp32']:.2f} | {trunk['bf16']:.2f} | "
          f"{trunk['bf16'] / trunk['fp32']:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
