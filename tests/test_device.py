"""Device policy: bf16 autocast only where it is fast, a warning where it was asked for and would run emulated."""

import warnings
from pathlib import Path

import pytest

from trl_dynamicpo import DynamicPOConfig, device

from .testing_utils import import_benchmark


def _cpu_flags() -> set[str] | None:
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return None


def test_native_bf16_detection_agrees_with_the_cpu_flags():
    flags = _cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo flags on this platform")
    assert device.cpu_has_native_bf16() == bool({"avx512_bf16", "amx_bf16", "amx_tile"} & flags)


@pytest.mark.parametrize(
    "gpu, gpu_bf16, cpu_bf16, expected",
    [
        (True, True, False, True),  # a bf16 GPU, whatever the CPU
        (True, False, True, False),  # a GPU without bf16: the CPU does not matter, training runs on the GPU
        (False, False, True, True),  # CPU only, AVX512-BF16 / AMX
        (False, False, False, False),  # CPU only, emulated bf16 (e.g. AVX2)
    ],
)
def test_fast_bf16(monkeypatch, gpu, gpu_bf16, cpu_bf16, expected):
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setattr(device, "accelerator_support", lambda: (gpu, gpu_bf16))
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: cpu_bf16)
    assert device.fast_bf16() is expected
    # `accelerate launch --cpu` on a GPU machine: training runs on the CPU, so the CPU decides.
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    assert device.fast_bf16() is cpu_bf16


def _config(tmp_path, **kwargs):
    return DynamicPOConfig(output_dir=str(tmp_path), report_to=[], **kwargs)


def test_config_warns_when_bf16_would_be_emulated(monkeypatch, tmp_path):
    monkeypatch.setattr(device, "use_cpu", lambda: True)
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="without native bf16"):
        _config(tmp_path, bf16=True)
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*native bf16")
        assert _config(tmp_path, bf16=True).bf16 is True  # asked for and fast: kept, silently
        assert _config(tmp_path).bf16 is False  # the library's own default on CPU stays fp32


def test_recipe_auto_precision_resolves_per_machine(monkeypatch, tmp_path):
    """`trunk_cache.autocast_dtype: auto`, `bf16: null` and `evaluation.bf16: null` follow `fast_bf16()`."""
    from recipes import recipe_config
    from recipes.recipe_config import load_recipe, training_arguments

    from .test_recipes import MINIMAL, write_yaml

    recipe = {
        **MINIMAL,
        "model": {**MINIMAL.get("model", {}), "trainable_layers": 1},
        "trunk_cache": {"enabled": True, "autocast_dtype": "auto"},
        "sft": {"bf16": None},
        "preference": {"bf16": None},
        "evaluation": {"bf16": None},
    }
    path = write_yaml(tmp_path / "auto.yaml", recipe)
    for fast in (True, False):
        monkeypatch.setattr(recipe_config, "fast_bf16", lambda fast=fast: fast)
        monkeypatch.setattr(device, "cpu_has_native_bf16", lambda fast=fast: fast)  # no warning when fast
        loaded = load_recipe(path)
        assert loaded.trunk_cache.autocast_dtype == ("bfloat16" if fast else None)
        assert loaded.evaluation.bf16 is fast
        for stage in ("sft", "preference"):
            assert training_arguments(loaded, stage, str(tmp_path / stage)).bf16 is fast
    explicit = write_yaml(tmp_path / "explicit.yaml", {**recipe, "preference": {"bf16": False}})
    monkeypatch.setattr(recipe_config, "fast_bf16", lambda: True)
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert training_arguments(load_recipe(explicit), "preference", str(tmp_path / "p")).bf16 is False


def test_study_resolves_auto_before_fingerprinting(monkeypatch):
    quality = import_benchmark("quality")
    for fast, dtype in ((True, "bfloat16"), (False, None)):
        monkeypatch.setattr(quality, "fast_bf16", lambda fast=fast: fast)
        args = quality.QualityArguments(trunk_autocast="auto", bf16=None)
        assert (args.trunk_autocast, args.bf16) == (dtype, fast)
    assert quality.QualityArguments(trunk_autocast=None, bf16=False).trunk_autocast is None  # explicit: kept
    with pytest.raises(ValueError, match="trunk_autocast"):
        quality.QualityArguments(trunk_autocast="float8")
