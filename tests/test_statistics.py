"""Bootstrap statistics against hand-computed values and a naive loop."""

import numpy as np
import pytest

from trl_dynamicpo.evaluation import baseline_scores, ranking_metrics, target_ranks
from trl_dynamicpo.statistics import bootstrap_ci, hits_at, ndcg_at, paired_bootstrap_ci


def test_per_prompt_values_by_hand():
    ranks = np.array([1, 2, 3, 11])
    assert hits_at(ranks, 1).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert hits_at(ranks, 3).tolist() == [1.0, 1.0, 1.0, 0.0]
    np.testing.assert_allclose(ndcg_at(ranks, 10), [1.0, 1 / np.log2(3), 0.5, 0.0])


def test_per_prompt_means_are_ranking_metrics():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 20))
    target = rng.integers(0, 20, size=50)
    ranks = target_ranks(scores, target)
    metrics = ranking_metrics(scores, target)
    assert hits_at(ranks, 1).mean() == metrics["hr@1"]
    assert ndcg_at(ranks, 10).mean() == pytest.approx(metrics["ndcg@10"])
    assert (1 / ranks).mean() == pytest.approx(metrics["mrr"])


def test_bootstrap_matches_a_naive_loop():
    values = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    mean, (low, high) = bootstrap_ci(values, num_resamples=500, seed=3)
    rng = np.random.default_rng(3)
    index = rng.integers(0, len(values), size=(500, len(values)))
    means = sorted(sum(values[i] for i in row) / len(row) for row in index)
    assert mean == 0.4
    assert low == pytest.approx(np.quantile(means, 0.025)) and high == pytest.approx(np.quantile(means, 0.975))
    assert low < mean < high


def test_paired_interval_is_the_interval_of_differences():
    a = np.array([1.0, 1.0, 0.0, 1.0])
    assert bootstrap_ci(np.full(7, 0.25)) == (0.25, (0.25, 0.25))
    # b = a - 1 on every prompt: the difference is exactly 1 whatever the resample.
    assert paired_bootstrap_ci(a, a - 1.0) == (1.0, (1.0, 1.0))
    b = np.array([0.0, 1.0, 0.0, 0.0])
    diff, ci = paired_bootstrap_ci(a, b, num_resamples=300, seed=1)
    assert diff == 0.5 and ci == bootstrap_ci(a - b, num_resamples=300, seed=1)[1]
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap_ci(a, b[:3])
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap_ci([1.0, np.nan])


def test_baseline_scores_rank_by_popularity():
    candidates = [["A", "B", "C"], ["C", "X"]]
    items = {"title": ["A", "B", "C"], "train_count": [5, 50, 1], "popularity_group": ["mid", "head", "tail"]}
    scores = baseline_scores(candidates, items, seed=0)
    np.testing.assert_array_equal(scores["popularity"][0], [5, 50, 1])
    assert scores["popularity"][1][1] == 0  # unknown title: never seen in training
    assert np.isnan(scores["random"][1][2])  # padding
    assert target_ranks(scores["popularity"], [1, 0]).tolist() == [1, 1]
