"""Candidate-order ensembling: prompt rewriting, shifts, and the mapping of scores back to each row's own order."""

import numpy as np
import pytest

from trl_dynamicpo.evaluation.orders import (
    average_over_orders,
    order_key,
    order_shift,
    reorder_prompt,
    reorder_rows,
    to_original_order,
)


PROMPT = "Watched:\nHeat\nAlien\nChoose from these 4 movies:\nHeat 2\nFargo\nAlien 3\nBig\nAnswer:"
CANDS = ["Heat 2", "Fargo", "Alien 3", "Big"]


def test_reorder_prompt_rotates_only_the_candidate_block():
    prompt, cands = reorder_prompt(PROMPT, CANDS, 1)
    assert cands == ["Fargo", "Alien 3", "Big", "Heat 2"]
    # The history ("Heat", "Alien": prefixes of candidates) is untouched.
    assert prompt == "Watched:\nHeat\nAlien\nChoose from these 4 movies:\nFargo\nAlien 3\nBig\nHeat 2\nAnswer:"
    assert reorder_prompt(PROMPT, CANDS, 4) == (PROMPT, CANDS)


def test_reorder_prompt_keeps_a_comma_separator():
    prompt, cands = reorder_prompt("Pick one of: Heat, Fargo, Big. Answer:", ["Heat", "Fargo", "Big"], 2)
    assert prompt == "Pick one of: Big, Heat, Fargo. Answer:" and cands == ["Big", "Heat", "Fargo"]


def test_reorder_prompt_names_the_row_when_the_list_is_not_found():
    with pytest.raises(ValueError, match="Row 7: the `prompt` must list its `candidates` once"):
        reorder_prompt("Pick: Fargo, Heat. Answer:", ["Heat", "Fargo"], 1, row=7)
    twice = "A\nB\nagain:\nA\nB\nAnswer:"
    with pytest.raises(ValueError, match="found 2 such lists"):
        reorder_prompt(twice, ["A", "B"], 1, row=0)
    with pytest.raises(TypeError, match="plain-text prompts"):
        reorder_prompt([{"role": "user", "content": "A B"}], ["A", "B"], 1, row=0)


def test_shifts_are_evenly_spaced_and_keys_shared_between_ensemble_sizes():
    assert [order_shift(o, 4, 20) for o in range(4)] == [0, 5, 10, 15]
    assert [order_shift(o, 3, 20) for o in range(3)] == [0, 6, 13]
    assert order_key(0, 4) is None and order_key(2, 4) == order_key(1, 2) == "1/2" and order_key(1, 4) == "1/4"
    with pytest.raises(ValueError, match="`order` must be in"):
        order_shift(4, 4, 20)


def test_scores_return_to_the_rows_own_order():
    rows_prompts = [PROMPT, "Pick one of: Heat, Fargo, Big. Answer:"]
    rows_cands = [CANDS, ["Heat", "Fargo", "Big"]]
    # A "model" whose score is a fixed value per title plus a bonus for the first listed place.
    value = {"Heat 2": 1.0, "Fargo": 2.0, "Alien 3": 3.0, "Big": 4.0, "Heat": 5.0}
    per_order = []
    for o in range(2):
        _, cands = reorder_rows(rows_prompts, rows_cands, o, 2)
        scores = np.full((2, 4), np.nan)
        for i, row in enumerate(cands):
            scores[i, : len(row)] = [value[t] + (10.0 if j == 0 else 0.0) for j, t in enumerate(row)]
        per_order.append(scores)
    back = to_original_order(per_order[1], [4, 3], 1, 2)
    # Order 1 of 2 rotates row 0 by 2 (Alien 3 first) and row 1 by 1 (Fargo first).
    np.testing.assert_allclose(back[0], [1.0, 2.0, 13.0, 4.0])
    np.testing.assert_allclose(back[1, :3], [5.0, 12.0, 4.0])
    assert np.isnan(back[1, 3])
    mean = average_over_orders(per_order, [4, 3])
    np.testing.assert_allclose(mean[0], [6.0, 2.0, 8.0, 4.0])
    np.testing.assert_allclose(mean[1, :3], [10.0, 7.0, 4.0])
    assert np.isnan(mean[1, 3])
    # One order is the identity.
    np.testing.assert_array_equal(average_over_orders(per_order[:1], [4, 3]), per_order[0])


