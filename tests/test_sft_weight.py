"""The NLL-weight study (`benchmarks/sft_weight.py`) end to end on real MovieLens-100K rows and a 4-layer SmolLM2."""

import json

import pytest

from .test_quality_study import RAW, small_smollm2  # noqa: F401  (the fixture)
from .testing_utils import import_benchmark


pytestmark = [
    pytest.mark.skipif(not (RAW / "u.data").is_file(), reason="needs ../shared/data/movielens/ml-100k"),
    pytest.mark.slow,  # a dataset build, three trainings and two decodings per model: minutes on 2 CPU cores
]


def test_weights_share_sft_add_the_nll_term_and_report_paired_differences(tmp_path, small_smollm2):  # noqa: F811
    sft_weight = import_benchmark("sft_weight")
    argv = [
        *("--output_dir", str(tmp_path / "results"), "--work_dir", str(tmp_path / "work")),
        *("--raw_dir", str(RAW), "--model_name_or_path", small_smollm2),
        *("--max_history", "3", "--num_candidates", "5", "--eval_split", "validation"),
        *("--train_rows", "8", "--num_eval_prompts", "6", "--num_generation_prompts", "2"),
        *("--batch_size", "8", "--eval_batch_size", "4", "--bootstrap_resamples", "100"),
        *("--grid", "dynamicpo@3", "--sft_weights", "0", "1", "--constrained_generation", "true"),
    ]
    assert sft_weight.main(argv) == 0
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    rows = {row["label"]: row for row in results["rows"]}
    assert list(rows) == ["SFT", "w = 0", "w = 1"]
    cells = tmp_path / "work" / "cells"
    assert sorted(p.name for p in cells.iterdir()) == ["dynamicpo@3-sft-0", "dynamicpo@3-sft-1", "sft"]
    # Weight 1 trained DynamicPO plus the chosen answer's NLL; weight 0 plain DynamicPO; both from the one SFT adapter.
    for weight in (0, 1):
        train = json.loads((cells / f"dynamicpo@3-sft-{weight}" / "train.json").read_text())
        assert train["settings"]["sft_weight"] == weight
        logged = {key for log in train["log_history"] for key in log}
        assert ("sft/nll" in logged) == (weight == 1)  # the trainer logs the NLL term only when it is in the loss
    # Every model is decoded freely and constrained (always a candidate), and weight 1 is paired with weight 0.
    for row in rows.values():
        assert row["generation"]["num_prompts"] == 2 and row["generation"]["constrained_valid_ratio"] == 1.0
    assert "ranking_minus_reference" in rows["w = 1"] and "valid_ratio_minus_reference" in rows["w = 1"]
    table = (tmp_path / "results" / "table.md").read_text()
    assert "| w = 1 |" in table and "reference" in table
    # A second run finds every weight cached: nothing retrains.
    mtimes = {p: p.stat().st_mtime_ns for p in cells.glob("*/train.json")}
    assert sft_weight.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in cells.glob("*/train.json")} == mtimes
