"""The quality study (`benchmarks/quality.py`) end to end on real MovieLens-100K rows and a 4-layer SmolLM2.

A handful of rows and prompts, so that it runs in the default suite: it checks the schema of `results.json`, the
plots, and that the per-cell cache reruns nothing when nothing changed and only the dependent cells when a setting
changed.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from .testing_utils import SHARED_DATA


ROOT = Path(__file__).resolve().parents[1]
RAW = SHARED_DATA / "movielens" / "ml-100k"
pytestmark = pytest.mark.skipif(not (RAW / "u.data").is_file(), reason="needs ../shared/data/movielens/ml-100k")


@pytest.fixture(scope="module")
def small_smollm2(tmp_path_factory):
    """SmolLM2-135M-Instruct's tokenizer and its first 4 layers (real weights), saved as a folder."""
    from transformers import AutoModelForCausalLM

    from trl_dynamicpo.model_utils import convert_gguf, smollm2_gguf_path

    folder = convert_gguf(*smollm2_gguf_path())
    out = tmp_path_factory.mktemp("smollm2-4l")
    model = AutoModelForCausalLM.from_pretrained(folder, num_hidden_layers=4)
    model.save_pretrained(out)
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(folder).save_pretrained(out)
    return str(out)


def _run(argv):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import quality

        return quality.main(argv)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def _argv(tmp_path, model, grid=("dmpo@3", "dynamicpo@3", "sdpo@15"), **overrides):
    values = {
        "output_dir": tmp_path / "results",
        "work_dir": tmp_path / "work",
        "raw_dir": RAW,
        "model_name_or_path": model,
        "train_rows": 8,
        "num_eval_prompts": 8,
        "num_generation_prompts": 2,
        "trainable_layers": 2,
        "batch_size": 8,
        "eval_batch_size": 4,
        "bootstrap_resamples": 200,
        "sft_learning_rate": 1e-3,
        "learning_rate": 1e-3,
    }
    values.update(overrides)
    argv = []
    for key, value in values.items():
        argv += [f"--{key}", str(value)]
    return argv + ["--grid", *grid]


def _mtimes(work):
    return {p.parent.name: p.stat().st_mtime_ns for p in (work / "cells").glob("*/train.json")}


