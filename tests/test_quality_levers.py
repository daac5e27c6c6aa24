"""`benchmarks/quality_levers.py`: cells of different study runs compared on the same prompts, on hand-built cells."""

import json
from pathlib import Path

import numpy as np
import pytest

from .testing_utils import import_benchmark


@pytest.fixture(scope="module")
def levers():
    return import_benchmark("quality_levers")


SETTINGS = {"split": "validation", "num_eval_prompts": 4, "num_generation_prompts": 0, "score": "sum", "seed": 42}


def _cell(root: Path, cell: str, scores, target=(0, 0, 0, 0), **settings) -> str:
    folder = root / "cells" / cell
    folder.mkdir(parents=True)
    np.save(folder / "scores.npy", np.asarray(scores, dtype=np.float64))
    record = {"settings": {**SETTINGS, **settings}, "target_index": list(target)}
    (folder / "eval.json").write_text(json.dumps(record))
    return str(root)


# 4 prompts, 2 candidates, the target is candidate 0. The reference ranks it first on prompts 0 and 1 (HR@1 0.5), the
# variant on prompts 0, 1 and 2 (0.75): the per-prompt differences are (0, 0, 1, 0), so the paired difference is 0.25.
REFERENCE = [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]
VARIANT = [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]


def test_paired_difference_to_the_reference(levers, tmp_path):
    a = _cell(tmp_path / "a", "dmpo@15", REFERENCE)
    b = _cell(tmp_path / "b", "dmpo@15", VARIANT)
    out = tmp_path / "out"
    assert (
        levers.main(["--output_dir", str(out), "--run", f"ref={a}:dmpo@15", "--run", f"score=mean={b}:dmpo@15"]) == 0
    )
    report = json.loads((out / "levers.json").read_text())
    ref, variant = report["runs"]
    assert (ref["hr@1"], variant["hr@1"]) == (0.5, 0.75)
    assert variant["label"] == "score=mean"  # the label may hold "="
    assert variant["hr@1_minus_reference"] == pytest.approx(0.25)
    lo, hi = variant["hr@1_minus_reference_ci"]
    assert 0.0 <= lo <= 0.25 <= hi <= 1.0  # per-prompt differences are 0 or +1: no resample goes below 0
    # NDCG@10 with 2 candidates: rank 1 -> 1, rank 2 -> 1 / log2(3).
    second = 1 / np.log2(3)
    assert variant["ndcg@10_minus_reference"] == pytest.approx((1 - second) / 4)
    assert "hr@1_minus_reference" not in ref
    assert "| score=mean | dmpo@15 | 0.7500" in (out / "table.md").read_text()


def test_runs_scored_on_other_prompts_are_refused(levers, tmp_path):
    a = _cell(tmp_path / "a", "sft", REFERENCE)
    b = _cell(tmp_path / "b", "sft", VARIANT, target=(0, 0, 1, 0))
    c = _cell(tmp_path / "c", "sft", VARIANT, split="test")
    with pytest.raises(SystemExit, match="'other' was scored on other prompts than 'ref' \\(target_index differ"):
        levers.main(["--output_dir", str(tmp_path), "--run", f"ref={a}:sft", "--run", f"other={b}:sft"])
    with pytest.raises(SystemExit, match="\\(split differ"):
        levers.main(["--output_dir", str(tmp_path), "--run", f"ref={a}:sft", "--run", f"other={c}:sft"])


def test_a_bad_run_spec_or_missing_cell_names_the_run(levers, tmp_path):
    with pytest.raises(SystemExit, match="expected LABEL=WORK_DIR:CELL"):
        levers.main(["--output_dir", str(tmp_path), "--run", "no-cell-given"])
    with pytest.raises(SystemExit, match="'lost'.*cell not evaluated"):
        levers.main(["--output_dir", str(tmp_path), "--run", f"lost={tmp_path}:dmpo@3"])
