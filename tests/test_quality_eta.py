"""The study ETA of `benchmarks/quality.py` (`_Eta`), on hand-set timings."""

import pytest

from .testing_utils import import_benchmark


@pytest.fixture(scope="module")
def quality():
    return import_benchmark("quality")


def _eta(quality):
    eta = quality._Eta(None)  # no cache: prompt 380 tokens, answer 12 tokens
    eta.prompt, eta.answer = 100.0, 10.0
    return eta


def test_before_any_preference_cell_sft_seconds_per_token_predict_training(quality):
    eta = _eta(quality)
    eta.trained("sft", 110.0)  # 110 tokens per row -> 1 s per token
    eta.evaluated({"ranking_seconds": 30.0})
    # dynamicpo@15: 100 + 16 x 10 = 260 tokens -> 260 s of training, 30 s of ranking (generation never measured).
    assert eta.remaining(["dynamicpo@15"]) == pytest.approx(290.0)


def test_measured_preference_cells_replace_the_sft_estimate(quality):
    eta = _eta(quality)
    eta.trained("sft", 110.0)
    eta.trained("dmpo@3", 70.0)  # 100 + 4 x 10 = 140 tokens -> 0.5 s per token
    eta.evaluated({"ranking_seconds": 30.0, "generation_seconds": 50.0})
    eta.evaluated({"ranking_seconds": 10.0})
    # dmpo@15: 260 x 0.5 = 130 s, ranking mean 20 s, generation 50 s at K = 15; dmpo@1: 120 x 0.5 + 20 = 80 s.
    assert eta.remaining(["dmpo@15", "dmpo@1"]) == pytest.approx(200.0 + 80.0)
    assert eta.remaining([]) == 0.0