def test_study_writes_results_and_reruns_only_what_changed(tmp_path, small_smollm2, capsys):
    assert _run(_argv(tmp_path, small_smollm2)) == 0
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert results["num_test_prompts"] == 8 and results["split"] == "test"
    assert set(results["baselines"]) == {"popularity", "popularity_train_rows", "random"}
    names = [c["name"] for c in results["cells"]]
    assert names == ["sft", "dmpo@3", "dynamicpo@3", "sdpo@15"]
    for cell in results["cells"]:
        low, high = cell["hr@1_ci"]
        assert low <= cell["hr@1"] <= high and 0 <= low and high <= 1
        assert cell["train_rows"] == 8 and cell["steps"] == 1 and cell["wall_seconds"] > 0
        assert ("generation" in cell) == (cell["num_negatives"] in (0, 15))
        if cell["loss"] != "sft":
            assert "vs_sft" in cell and "vs_popularity" in cell
    assert set(results["comparisons"]) == {"dynamicpo@3 - dmpo@3"}
    # The table's HR@1 is the ranking metric of the saved per-prompt scores.
    from trl_dynamicpo.evaluation import ranking_metrics

    record = json.loads((tmp_path / "work" / "cells" / "dmpo@3" / "eval.json").read_text())
    scores = np.load(tmp_path / "work" / "cells" / "dmpo@3" / "scores.npy")
    assert ranking_metrics(scores, record["target_index"])["hr@1"] == results["cells"][1]["hr@1"]
    # ranks.json, committed with results.json, keeps each cell's and baseline's per-prompt target ranks.
    from trl_dynamicpo.evaluation import target_ranks

    per_prompt = json.loads((tmp_path / "results" / "ranks.json").read_text())
    assert per_prompt["target_index"] == record["target_index"] and per_prompt["num_prompts"] == 8
    assert per_prompt["cells"]["dmpo@3"]["ranks"] == target_ranks(scores, record["target_index"]).tolist()
    assert per_prompt["cells"]["dmpo@3"]["settings"] == record["settings"]
    assert {"baseline:popularity", "baseline:random"} <= set(per_prompt["cells"])
    assert len(per_prompt["prompts_sha256"]) == 64
    assert (tmp_path / "results" / "hr_vs_k.png").stat().st_size > 10_000
    assert (tmp_path / "results" / "training_curves.png").stat().st_size > 10_000

    before = _mtimes(tmp_path / "work")
    capsys.readouterr()
    assert _run(_argv(tmp_path, small_smollm2)) == 0
    assert "4 of 4 cells cached; to run: none" in capsys.readouterr().out
    assert _mtimes(tmp_path / "work") == before

    # A preference setting changes: SFT stays and the preference cell is retrained (one cell, to keep the test short;
    # cells outside the grid are left as they are).
    capsys.readouterr()
    assert _run(_argv(tmp_path, small_smollm2, grid=("dmpo@3",), learning_rate=5e-4)) == 0
    assert "1 of 2 cells cached; to run: dmpo@3" in capsys.readouterr().out
    after = _mtimes(tmp_path / "work")
    assert after["sft"] == before["sft"] and after["dmpo@3"] != before["dmpo@3"]
    assert after["dynamicpo@3"] == before["dynamicpo@3"]

    # Candidate orders are an evaluation setting: the trained cells stay, each is scored again under 2 orders, and
    # its scores are the mean of the orders' (order 0 = the prompts as built, the scores saved before).
    single = np.load(tmp_path / "work" / "cells" / "dmpo@3" / "scores.npy")
    capsys.readouterr()
    assert _run(_argv(tmp_path, small_smollm2, grid=("dmpo@3",), learning_rate=5e-4, candidate_orders=2)) == 0
    assert "0 of 2 cells cached; to run: sft dmpo@3" in capsys.readouterr().out
    assert _mtimes(tmp_path / "work") == after
    per_order = np.load(tmp_path / "work" / "cells" / "dmpo@3" / "scores_per_order.npy")
    assert per_order.shape == (2, *single.shape)
    np.testing.assert_allclose(per_order[0], single, atol=1e-4)
    np.testing.assert_allclose(np.load(tmp_path / "work" / "cells" / "dmpo@3" / "scores.npy"), per_order.mean(0))
    assert not np.allclose(per_order[1], single, atol=1e-3)  # the rotated prompts score differently

    # Extrapolation is computed in the report from the saved scores: no cell reruns, and the extrapolated ranking is
    # that of s_sft + a (s_cell - s_sft) on the same prompts.
    capsys.readouterr()
    argv = _argv(tmp_path, small_smollm2, grid=("dmpo@3",), learning_rate=5e-4, candidate_orders=2, extrapolation=3)
    assert _run([*argv, "--report_only", "true"]) == 0
    assert _mtimes(tmp_path / "work") == after
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    cell = next(c for c in results["cells"] if c["name"] == "dmpo@3")
    sft = np.load(tmp_path / "work" / "cells" / "sft" / "scores.npy")
    own = np.load(tmp_path / "work" / "cells" / "dmpo@3" / "scores.npy")
    expected = ranking_metrics(sft + 3.0 * (own - sft), record["target_index"])
    assert cell["extrapolated"]["extrapolation"] == 3.0
    assert cell["extrapolated"]["hr@1"] == pytest.approx(expected["hr@1"])
    assert cell["extrapolated"]["ndcg@10"] == pytest.approx(expected["ndcg@10"])
    assert cell["hr@1"] == ranking_metrics(own, record["target_index"])["hr@1"]  # the cell's own entry unchanged
    assert "extrapolated" not in results["cells"][0]  # SFT is the reference, not extrapolated
    assert "DMPO, extrapolated x3 from SFT" in (tmp_path / "results" / "table.md").read_text()
