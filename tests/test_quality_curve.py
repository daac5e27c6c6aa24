"""The popularity-fusion diagnostic of `benchmarks/quality_curve.py`, on hand-built scores."""

import numpy as np
import pytest

from .testing_utils import import_benchmark


@pytest.fixture(scope="module")
def quality_curve():
    return import_benchmark("quality_curve")


# 4 prompts, 3 candidates, the target always last (index 2, so that ties never favour it). Popularity ranks it first
# on prompts 0 and 1 only; each half of the cross-fitting (even prompts, odd prompts) holds one of each.
POPULARITY = np.array([[1.0, 0.0, 9.0], [1.0, 0.0, 9.0], [9.0, 0.0, 1.0], [9.0, 0.0, 1.0]])
TARGETS = [2, 2, 2, 2]


def test_a_model_that_knows_more_than_popularity_keeps_its_own_ranking(quality_curve):
    scores = np.array([[-1.0, -1.0, 0.0]] * 4)  # the target by 1 nat on every prompt
    out = quality_curve.popularity_fusion(scores, POPULARITY, TARGETS, num_resamples=200, seed=0)
    assert out["weights"] == [0.0, 0.0]  # λ = 0 is the best (and smallest) weight on both halves
    assert out["hr@1"] == 1.0
    assert out["hr@1_minus_popularity"] == pytest.approx(0.5)


def test_a_model_that_knows_nothing_falls_back_to_popularity_and_gains_nothing(quality_curve):
    out = quality_curve.popularity_fusion(np.zeros((4, 3)), POPULARITY, TARGETS, num_resamples=200, seed=0)
    # λ = 0 leaves all ties (the target loses them); the smallest λ > 0 is popularity's order: 1 hit of 2 per half.
    assert out["weights"] == [0.25, 0.25]
    assert out["hr@1"] == 0.5
    assert out["hr@1_minus_popularity"] == 0.0 and out["hr@1_minus_popularity_ci"] == [0.0, 0.0]
