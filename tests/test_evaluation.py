"""Tests of `trl_dynamicpo.evaluation` and the `recommendation_accuracy` metric module.

Metrics are checked against hand-computed values; the ranking protocol against a naive one-forward-per-candidate
scorer; the generation protocol with a scripted test double (known outputs) and with a tiny random Llama.
"""

import json
import math

import numpy as np
import pytest
import torch

from trl_dynamicpo.data import tokenize_prompt_answers
from trl_dynamicpo.evaluation import (
    RECOMMENDATION_ACCURACY_PATH,
    EvaluationConfig,
    _truncate_prompt,
    baseline_metrics,
    evaluate_recommender,
    format_results_table,
    generate_answers,
    generation_metrics,
    match_candidates,
    normalize_title,
    popularity_metrics,
    ranking_metrics,
    save_results,
    score_candidates,
    target_indices,
)

from .testing_utils import make_tiny_model, make_tokenizer


ITEMS = {
    "item_id": ["1", "2", "3", "4", "5", "6"],
    "title": ["heat", "heat wave", "fargo", "alien", "jaws", "rocky"],
    "train_count": [100, 40, 30, 20, 2, 1],
    "popularity_rank": [1, 2, 3, 4, 5, 6],
    "popularity_group": ["head", "head", "mid", "mid", "tail", "tail"],
}


