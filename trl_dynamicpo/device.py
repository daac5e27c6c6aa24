"""Device policy of the library's configs: where training runs, and whether bf16 autocast pays off there.

[`DynamicPOConfig`], the trunk cache, the recipes and the quality study read these instead of deciding each on its own:
training runs on CPU when there is no GPU-like accelerator ([`use_cpu`]), and "auto" mixed precision means bf16
autocast only where it is fast ([`fast_bf16`]): a GPU with bf16, or a CPU with native bf16 instructions.
"""

import os
import warnings

import torch


def accelerator_support() -> tuple[bool, bool]:
    """(a GPU-like accelerator is available, it supports bf16): the device policy of this library's configs.

    [`DynamicPOConfig`] and the recipes read it: without an accelerator training runs on CPU ([`use_cpu`]) and
    `DynamicPOConfig.bf16` defaults to off; the recipes turn activation checkpointing on by default only with an
    accelerator, and bf16 where [`fast_bf16`].
    """
    if torch.cuda.is_available():
        return True, torch.cuda.is_bf16_supported()
    xpu = bool(getattr(torch, "xpu", None) and torch.xpu.is_available())
    return xpu, xpu


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX).

    Without those instructions (e.g. an AVX2-only CPU) PyTorch emulates bf16, far *slower* than fp32: on an AVX2 AMD
    EPYC, 134x on a matrix product and 5.8x on a SmolLM2 trunk pass (`benchmarks/cpu_bf16.py`), where AVX512-BF16
    makes it 1.7x faster. bf16 is only a speed lever on CPU, so the library's "auto" settings use it where it is
    native and fp32 elsewhere.
    """
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def fast_bf16() -> bool:
    """Whether bf16 autocast speeds up this machine's training device: a GPU-like accelerator with bf16, or, with
    none, a CPU with native bf16 ([`cpu_has_native_bf16`]). What `bf16: null` (recipes) and `"auto"` (trunk cache,
    quality study) resolve to."""
    if use_cpu():  # no accelerator, or `accelerate launch --cpu` on a machine that has one
        return cpu_has_native_bf16()
    has_gpu, has_bf16 = accelerator_support()
    return has_gpu and has_bf16  # MPS: bf16 autocast support varies by macOS version; fp32


def warn_if_slow_bf16(what: str, stacklevel: int = 3) -> None:
    """Warn that bf16 autocast, asked for by `what`, will run emulated (much slower than fp32) on this CPU.
    `stacklevel` counts from this function: 3 points at the caller's caller (whoever asked for bf16)."""
    if use_cpu() and not cpu_has_native_bf16():
        warnings.warn(
            f"{what} asks for bf16 autocast on a CPU without native bf16 (no AVX512-BF16 or AMX): PyTorch emulates "
            "it, much slower than fp32 (5.8x on a SmolLM2 trunk pass of an AVX2 CPU). Turn it off, or leave it to "
            "'auto' (recipes: `bf16: null`, `trunk_cache.autocast_dtype: auto`), to run in fp32 here.",
            stacklevel=stacklevel,
        )


def use_cpu() -> bool:
    """Train on CPU: `ACCELERATE_USE_CPU` is set (`accelerate launch --cpu`) or there is no GPU-like device (CUDA,
    XPU or MPS).

    Processes started by `torchrun` / `accelerate launch --multi_gpu` on a machine without GPU must build their
    `PartialState` with `cpu=True` to form a gloo process group; otherwise each would train on the whole dataset.
    """
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return True
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return not (accelerator_support()[0] or mps)
