"""Constrained generation: every answer is exactly one candidate, scored as the ranking protocol scores it."""

import numpy as np
import pytest

from trl_dynamicpo.evaluation import (
    EvaluationConfig,
    build_trie,
    evaluate_recommender,
    generate_candidates,
    match_candidates,
    score_candidates,
)
from trl_dynamicpo.evaluation.constrained import allowed_tokens
from trl_dynamicpo.item_tokens import ItemTokens, attach_item_tokens

from .test_item_tokens import ROWS as ITEM_ROWS
from .test_item_tokens import _model as item_model
from .test_item_tokens import _projector, _states
from .testing_utils import make_tiny_model, make_tokenizer


# Titles that share a prefix ("heat" / "heat wave", "star" / "star wars"): a trie must reach both and stop at either.
PROMPTS = [
    "user has watched fargo . choose from heat , heat wave , alien . answer:",
    "user watched toy story recently . predict the next movie . answer:",
    "history : titanic matrix jaws . choose the next movie from the following . answer:",
    "user has watched up . answer:",
    "predict the next movie : star , star wars , dune . answer:",
]
CANDIDATES = [
    ["heat", "heat wave", "alien"],
    ["up", "cars", "coco", "brave", "frozen"],
    ["heat wave", "heat", "star wars"],
    ["moana", "dune"],
    ["star", "star wars", "dune", "rush"],
]


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer(extra_words=["wave"])


@pytest.fixture(scope="module", params=[0, 1, 2])
def model(request, tokenizer):
    return make_tiny_model(tokenizer, seed=request.param)


def test_trie_reaches_both_titles_of_a_shared_prefix():
    heat, heat_wave = [7, 2], [7, 9, 2]  # "heat" EOS, "heat wave" EOS
    trie = build_trie([heat, heat_wave])
    assert allowed_tokens(trie, [], 2) == [7]
    assert sorted(allowed_tokens(trie, [7], 2)) == [2, 9]  # stop at "heat" or go on to "heat wave"
    assert allowed_tokens(trie, [7, 9], 2) == [2]
    assert allowed_tokens(trie, [7, 2], 2) == [2]  # finished: only EOS (padding) follows
    with pytest.raises(ValueError, match="same token ids"):
        build_trie([heat, [7, 2]])


def test_greedy_answer_is_always_exactly_one_candidate(model, tokenizer):
    answers = generate_candidates(model, tokenizer, PROMPTS, CANDIDATES, batch_size=3, show_progress=False)
    scores = score_candidates(model, tokenizer, PROMPTS, CANDIDATES, show_progress=False)
    for row, (answer, cands) in enumerate(zip(answers, CANDIDATES)):
        assert len(answer) == 1
        index, logp = answer[0]
        # Matched as a whole title, the answer names exactly one candidate, also for "heat" next to "heat wave".
        assert match_candidates(" " + cands[index], cands, mode="title") == [index]
        # Its score is the ranking protocol's log-probability of that candidate (EOS included).
        assert logp == pytest.approx(scores[row, index], abs=1e-4)


def test_batched_left_padding_matches_single_prompts(model, tokenizer):
    batched = generate_candidates(model, tokenizer, PROMPTS, CANDIDATES, k=2, batch_size=5, show_progress=False)
    for prompt, cands, expected in zip(PROMPTS, CANDIDATES, batched):
        single = generate_candidates(model, tokenizer, [prompt], [cands], k=2, show_progress=False)[0]
        assert [i for i, _ in single] == [i for i, _ in expected]
        np.testing.assert_allclose([s for _, s in single], [s for _, s in expected], atol=1e-4)