@pytest.fixture(scope="module")
def row_items(rows):
    """Item table over every title of `rows`: counts 2 * (number of titles) down to 2, head / mid / tail thirds."""
    titles = sorted({t for row in rows for t in row["candidates"]})
    n = len(titles)
    groups = ["head" if i < n // 3 else "mid" if i < 2 * n // 3 else "tail" for i in range(n)]
    return {"title": titles, "train_count": [2 * (n - i) for i in range(n)], "popularity_group": groups}


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def rows():
    prompts = [
        "user has watched heat fargo . choose from alien , jaws , rocky . answer:",
        "user watched toy story recently . predict the next movie . answer:",
        "history : titanic matrix jaws psycho vertigo casablanca . choose the next movie from the following . answer:",
        "user has watched up . answer:",
        "predict the next movie : star wars , dune , rush . answer:",
    ]
    candidates = [
        ["alien", "jaws", "rocky"],
        ["up", "cars", "coco", "brave", "frozen"],
        ["heat", "fargo", "star wars"],
        ["moana", "dune"],
        ["star wars", "dune", "rush", "drive"],
    ]
    targets = ["jaws", "coco", "star wars", "moana", "rush"]
    return [
        # The second row has only `chosen`: the target falls back to it.
        {"prompt": p, "candidates": c, **({"chosen": t} if i == 1 else {"target": t, "chosen": t})}
        for i, (p, c, t) in enumerate(zip(prompts, candidates, targets))
    ]


# ---------------------------------------------------------------------------------------------------------------
# Matching and generation metrics
# ---------------------------------------------------------------------------------------------------------------


class TestMatchCandidates:
    def test_exact_is_case_sensitive_substring(self):
        cands = ["Heat", "Fargo", "Alien"]
        assert match_candidates(" Fargo (1996)", cands) == [1]
        assert match_candidates(" fargo (1996)", cands) == []
        assert match_candidates("Fargo or Alien", cands) == [1, 2]

    def test_normalized_lowercases_and_collapses_whitespace(self):
        cands = ["Star  Wars (1977)", "Fargo"]
        assert normalize_title("  Star \n Wars  (1977) ") == "star wars (1977)"
        assert match_candidates(" STAR WARS (1977)\n", cands, mode="normalized") == [0]
        assert match_candidates(" STAR WARS (1977)\n", cands, mode="exact") == []

    def test_nested_titles_papers_rule_names_both(self):
        cands = ["Heat", "Heat Wave", "Fargo"]
        assert match_candidates(" Heat Wave", cands) == [0, 1]
        assert match_candidates(" Heat", cands) == [0]

    def test_nested_titles_strict_rule(self):
        cands = ["Heat", "Heat Wave", "Fargo"]
        assert match_candidates(" Heat Wave", cands, strict=True) == [1]
        # "Heat" also occurs on its own: both are named even under the strict rule.
        assert match_candidates("Heat or Heat Wave", cands, strict=True) == [0, 1]
        assert match_candidates("Heat Wave and Fargo", cands, strict=True) == [1, 2]

    def test_duplicate_and_empty_titles(self):
        assert match_candidates("Fargo", ["Fargo", "Heat", "Fargo"]) == [0]
        assert match_candidates("Fargo", ["", "Fargo"]) == [1]
        assert match_candidates("FARGO", ["fargo", "Fargo "], mode="normalized") == [0]

    def test_unknown_mode(self):
        with pytest.raises(ValueError, match="mode"):
            match_candidates("x", ["x"], mode="fuzzy")


class TestGenerationMetrics:
    cands = [["Heat", "Fargo", "Alien"]] * 5
    targets = ["Fargo"] * 5
    # target named / two candidates named / none named / other candidate named / target named in lower case
    outputs = [" Fargo (1996)", " Heat or Fargo", " nothing", " Alien", " fargo"]

    def test_exact(self):
        results = generation_metrics(self.outputs, self.cands, self.targets, mode="exact")
        assert results == {"hr@1": 1 / 5, "valid_ratio": 2 / 5, "hr@1_valid": 1 / 2, "num_samples": 5}

    def test_normalized(self):
        results = generation_metrics(self.outputs, self.cands, self.targets, mode="normalized")
        assert results == {"hr@1": 2 / 5, "valid_ratio": 3 / 5, "hr@1_valid": 2 / 3, "num_samples": 5}

    def test_normalized_compares_target_after_normalization(self):
        results = generation_metrics([" fargo"], [["Heat", "fargo "]], ["Fargo"], mode="normalized")
        assert results["hr@1"] == 1.0

    def test_strict_rule_makes_nested_output_valid(self):
        outputs, cands, targets = [" Heat Wave"], [["Heat", "Heat Wave"]], ["Heat Wave"]
        assert generation_metrics(outputs, cands, targets)["valid_ratio"] == 0.0
        assert generation_metrics(outputs, cands, targets, strict=True)["hr@1"] == 1.0

    def test_no_valid_output(self):
        results = generation_metrics(["?", "?"], [["a"], ["b"]], ["a", "b"])
        assert results["hr@1"] == 0.0 and results["valid_ratio"] == 0.0 and math.isnan(results["hr@1_valid"])

    def test_popularity_of_valid_outputs(self):
        cands = [["heat", "fargo", "jaws"]] * 4
        outputs = [" heat", " jaws", " heat and jaws", " jaws"]
        targets = ["heat", "jaws", "jaws", "fargo"]
        results = generation_metrics(outputs, cands, targets, item_table=ITEMS)
        # Valid outputs name heat, jaws, jaws (counts 100, 2, 2); prompts 2 and 3 have tail target jaws.
        assert results["arp"] == pytest.approx((100 + 2 + 2) / 3)
        assert results["head_share"] == pytest.approx(1 / 3)
        assert results["tail_share"] == pytest.approx(2 / 3)
        assert results["tail_hr@1"] == pytest.approx(1 / 2)
        assert results["coverage"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------------------------------
# Ranking, popularity, baselines
# ---------------------------------------------------------------------------------------------------------------


class TestRankingMetrics:
    def test_known_ranks(self):
        # Target ranks 1, 3, 6 (6 candidates each).
        scores = np.array(
            [
                [0.9, 0.1, 0.2, 0.3, 0.4, 0.5],
                [0.9, 0.8, 0.7, 0.1, 0.2, 0.3],
                [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
            ]
        )
        results = ranking_metrics(scores, [0, 2, 0], ks=(1, 5, 10))
        ndcg = [1.0, 1 / math.log2(4), 0.0]
        assert results["hr@1"] == pytest.approx(1 / 3)
        assert results["hr@5"] == pytest.approx(2 / 3)
        assert results["hr@10"] == pytest.approx(1.0)
        assert results["ndcg@5"] == pytest.approx(np.mean(ndcg))
        assert results["ndcg@10"] == pytest.approx(np.mean([1.0, 1 / math.log2(4), 1 / math.log2(7)]))
        assert results["mrr"] == pytest.approx(np.mean([1, 1 / 3, 1 / 6]))
        assert results["valid_ratio"] == 1.0 and results["num_samples"] == 3

    def test_ties_are_broken_by_prompt_order(self):
        scores = [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
        assert ranking_metrics(scores, [0, 2], ks=(1, 2))["mrr"] == pytest.approx((1 + 1 / 3) / 2)
        # A torch tensor is accepted too.
        assert ranking_metrics(torch.tensor(scores), [0, 2], ks=(1,))["hr@1"] == 0.5

    def test_ragged_rows_and_nan_padding(self):
        ragged = [[0.1, 0.5], [0.3, 0.2, 0.9]]
        padded = np.array([[0.1, 0.5, np.nan], [0.3, 0.2, 0.9]])
        assert ranking_metrics(ragged, [0, 1]) == ranking_metrics(padded, [0, 1])
        assert ranking_metrics(ragged, [0, 1])["mrr"] == pytest.approx((1 / 2 + 1 / 3) / 2)

    def test_invalid_targets(self):
        with pytest.raises(ValueError):
            ranking_metrics([[0.1, 0.5]], [2])
        with pytest.raises(ValueError, match="NaN"):
            ranking_metrics([[0.1, 0.5], [0.2]], [0, 1])
        with pytest.raises(ValueError, match="not among"):
            target_indices([["a", "b"]], ["c"])

    def test_popularity_of_top1(self):
        cands = [["heat", "fargo", "jaws"], ["alien", "rocky", "jaws"]]
        scores = [[0.1, 0.9, 0.5], [0.2, 0.1, 0.3]]  # top-1: fargo, jaws
        results = ranking_metrics(scores, target_indices(cands, ["fargo", "rocky"]), ITEMS, cands)
        assert results["arp"] == pytest.approx((30 + 2) / 2)
        assert results["head_share"] == 0.0
        assert results["tail_share"] == 0.5
        assert results["tail_hr@1"] == 0.0  # the only tail target (rocky) is missed
        assert results["coverage"] == pytest.approx(2 / 5)


class TestPopularityMetrics:
    def test_hand_computed(self):
        cands = [["heat", "jaws"], ["fargo", "rocky"], ["alien", "heat"]]
        predictions = ["heat", None, "heat"]
        targets = ["jaws", "rocky", "heat"]
        results = popularity_metrics(predictions, targets, cands, ITEMS)
        assert results == {
            "arp": 100.0,
            "head_share": 1.0,
            "tail_share": 0.0,
            "tail_hr@1": 0.0,
            "coverage": pytest.approx(1 / 5),
        }

    def test_empty_denominators_are_nan(self):
        results = popularity_metrics([None], ["heat"], [["heat", "fargo"]], ITEMS)
        assert all(math.isnan(results[k]) for k in ("arp", "head_share", "tail_share", "tail_hr@1"))
        assert results["coverage"] == 0.0

    def test_unknown_titles_are_skipped_and_logged(self, caplog):
        with caplog.at_level("WARNING", logger="trl_dynamicpo.evaluation"):
            results = popularity_metrics(
                ["heat", "mystery"], ["mystery", "jaws"], [["heat", "mystery", "jaws"]], ITEMS
            )
        assert "not in the item table" in caplog.text
        assert results["arp"] == 100.0  # the unknown recommendation has no count
        assert results["head_share"] == 0.5 and results["tail_hr@1"] == 0.0
        assert results["coverage"] == pytest.approx(2 / 3)

    def test_item_table_forms_agree(self):
        from datasets import Dataset

        args = (["jaws", "heat"], ["jaws", "fargo"], [["jaws", "heat"], ["fargo", "heat"]])
        expected = popularity_metrics(*args, ITEMS)
        row_dicts = [dict(zip(ITEMS, values)) for values in zip(*ITEMS.values())]
        assert popularity_metrics(*args, row_dicts) == expected
        assert popularity_metrics(*args, Dataset.from_dict(ITEMS)) == expected
        assert expected["tail_hr@1"] == 1.0 and expected["arp"] == 51.0


class TestBaselines:
    def test_popularity_baseline(self):
        rows = [
            {"candidates": ["jaws", "heat", "fargo"], "target": "heat"},  # picks heat: hit, rank 1
            {"candidates": ["rocky", "alien", "jaws"], "target": "jaws"},  # picks alien; jaws ranks 2
            {"candidates": ["fargo", "heat wave"], "chosen": "fargo"},  # picks heat wave; fargo ranks 2
        ]
        results = baseline_metrics(rows, ITEMS, ks=(1, 2))
        assert results["baseline_popularity/hr@1"] == pytest.approx(1 / 3)
        assert results["baseline_popularity/hr@2"] == 1.0
        assert results["baseline_popularity/mrr"] == pytest.approx((1 + 0.5 + 0.5) / 3)
        assert results["baseline_popularity/arp"] == pytest.approx((100 + 20 + 40) / 3)
        assert results["baseline_popularity/head_share"] == pytest.approx(2 / 3)
        assert results["baseline_popularity/tail_hr@1"] == 0.0  # jaws (tail) is never the most popular
        assert results["baseline_popularity/valid_ratio"] == 1.0

    def test_random_baseline_is_seeded_and_uniform(self):
        rows = [{"candidates": ["heat", "fargo", "alien", "jaws"], "target": "fargo"}] * 4000
        first = baseline_metrics(rows, seed=3)
        assert first == baseline_metrics(rows, seed=3)
        assert first != baseline_metrics(rows, seed=4)
        assert not any(k.startswith("baseline_popularity") for k in first)  # needs an item table
        assert first["baseline_random/hr@1"] == pytest.approx(0.25, abs=0.03)
        assert first["baseline_random/mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / 4, abs=0.03)
        with_items = baseline_metrics(rows, ITEMS, seed=3)
        assert with_items["baseline_random/hr@1"] == first["baseline_random/hr@1"]
        assert with_items["baseline_random/arp"] == pytest.approx((100 + 30 + 20 + 2) / 4, rel=0.05)


# ---------------------------------------------------------------------------------------------------------------
# Generation protocol with a scripted test double
# ---------------------------------------------------------------------------------------------------------------


class ScriptedLM(torch.nn.Module):
    """Test double: `generate` appends a scripted continuation chosen by the unpadded prompt ids."""

    def __init__(self, script, pad_token_id):
        super().__init__()
        self.script = script
        self.pad_token_id = pad_token_id
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def generate(self, input_ids, attention_mask, generation_config):
        self.calls.append({"input_ids": input_ids, "training": self.training, "config": generation_config})
        continuations = []
        for ids, mask in zip(input_ids, attention_mask):
            # Left padding: the real tokens are a suffix of the row.
            assert mask.tolist() == sorted(mask.tolist())
            continuations.append(self.script[tuple(ids[mask.bool()].tolist())])
        width = max(len(c) for c in continuations)
        new = torch.full((len(continuations), width), self.pad_token_id, dtype=torch.long)
        for row, continuation in enumerate(continuations):
            new[row, : len(continuation)] = torch.tensor(continuation)
        return torch.cat([input_ids, new], dim=1)


class TestGenerateAnswersScripted:
    def test_outputs_in_input_order_new_tokens_only(self, tokenizer, rows):
        prompts = [row["prompt"] for row in rows]
        answers = ["jaws", "coco brave", "star wars", "hello", "rush"]
        script = {
            tuple(tokenizer(p)["input_ids"]): tokenizer(a)["input_ids"] + [tokenizer.eos_token_id]
            for p, a in zip(prompts, answers)
        }
        model = ScriptedLM(script, tokenizer.pad_token_id)
        model.train()
        outputs = generate_answers(model, tokenizer, prompts, batch_size=2, max_new_tokens=7, show_progress=False)
        assert outputs == answers
        assert len(model.calls) == 3
        assert all(not call["training"] for call in model.calls)
        config = model.calls[0]["config"]
        assert config.do_sample is False and config.max_new_tokens == 7 and config.num_beams == 1
        assert tokenizer.eos_token_id in config.eos_token_id
        assert model.training  # training mode restored
        assert tokenizer.padding_side == "right"  # tokenizer untouched

        metrics = generation_metrics(outputs, [r["candidates"] for r in rows], [r["chosen"] for r in rows])
        # jaws (hit), "coco brave" names two candidates, star wars (hit), hello (none), rush (hit).
        assert metrics["hr@1"] == pytest.approx(3 / 5) and metrics["valid_ratio"] == pytest.approx(3 / 5)

    def test_long_prompt_keeps_its_end(self, tokenizer):
        prompt = " ".join(["one two three four five"] * 6) + " . answer:"
        ids = tokenizer(prompt)["input_ids"]
        kept = tuple(ids[-8:])
        model = ScriptedLM({kept: tokenizer("heat")["input_ids"]}, tokenizer.pad_token_id)
        assert generate_answers(model, tokenizer, [prompt], max_prompt_length=8, show_progress=False) == ["heat"]
        assert tokenizer.decode(model.calls[0]["input_ids"][0, -2:]) == ". answer:"

    def test_truncation_keeps_bos(self):
        assert _truncate_prompt([1, 5, 6, 7, 8], 3, bos_token_id=1) == [1, 7, 8]
        assert _truncate_prompt([5, 6, 7, 8], 3, bos_token_id=1) == [6, 7, 8]
        assert _truncate_prompt([1, 5], 3, bos_token_id=1) == [1, 5]


# ---------------------------------------------------------------------------------------------------------------
# Tiny random Llama: generation padding, ranking vs naive scorer, end to end
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_tiny_model(tokenizer, seed=0)


def naive_scores(model, tokenizer, prompt, candidates, score="sum"):
    """One plain forward per (prompt, candidate): log_softmax of the logits at the answer positions."""
    prompt_ids, answer_ids = tokenize_prompt_answers(tokenizer, prompt, candidates)
    values = []
    with torch.no_grad():
        for answer in answer_ids:
            ids = torch.tensor([prompt_ids + answer])
            logps = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
            token_logps = logps.gather(-1, ids[0, 1:, None])[:, 0][len(prompt_ids) - 1 :]
            values.append(token_logps.sum().item() / (len(answer) if score == "mean" else 1))
    return values


def test_generation_left_padding_matches_single_prompt(model, tokenizer, rows):
    prompts = [row["prompt"] for row in rows]
    batched = generate_answers(model, tokenizer, prompts, batch_size=5, max_new_tokens=6, show_progress=False)
    single = [generate_answers(model, tokenizer, [p], max_new_tokens=6, show_progress=False)[0] for p in prompts]
    assert batched == single
    assert all(isinstance(text, str) and len(text.split()) <= 6 for text in batched)
    assert len({len(tokenizer(p)["input_ids"]) for p in prompts}) > 1  # the batch really was padded


@pytest.mark.parametrize("score", ["sum", "mean"])
def test_ranking_matches_naive_scorer(model, tokenizer, rows, score):
    prompts = [row["prompt"] for row in rows]
    candidates = [row["candidates"] for row in rows]
    expected = [naive_scores(model, tokenizer, p, c, score) for p, c in zip(prompts, candidates)]
    scores = score_candidates(model, tokenizer, prompts, candidates, batch_size=2, score=score, show_progress=False)
    assert scores.shape == (5, 5)
    for row, values in enumerate(expected):
        np.testing.assert_allclose(scores[row, : len(values)], values, atol=1e-4, rtol=0)
        assert np.isnan(scores[row, len(values) :]).all()
    assert len({tuple(np.round(v, 3)) for v in expected}) == 5  # the scores really differ


def test_ranking_with_peft_model(tokenizer, rows):
    from peft import LoraConfig, get_peft_model

    base = make_tiny_model(tokenizer, seed=1)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    prompts, candidates = [rows[0]["prompt"]], [rows[0]["candidates"]]
    expected = naive_scores(peft_model, tokenizer, prompts[0], candidates[0])
    with peft_model.disable_adapter():
        without_lora = naive_scores(peft_model, tokenizer, prompts[0], candidates[0])
    scores = score_candidates(peft_model, tokenizer, prompts, candidates, show_progress=False)
    np.testing.assert_allclose(scores[0], expected, atol=1e-4, rtol=0)
    assert not np.allclose(expected, without_lora, atol=1e-3)  # the adapter matters
    outputs = generate_answers(peft_model, tokenizer, prompts, max_new_tokens=3, show_progress=False)
    assert len(outputs) == 1 and isinstance(outputs[0], str)


def test_evaluate_recommender_end_to_end(model, tokenizer, rows, row_items, tmp_path):
    model.train()
    results = evaluate_recommender(
        model,
        tokenizer,
        rows,
        item_table=row_items,
        max_new_tokens=5,
        batch_size=2,
        max_samples=4,
        show_progress=False,
    )
    assert model.training  # restored after evaluation
    model.eval()
    assert results["num_samples"] == 4 and results["match_mode"] == "exact" and results["score_mode"] == "sum"
    subset = rows[:4]
    prompts, candidates = [r["prompt"] for r in subset], [r["candidates"] for r in subset]
    targets = [r["chosen"] for r in subset]

    outputs = generate_answers(model, tokenizer, prompts, max_new_tokens=5, show_progress=False)
    generation = generation_metrics(outputs, candidates, targets, item_table=row_items)
    for name in ("hr@1", "valid_ratio", "arp", "head_share", "coverage"):
        assert results[f"generation/{name}"] == pytest.approx(generation[name], nan_ok=True)

    scores = score_candidates(model, tokenizer, prompts, candidates, show_progress=False)
    ranking = ranking_metrics(scores, target_indices(candidates, targets), row_items, candidates)
    for name in ("hr@1", "hr@5", "ndcg@5", "ndcg@10", "mrr", "arp", "head_share", "tail_hr@1", "coverage"):
        assert results[f"ranking/{name}"] == pytest.approx(ranking[name], nan_ok=True)

    baselines = baseline_metrics(subset, row_items, seed=0)
    assert {k: v for k, v in results.items() if k.startswith("baseline_")} == pytest.approx(baselines, nan_ok=True)
    assert results["generation/runtime_s"] > 0 and results["ranking/runtime_s"] > 0

    # Reporting: strict JSON round trip and a markdown table with one row per protocol.
    path = save_results(results, tmp_path / "sub" / "results.json")
    loaded = json.loads(path.read_text())
    assert loaded.keys() == results.keys()
    for key, value in results.items():
        if isinstance(value, float) and math.isnan(value):
            assert loaded[key] is None
        else:
            assert loaded[key] == value
    table = format_results_table(results).splitlines()
    assert table[0].startswith("| protocol | hr@1 | valid_ratio |")
    assert [line.split(" | ")[0] for line in table[2:6]] == [
        "| generation",
        "| ranking",
        "| baseline_popularity",
        "| baseline_random",
    ]
    assert all(line.count("|") == table[0].count("|") for line in table[:6])
    assert table[-1].startswith("num_samples: 4, match_mode: exact")


def test_evaluate_recommender_single_protocol_on_dataset(model, tokenizer, rows):
    from dataclasses import asdict

    from datasets import Dataset

    dataset = Dataset.from_list([{**r, "target": r["chosen"]} for r in rows])
    config = EvaluationConfig(protocols=["ranking"], score="mean", baselines=False, show_progress=False)
    results = evaluate_recommender(model, tokenizer, dataset, **asdict(config))
    assert not any(k.startswith(("generation/", "baseline_")) for k in results)
    assert results["score_mode"] == "mean" and results["num_samples"] == 5


def test_evaluate_recommender_intervals_are_the_bootstrap_of_the_per_prompt_values(model, tokenizer, rows, row_items):
    from trl_dynamicpo.evaluation import baseline_scores, target_ranks
    from trl_dynamicpo.statistics import bootstrap_ci, hits_at, ndcg_at

    results = evaluate_recommender(
        model, tokenizer, rows, item_table=row_items, max_new_tokens=5, batch_size=2, show_progress=False,
        return_scores=True, bootstrap_resamples=200, seed=3,
    )  # fmt: skip
    candidates, targets = [r["candidates"] for r in rows], [r["chosen"] for r in rows]
    ranks = target_ranks(results["ranking/scores"], results["ranking/target_index"])
    assert results["ranking/hr@1_ci"] == list(bootstrap_ci(hits_at(ranks, 1), 200, seed=3)[1])
    assert results["ranking/ndcg@10_ci"] == list(bootstrap_ci(ndcg_at(ranks, 10), 200, seed=3)[1])
    target_index = [c.index(t) for c, t in zip(candidates, targets)]
    popularity = target_ranks(baseline_scores(candidates, row_items, seed=3)["popularity"], target_index)
    assert results["baseline_popularity/hr@1_ci"] == list(bootstrap_ci(hits_at(popularity, 1), 200, seed=3)[1])
    low, high = results["generation/hr@1_ci"]
    assert low <= results["generation/hr@1"] <= high
    assert len(results["generation/outputs"]) == len(rows)


def test_config_validation():
    with pytest.raises(ValueError, match="protocols"):
        EvaluationConfig(protocols=["beam"])
    with pytest.raises(ValueError, match="match"):
        EvaluationConfig(match="fuzzy")
    with pytest.raises(ValueError, match="score"):
        EvaluationConfig(score="max")
    assert EvaluationConfig(protocols="ranking").protocols == ["ranking"]


def test_format_results_table_values():
    table = format_results_table(
        {
            "ranking/hr@1": 0.5,
            "ranking/arp": 12.345,
            "baseline_random/hr@1": 0.05,
            "baseline_random/tail_hr@1": math.nan,
        }
    )
    assert table.splitlines() == [
        "| protocol | hr@1 | arp | tail_hr@1 |",
        "|---|---|---|---|",
        "| ranking | 0.5000 | 12.3 | - |",
        "| baseline_random | 0.0500 | - | n/a |",
    ]


# ---------------------------------------------------------------------------------------------------------------
# `evaluate` metric module
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("match", ["exact", "normalized"])
def test_evaluate_metric_module(match):
    import evaluate

    metric = evaluate.load(RECOMMENDATION_ACCURACY_PATH)
    outputs = [" Fargo (1996)", " Heat or Fargo", " nothing", " Alien", " fargo", " Heat Wave"]
    cands = [["Heat", "Fargo", "Alien"]] * 5 + [["Heat Wave", "Heat"]]
    targets = ["Fargo"] * 5 + ["Heat Wave"]
    expected = generation_metrics(outputs, cands, targets, mode=match)
    # Fed in two batches, as an evaluation loop would.
    metric.add_batch(predictions=outputs[:3], references=targets[:3], candidates=cands[:3])
    results = metric.compute(predictions=outputs[3:], references=targets[3:], candidates=cands[3:], match=match)
    assert results == {k: pytest.approx(expected[k]) for k in ("hr@1", "valid_ratio", "hr@1_valid")}
    strict = metric.compute(predictions=outputs, references=targets, candidates=cands, match=match, strict=True)
    assert strict["hr@1"] == pytest.approx(expected["hr@1"] + 1 / 6)
    single_file = evaluate.load(f"{RECOMMENDATION_ACCURACY_PATH}/recommendation_accuracy.py")
    assert single_file.compute(predictions=[" Alien"], references=["Alien"], candidates=[["Alien"]])["hr@1"] == 1.0


def test_evaluate_recommender_reports_the_teacher_baseline_of_the_rows(model, tokenizer, rows):
    from datasets import Dataset

    # A teacher that puts the target first on the first 3 of the 4 evaluated rows and last on the 4th.
    scored = []
    for i, row in enumerate(rows):
        target = row["candidates"].index(row["chosen"])
        scores = [0.5] * len(row["candidates"])
        scores[target] = 0.9 if i < 3 else 0.1
        scored.append({**row, "target": row["chosen"], "candidate_scores": scores})
    results = evaluate_recommender(
        model, tokenizer, Dataset.from_list(scored), protocols=["ranking"], max_samples=4, show_progress=False,
        bootstrap_resamples=100,
    )  # fmt: skip
    assert results["baseline_sasrec/hr@1"] == pytest.approx(3 / 4)
    assert results["baseline_sasrec/hr@1_ci"][0] <= 0.75 <= results["baseline_sasrec/hr@1_ci"][1]
    assert results["baseline_sasrec/hr@1"] == baseline_metrics(scored[:4])["baseline_sasrec/hr@1"]
    # Rows without teacher scores: no teacher row.
    plain = evaluate_recommender(model, tokenizer, rows, protocols=["ranking"], max_samples=4, show_progress=False)
    assert not any(k.startswith("baseline_sasrec") for k in plain)


# ---------------------------------------------------------------------------------------------------------------
# One `EvaluationConfig` per call, per-protocol sample counts, the package's names
# ---------------------------------------------------------------------------------------------------------------


def _without_runtimes(results):
    return {k: v for k, v in results.items() if not k.endswith("runtime_s")}


def test_evaluate_recommender_takes_one_config_with_per_protocol_counts(model, tokenizer, rows, row_items):
    config = EvaluationConfig(
        max_new_tokens=5, batch_size=2, max_samples=4, generation_max_samples=2, show_progress=False
    )
    results = evaluate_recommender(model, tokenizer, rows, config, item_table=row_items)
    assert results["generation/num_samples"] == 2 and results["ranking/num_samples"] == 4
    assert results["num_samples"] == 4 and results["baseline_random/num_samples"] == 4  # the ranking rows
    # The same numbers as one keyword-style call per protocol on its own rows.
    common = dict(item_table=row_items, max_new_tokens=5, batch_size=2, show_progress=False)
    generation = evaluate_recommender(model, tokenizer, rows, protocols=["generation"], max_samples=2, **common)
    ranking = evaluate_recommender(model, tokenizer, rows, protocols=["ranking"], max_samples=4, **common)
    expected = {**_without_runtimes(ranking), **{k: v for k, v in generation.items() if k.startswith("generation/")}}
    assert _without_runtimes(results) == pytest.approx(_without_runtimes(expected), nan_ok=True)
    assert list(results)[:4] == ["num_samples", "match_mode", "match_strict", "score_mode"]  # as before
    assert config.protocols == ["generation", "ranking"] and config.max_samples == 4  # the config is not changed

    # Keyword settings on top of a config; `ranking_max_samples` also sets the baselines' rows.
    alone = evaluate_recommender(model, tokenizer, rows, config, protocols=["ranking"], ranking_max_samples=3)
    assert alone["num_samples"] == alone["ranking/num_samples"] == alone["baseline_random/num_samples"] == 3
    assert not any(k.startswith("generation/") for k in alone)
    # The generation protocol alone: `num_samples` and the baselines follow its rows.
    generated = evaluate_recommender(model, tokenizer, rows, config, protocols=["generation"], item_table=row_items)
    assert generated["num_samples"] == generated["baseline_popularity/num_samples"] == 2
    assert _without_runtimes(generated) == pytest.approx(_without_runtimes(generation), nan_ok=True)


def test_evaluate_recommender_refuses_unknown_settings(model, tokenizer, rows):
    with pytest.raises(TypeError, match=r"'max_sample' \(did you mean 'max_samples'\?\), 'colour';"):
        evaluate_recommender(model, tokenizer, rows, max_sample=2, colour="red")
    with pytest.raises(TypeError, match="must be an `EvaluationConfig`, got dict"):
        evaluate_recommender(model, tokenizer, rows, {"max_samples": 2})


def test_config_per_protocol_counts_and_validation():
    config = EvaluationConfig(max_samples=10, ranking_max_samples=20)
    assert config.max_samples_for("generation") == 10 and config.max_samples_for("ranking") == 20
    assert EvaluationConfig().max_samples_for("ranking") is None
    with pytest.raises(ValueError, match="protocol"):
        config.max_samples_for("beam")
    for name in ("max_samples", "generation_max_samples", "ranking_max_samples"):
        with pytest.raises(ValueError, match=f"`{name}` must be positive or None."):
            EvaluationConfig(**{name: 0})
    with pytest.raises(ValueError, match="bootstrap_resamples"):
        EvaluationConfig(bootstrap_resamples=-1)
    assert EvaluationConfig.from_settings(config) is config
    assert EvaluationConfig.from_settings(config, seed=3).seed == 3 and config.seed == 0
    with pytest.raises(ValueError, match="score"):
        EvaluationConfig.from_settings(config, score="max")  # a replaced field is checked again


def test_package_keeps_every_name_of_the_old_module():
    import trl_dynamicpo.evaluation as evaluation
    from trl_dynamicpo.evaluation import inference, metrics, report

    for name in (*evaluation.__all__, "_jsonable", "_truncate_prompt", "_as_lookup", "_ItemLookup", "_pad_scores",
                 "_teacher_scores", "_rows", "_head"):  # fmt: skip
        assert hasattr(evaluation, name), name
    assert evaluation._jsonable is report.jsonable is evaluation.jsonable
    assert evaluation._truncate_prompt is inference._truncate_prompt and evaluation._rows is metrics._rows
    assert evaluation.jsonable([np.float32(0.5), math.inf, {1: np.int64(2)}]) == [0.5, None, {"1": 2}]
