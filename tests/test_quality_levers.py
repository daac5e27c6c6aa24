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


def _report(root: Path, cells: dict, target=(0, 0, 0, 0), prompts="a" * 64) -> str:
    """A study's output folder as the report writes it: `ranks.json` with each cell's per-prompt target ranks."""
    root.mkdir(parents=True)
    record = {
        "split": "validation",
        "num_prompts": len(target),
        "seed": 42,
        "prompts_sha256": prompts,
        "target_index": list(target),
        "cells": {name: {"ranks": ranks, "settings": SETTINGS} for name, ranks in cells.items()},
    }
    (root / "ranks.json").write_text(json.dumps(record))
    return str(root)


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
    with pytest.raises(SystemExit, match="expected LABEL=DIR:CELL"):
        levers.main(["--output_dir", str(tmp_path), "--run", "no-cell-given"])
    with pytest.raises(SystemExit, match="'lost'.*cell not evaluated"):
        levers.main(["--output_dir", str(tmp_path), "--run", f"lost={tmp_path}:dmpo@3"])


def test_a_report_folder_pairs_like_a_work_folder(levers, tmp_path):
    # VARIANT's target ranks (candidate 0 is the target): 1, 1, 1, 2. Read from ranks.json they must give the numbers
    # that the work folder's scores give.
    a = _cell(tmp_path / "a", "dmpo@15", REFERENCE)
    b = _cell(tmp_path / "b", "dmpo@15", VARIANT)
    report = _report(tmp_path / "report", {"dmpo@15": [1, 1, 1, 2], "baseline:random": [2, 2, 1, 1]})
    for variant, out in ((b, tmp_path / "out-work"), (report, tmp_path / "out-report")):
        assert (
            levers.main(["--output_dir", str(out), "--run", f"ref={a}:dmpo@15", "--run", f"v={variant}:dmpo@15"]) == 0
        )
    work, read = (
        json.loads((tmp_path / d / "levers.json").read_text())["runs"][1] for d in ("out-work", "out-report")
    )
    for key in ("hr@1", "hr@1_ci", "ndcg@10", "hr@1_minus_reference", "hr@1_minus_reference_ci"):
        assert read[key] == pytest.approx(work[key]), key
    assert read["hr@1_minus_reference"] == pytest.approx(0.25)


def test_reports_of_other_prompts_or_without_the_cell_are_refused(levers, tmp_path):
    a = _report(tmp_path / "a", {"sft": [1, 1, 2, 2]})
    b = _report(tmp_path / "b", {"sft": [1, 1, 1, 2]}, prompts="b" * 64)  # same targets, other prompts
    with pytest.raises(SystemExit, match="'other' was scored on other prompts than 'ref' \\(prompts differ"):
        levers.main(["--output_dir", str(tmp_path / "o"), "--run", f"ref={a}:sft", "--run", f"other={b}:sft"])
    # A baseline's ranks are in ranks.json too, but it is no evaluated cell of the study.
    c = _report(tmp_path / "c", {"baseline:random": [1, 2, 1, 2]})
    with pytest.raises(SystemExit, match="'lost'.*ranks.json has an evaluated cell 'dmpo@3'"):
        levers.main(["--output_dir", str(tmp_path / "o"), "--run", f"lost={c}:dmpo@3"])
    with pytest.raises(SystemExit, match="'random'.*cell not evaluated"):
        levers.main(["--output_dir", str(tmp_path / "o"), "--run", f"random={c}:baseline:random"])