def test_beam_top_k_are_distinct_candidates_and_all_beams_give_the_ranking(model, tokenizer):
    scores = score_candidates(model, tokenizer, PROMPTS, CANDIDATES, show_progress=False)
    top3 = generate_candidates(model, tokenizer, PROMPTS, CANDIDATES, k=3, show_progress=False)
    for row, answers in enumerate(top3):
        indices = [i for i, _ in answers]
        assert len(indices) == min(3, len(CANDIDATES[row])) == len(set(indices))
        values = [s for _, s in answers]
        assert values == sorted(values, reverse=True)
        np.testing.assert_allclose(values, scores[row, indices], atol=1e-4)
    # As many beams as candidates: no prefix is ever pruned, so the beams are the full ranking of the scorer.
    everything = generate_candidates(model, tokenizer, PROMPTS, CANDIDATES, k=20, show_progress=False)
    for row, answers in enumerate(everything):
        n = len(CANDIDATES[row])
        assert [i for i, _ in answers] == list(np.argsort(-scores[row, :n], kind="stable"))


def test_bad_input_is_named(tokenizer):
    model = make_tiny_model(tokenizer)
    with pytest.raises(ValueError, match="Row 0 has no candidates"):
        generate_candidates(model, tokenizer, ["answer:"], [[]], show_progress=False)
    with pytest.raises(ValueError, match="Row 0: .*same token ids"):
        generate_candidates(model, tokenizer, ["answer:"], [["heat", " heat"]], show_progress=False)
    with pytest.raises(ValueError, match="same length"):
        generate_candidates(model, tokenizer, ["answer:"], [], show_progress=False)


def test_protocol_reports_valid_ratio_one_next_to_free_generation(tokenizer):
    model = make_tiny_model(tokenizer, seed=3)
    rows = [{"prompt": p, "candidates": c, "target": c[-1]} for p, c in zip(PROMPTS, CANDIDATES)]
    config = EvaluationConfig(
        protocols=["generation", "constrained_generation", "ranking"], max_new_tokens=4, show_progress=False
    )
    results = evaluate_recommender(model, tokenizer, rows, config, return_scores=True, bootstrap_resamples=50)
    assert results["constrained_generation/valid_ratio"] == 1.0
    assert results["generation/valid_ratio"] < 1.0  # a random model rarely spells a title when it is free
    outputs = results["constrained_generation/outputs"]
    hits = [out == row["target"] for out, row in zip(outputs, rows)]
    assert results["constrained_generation/hr@1"] == pytest.approx(np.mean(hits))
    assert len(results["constrained_generation/hr@1_ci"]) == 2
    assert "constrained_generation" not in EvaluationConfig().protocols  # opt-in: the defaults are unchanged


@pytest.mark.parametrize("features", ["item", "item+state"])
def test_item_tokens_are_injected_in_greedy_and_beam_search(features):
    from trl_dynamicpo.item_tokens import ItemEmbeddingTable

    tokenizer = make_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<item>"]})
    rng = np.random.default_rng(0)
    titles = ["heat", "fargo", "alien", "jaws", "up", "cars", "coco", "dune", "rocky", "psycho"]
    table = ItemEmbeddingTable(titles, rng.normal(size=(len(titles), 6)).astype(np.float32), source="test")
    model = item_model(tokenizer)
    attach_item_tokens(model, _projector(tokenizer, layer=1, features=features, seed=5))
    tokens = ItemTokens.for_model(model, table)
    prompts, candidates = [r["prompt"] for r in ITEM_ROWS], [r["candidates"] for r in ITEM_ROWS]
    states = _states() if features == "item+state" else None
    kwargs = {"item_tokens": tokens, "user_states": states, "show_progress": False}
    scores = score_candidates(model, tokenizer, prompts, candidates, **kwargs)
    plain = score_candidates(model, tokenizer, prompts, candidates, show_progress=False)
    assert not np.allclose(np.nan_to_num(scores), np.nan_to_num(plain))  # the vectors change the scores
    greedy = generate_candidates(model, tokenizer, prompts, candidates, batch_size=2, **kwargs)
    beams = generate_candidates(model, tokenizer, prompts, candidates, k=10, batch_size=2, **kwargs)
    for row, cands in enumerate(candidates):
        ((index, logp),) = greedy[row]
        assert logp == pytest.approx(scores[row, index], abs=1e-4)
        assert [i for i, _ in beams[row]] == list(np.argsort(-scores[row, : len(cands)], kind="stable"))
        np.testing.assert_allclose([s for _, s in beams[row]], np.sort(scores[row, : len(cands)])[::-1], atol=1e-4)