def test_evaluate_recommender_averages_the_naive_scores_of_every_rotation():
    from trl_dynamicpo.evaluation import EvaluationConfig, evaluate_recommender

    from .test_evaluation import naive_scores
    from .testing_utils import make_tiny_model, make_tokenizer

    tokenizer = make_tokenizer()
    model = make_tiny_model(tokenizer, seed=0)
    rows = [
        {"prompt": "user has watched heat . choose from alien , jaws , rocky . answer:", "candidates": ["alien", "jaws", "rocky"], "target": "jaws"},
        {"prompt": "predict the next movie : star wars , dune , rush , drive . answer:", "candidates": ["star wars", "dune", "rush", "drive"], "target": "rush"},
    ]  # fmt: skip
    results = evaluate_recommender(
        model, tokenizer, rows, protocols=["ranking"], candidate_orders=3, return_scores=True, show_progress=False
    )
    expected = np.full((2, 4), np.nan)
    for i, row in enumerate(rows):
        by_title = {title: [] for title in row["candidates"]}
        for o in range(3):
            prompt, cands = reorder_prompt(row["prompt"], row["candidates"], order_shift(o, 3, len(row["candidates"])))
            for title, value in zip(cands, naive_scores(model, tokenizer, prompt, cands)):
                by_title[title].append(value)
        expected[i, : len(by_title)] = [np.mean(by_title[t]) for t in row["candidates"]]
    np.testing.assert_allclose(results["ranking/scores"], expected, atol=1e-4, rtol=0)
    single = evaluate_recommender(
        model, tokenizer, rows, protocols=["ranking"], return_scores=True, show_progress=False
    )
    assert not np.allclose(single["ranking/scores"][0, :3], expected[0, :3], atol=1e-3)  # the rotations matter
    with pytest.raises(ValueError, match="`candidate_orders` must be >= 1"):
        EvaluationConfig(candidate_orders=0)


ROTATABLE = [
    {"prompt": "user has watched heat . choose from alien , jaws , rocky . answer:", "candidates": ["alien", "jaws", "rocky"]},
    {"prompt": "predict the next movie : star wars , dune , rush , drive . answer:", "candidates": ["star wars", "dune", "rush", "drive"]},
]  # fmt: skip


def test_score_over_orders_with_a_trunk_cache_per_order_equals_the_full_forward(tmp_path):
    from datasets import Dataset

    from trl_dynamicpo.evaluation import score_candidates, score_over_orders
    from trl_dynamicpo.trunk_cache import TrunkCache

    from .testing_utils import make_tiny_model, make_tokenizer

    tokenizer = make_tokenizer()
    model = make_tiny_model(tokenizer, seed=0, num_hidden_layers=4, attn_implementation="sdpa")
    prompts, candidates = [r["prompt"] for r in ROTATABLE], [r["candidates"] for r in ROTATABLE]
    caches = []
    for o in range(3):
        rotated_prompts, rotated_candidates = reorder_rows(prompts, candidates, o, 3)
        rows = Dataset.from_dict({"prompt": rotated_prompts, "candidates": rotated_candidates})
        caches.append(
            TrunkCache.build(model, tokenizer, rows, tmp_path / str(o), num_trainable_layers=2, show_progress=False)
        )
    full = score_over_orders(model, tokenizer, prompts, candidates, 3, show_progress=False)
    cached = score_over_orders(model, tokenizer, prompts, candidates, 3, trunk_caches=caches, show_progress=False)
    assert full.shape == (3, 2, 4)
    np.testing.assert_allclose(cached, full, atol=1e-4, rtol=0)
    # Order 0 is the rows as built; order 1 is its own prompts' scores mapped back to the rows' candidate order.
    np.testing.assert_allclose(full[0], score_candidates(model, tokenizer, prompts, candidates, show_progress=False))
    rotated = score_candidates(model, tokenizer, *reorder_rows(prompts, candidates, 1, 3), show_progress=False)
    np.testing.assert_allclose(full[1], to_original_order(rotated, [3, 4], 1, 3))
    with pytest.raises(ValueError, match="2 entries for 3 orders"):
        score_over_orders(model, tokenizer, prompts, candidates, 3, trunk_caches=caches[:2])


def test_score_over_orders_fails_on_an_unrotatable_prompt_before_running_the_model():
    from trl_dynamicpo.evaluation import score_over_orders

    prompts = [ROTATABLE[0]["prompt"], "predict the next movie . answer:"]
    candidates = [ROTATABLE[0]["candidates"], ["star wars", "dune"]]
    # model=None: had order 0 been scored before the rotations were built, this would be an AttributeError.
    with pytest.raises(ValueError, match="Row 1: the `prompt` must list its `candidates` once"):
        score_over_orders(None, None, prompts, candidates, 2)
