"""The GPU check (`benchmarks/gpu/check.sh`, issue 27) dry-run on CPU at tiny sizes: every part runs and reports
finite numbers, so that the check is ready for whoever next has a GPU machine (where it runs once, in one call)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def finite(*values) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def test_gpu_check_dry_run_reports_every_part(tmp_path):
    out = tmp_path / "gpu"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu" / "check.sh"), str(out), "--cpu"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=900,  # ~35 s of CPU time; 6 minutes of wall time on 2 cores shared with 10 other jobs
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "check.json").read_text())
    parts = report["parts"]
    assert report["meta"]["cpu"] is True
    assert {name: part["status"] for name, part in parts.items()} == {
        "forward": "ok",
        "trainer": "ok",
        "protocols": "ok",
    }, {name: part.get("error") for name, part in parts.items()}

    # Forward: both layouts for every model, batch size and K, with times, peaks and the attention kernels.
    pairs = parts["forward"]["pairs"]
    assert {tuple(p["key"]) for p in pairs} == {
        (model, batch, k) for model in ("qwen2.5-1.5b", "smollm2-135m") for batch in (1, 2) for k in (1, 3)
    }
    for pair in pairs:
        for layout in ("packed", "concatenated"):
            row = pair[layout]
            assert finite(row["step_s"], row["peak_mb"], row["loss"]), row
            assert row["attention"]["ran"] and "math" in row["attention"]["accepts"], row["attention"]
        assert finite(pair["time_ratio"], pair["memory_ratio"]) and pair["same_loss"]
        assert pair["packed"]["num_tokens"] < pair["concatenated"]["num_tokens"]
    # The FlexAttention fix scores answers as the dense mask does (timed only on CUDA: no CPU backward).
    (flex,) = parts["forward"]["flex"]
    assert finite(flex["flex_max_abs_diff"]) and flex["flex_max_abs_diff"] < 1e-4

    # Trainer smoke: losses finite, step 1 equal to the CPU fp32 run, steps/s.
    for row in parts["trainer"]["rows"]:
        assert row["passed"] and row["steps_logged"] == 3 and finite(row["steps_per_s"], *row["device"]["losses"])

    # Protocols: both timed, their ratio finite.
    (protocols,) = parts["protocols"]["rows"]
    assert finite(protocols["generation_s_per_prompt"], protocols["ranking_s_per_prompt"], protocols["speed_ratio"])

    table = (out / "check.md").read_text()
    for heading in ("## Forward", "FlexAttention fix", "## Trainer smoke", "## Evaluation protocols"):
        assert heading in table
    assert "error" not in table.lower()
