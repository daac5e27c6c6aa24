"""The quality study's hybrid-token reports: fusion with the teacher (`benchmarks/quality_report.py`) and the stacking-leak
check (`benchmarks/hybrid_leak.py`), on hand-built scores."""

import numpy as np
import pytest

from .testing_utils import import_benchmark


@pytest.fixture(scope="module")
def quality_report():
    return import_benchmark("quality_report")


def test_teacher_logits_invert_the_sigmoid_and_pad_with_nan(quality_report):
    out = quality_report.teacher_logits([[0.5, 0.75], [0.1]], (2, 3))
    assert out[0, 0] == 0.0 and out[0, 1] == pytest.approx(np.log(3.0))
    assert out[1, 0] == pytest.approx(-np.log(9.0))
    assert np.isnan(out[0, 2]) and np.isnan(out[1, 1:]).all()


def test_fusion_picks_the_smallest_weight_with_the_best_hit_rate(quality_report):
    # 3 prompts, 2 candidates, the target at index 1. The LLM prefers the target by 1 nat on prompt 0 and is wrong by
    # 1 nat on prompts 1 and 2; the teacher is right by 1 logit on prompt 1 only and wrong by 3 on prompt 2.
    scores = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    teacher = np.array([[0.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    best, sweep = quality_report.fusion_sweep(scores, teacher, [1, 1, 1], [0.5, 2.0, 4.0])
    # λ = 0.5: prompt 1 fused 1 vs 0.5, still wrong (1/3). λ = 2 and 4: prompt 1 right, prompt 2 wrong (2/3).
    assert sweep[0.5].tolist() == [1, 2, 2]
    assert sweep[2.0].tolist() == [1, 1, 2] and sweep[4.0].tolist() == [1, 1, 2]
    assert best == 2.0  # the tie between 2 and 4 goes to the smaller weight


def test_fusion_with_zero_weight_is_the_model_itself(quality_report):
    rng = np.random.default_rng(0)
    scores, teacher = rng.normal(size=(20, 5)), rng.normal(size=(20, 5))
    targets = rng.integers(0, 5, size=20)
    from trl_dynamicpo.evaluation import target_ranks

    best, sweep = quality_report.fusion_sweep(scores, teacher, targets, [0.0])
    assert best == 0.0 and sweep[0.0].tolist() == target_ranks(scores, targets).tolist()


@pytest.fixture(scope="module")
def hybrid_leak():
    return import_benchmark("hybrid_leak")


def test_teacher_ranks_break_ties_by_prompt_order(hybrid_leak):
    ranks = hybrid_leak.teacher_ranks([[0.2, 0.9, 0.5], [0.4, 0.4]], [2, 1])
    assert ranks.tolist() == [2, 2]  # row 1: the tie goes to the earlier candidate


def test_gap_block_is_train_minus_validation(hybrid_leak):
    train = np.array([1, 1, 1, 2])  # HR@1 0.75
    valid = np.array([1, 2, 3, 2, 1, 4, 5, 6])  # HR@1 0.25
    block = hybrid_leak.gap_block(train, valid, resamples=500, seed=0)
    assert block["train"]["hr@1"] == 0.75 and block["validation"]["hr@1"] == 0.25
    assert block["gap"] == pytest.approx(0.5)
    low, high = block["gap_ci"]
    assert -0.5 <= low < 0.5 < high <= 1.0
