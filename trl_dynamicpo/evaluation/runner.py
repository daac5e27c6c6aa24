"""[`evaluate_recommender`]: the protocols of an [`EvaluationConfig`] and the baselines on the first rows of a dataset."""

from __future__ import annotations

import time
from typing import Any

from ..statistics import bootstrap_ci
from .config import EvaluationConfig
from .constrained import generate_candidates
from .inference import generate_answers, score_over_orders
from .metrics import (
    _as_lookup,
    _generation_hits,
    _head,
    _prefixed,
    _ranking_intervals,
    _rows,
    _teacher_scores,
    baseline_metrics,
    baseline_scores,
    generation_metrics,
    ranking_metrics,
    target_indices,
)


def evaluate_recommender(
    model,
    tokenizer,
    dataset: Any,
    config: EvaluationConfig | None = None,
    *,
    item_table: Any = None,
    trunk_cache=None,
    return_scores: bool = False,
    item_tokens=None,
    **settings: Any,
) -> dict[str, Any]:
    """Evaluate a recommender LM with the generation and/or ranking protocol, plus baselines.

    The settings are one [`EvaluationConfig`] (see there); its fields also work as keyword arguments, alone
    (`evaluate_recommender(m, t, ds, max_samples=100)`, `**dataclasses.asdict(config)`) or on top of `config`
    (`evaluate_recommender(m, t, ds, config, protocols=["ranking"])`).

    Each protocol runs on the first `config.max_samples_for(protocol)` rows (`generation_max_samples` /
    `ranking_max_samples`, else `max_samples`; constrained generation takes the generation protocol's count);
    `num_samples` and the baselines follow the ranking protocol's rows, or the first protocol's without ranking.
    `<protocol>/num_samples` gives each protocol's count.

    Args:
        model: A causal LM (`PreTrainedModel` or `PeftModel`). Put in eval mode during evaluation, then restored.
        tokenizer: Its tokenizer.
        dataset: Rows with `prompt`, `candidates` and `target` (or `chosen`): `datasets.Dataset` or list of dicts.
        config ([`EvaluationConfig`], *optional*): The settings; defaults to `EvaluationConfig()`.
        item_table (*optional*): Item table (`title`, `train_count`, `popularity_group`) for the popularity metrics
            and the popularity baseline.
        trunk_cache ([`~trl_dynamicpo.trunk_cache.TrunkCache`], *optional*): Cached trunk states of the evaluated
            rows, for the ranking protocol (see [`score_candidates`]).
        return_scores (`bool`, defaults to `False`): Also return the per-prompt results, for paired statistics:
            `ranking/scores` (`[N, A]` candidate scores), `ranking/target_index`, `generation/outputs`,
            `constrained_generation/outputs` (the answered titles).
        item_tokens ([`~trl_dynamicpo.item_tokens.ItemTokens`], *optional*): For a model with hybrid item tokens
            (`ItemTokens.for_model(model, table)`): every protocol marks the prompts and injects the projected
            vectors; with `features="item+state"` the rows' `embedding` column (the teacher's user state) is used.
        **settings: Fields of [`EvaluationConfig`] (e.g. `max_samples=100`, `bootstrap_resamples=1000`: 95%
            percentile-bootstrap intervals over the prompts, [`~trl_dynamicpo.statistics.bootstrap_ci`],
            `<row>/hr@1_ci` and `<row>/ndcg@10_ci` for the ranking protocol and the baselines, `generation/hr@1_ci`).

    Returns:
        `dict`: Flat results: `generation/hr@1`, `generation/valid_ratio`, `generation/hr@1_valid`,
        `constrained_generation/hr@1` and `/valid_ratio` (1.0 by construction, [`generate_candidates`]),
        `ranking/hr@1`, `ranking/hr@5`, `ranking/ndcg@10`, `ranking/mrr`, ..., `<protocol>/runtime_s`,
        `baseline_popularity/...`, `baseline_random/...` and with an item table `<row>/arp`, `/head_share`,
        `/tail_share`, `/tail_hr@1`, `/coverage`; plus `num_samples`, `match_mode`, `match_strict`, `score_mode`.

    Raises:
        TypeError: If a keyword argument is not a field of [`EvaluationConfig`] (the error names it).

    Example:

    ```python
    config = EvaluationConfig(max_samples=1000, generation_max_samples=100)
    results = evaluate_recommender(model, tokenizer, dataset["test"], config, item_table=items)
    print(format_results_table(results))
    save_results(results, "results/test.json")
    ```
    """
    config = EvaluationConfig.from_settings(config, **settings)
    # The rows of `num_samples` and of the baselines: the ranking protocol's, or a generation protocol's without it.
    main = "ranking" if "ranking" in config.protocols else config.protocols[0]
    counts = {protocol: config.max_samples_for(protocol) for protocol in {*config.protocols, main}}
    prompts, candidates, targets = _rows(dataset, None if None in counts.values() else max(counts.values()))
    lookup = _as_lookup(item_table)  # parsed once for all rows of the table

    states = _user_states(dataset, len(prompts), item_tokens)

    def first(protocol: str):
        count = counts[protocol]
        return prompts[:count], candidates[:count], targets[:count]

    def hybrid(protocol: str) -> dict[str, Any]:
        if item_tokens is None:
            return {}
        return {"item_tokens": item_tokens, "user_states": None if states is None else states[: counts[protocol]]}

    results: dict[str, Any] = {
        "num_samples": len(first(main)[0]),
        "match_mode": config.match,
        "match_strict": config.strict_match,
        "score_mode": config.score,
    }
    if "generation" in config.protocols:
        results.update(
            _generation(model, tokenizer, *first("generation"), lookup, config, return_scores, **hybrid("generation"))
        )
    if "constrained_generation" in config.protocols:
        rows = first("constrained_generation")
        results.update(
            _constrained_generation(
                model, tokenizer, *rows, lookup, config, return_scores, **hybrid("constrained_generation")
            )
        )
    if "ranking" in config.protocols:
        results.update(
            _ranking(
                model, tokenizer, *first("ranking"), lookup, config, trunk_cache, return_scores, **hybrid("ranking")
            )
        )
    if config.baselines:
        results.update(_baselines(_head(dataset, counts[main]), *first(main)[1:], lookup, config))
    return results


# The fields of `EvaluationConfig` that `generate_answers` / `score_candidates` take, as keyword arguments.
_GENERATION_SETTINGS = ("max_new_tokens", "batch_size", "max_prompt_length", "show_progress")
_RANKING_SETTINGS = ("batch_size", "score", "max_prompt_length", "separator", "add_eos", "show_progress")
_CONSTRAINED_SETTINGS = ("batch_size", "max_prompt_length", "separator", "show_progress")


def _timed(function, config: EvaluationConfig, settings: tuple[str, ...], *args, **kwargs) -> tuple[Any, float]:
    """`function(*args, **kwargs)` with the config's `settings` as keyword arguments, and its runtime in seconds."""
    start = time.perf_counter()
    value = function(*args, **{name: getattr(config, name) for name in settings}, **kwargs)
    return value, time.perf_counter() - start


def _user_states(dataset: Any, count: int, item_tokens) -> list | None:
    """The first `count` rows' teacher states (`embedding`), when hybrid item tokens need them."""
    if item_tokens is None or item_tokens.features == "item":
        return None
    rows = _head(dataset, count)
    names = rows.column_names if hasattr(rows, "column_names") else (rows[0].keys() if rows else ())
    if "embedding" not in names:
        raise ValueError(
            f"The model's item tokens use features {item_tokens.features!r}, which need each row's teacher state: "
            "the rows have no `embedding` column (build the dataset with a teacher)."
        )
    return list(rows["embedding"]) if hasattr(rows, "column_names") else [row["embedding"] for row in rows]


def _generation(
    model, tokenizer, prompts, candidates, targets, lookup, config, return_scores, **hybrid
) -> dict[str, Any]:
    outputs, runtime = _timed(generate_answers, config, _GENERATION_SETTINGS, model, tokenizer, prompts, **hybrid)
    metrics = generation_metrics(outputs, candidates, targets, config.match, lookup, strict=config.strict_match)
    results = _prefixed("generation", {**metrics, "runtime_s": runtime})
    if return_scores:
        results["generation/outputs"] = outputs
    if config.bootstrap_resamples:
        hits = _generation_hits(outputs, candidates, targets, config.match, config.strict_match)[2]
        results["generation/hr@1_ci"] = list(bootstrap_ci(hits, config.bootstrap_resamples, seed=config.seed)[1])
    return results


def _constrained_generation(model, tokenizer, prompts, candidates, targets, lookup, config, return_scores, **hybrid):
    """Greedy decoding restricted to each row's candidates; its answer is a title, matched as a whole ('title')."""
    answers, runtime = _timed(
        generate_candidates, config, _CONSTRAINED_SETTINGS, model, tokenizer, prompts, candidates, **hybrid
    )
    outputs = [cands[row[0][0]] for row, cands in zip(answers, candidates)]
    metrics = generation_metrics(outputs, candidates, targets, "title", lookup)
    results = _prefixed("constrained_generation", {**metrics, "runtime_s": runtime})
    if return_scores:
        results["constrained_generation/outputs"] = outputs
    if config.bootstrap_resamples:
        hits = _generation_hits(outputs, candidates, targets, "title", False)[2]
        interval = bootstrap_ci(hits, config.bootstrap_resamples, seed=config.seed)[1]
        results["constrained_generation/hr@1_ci"] = list(interval)
    return results


def _ranking(model, tokenizer, prompts, candidates, targets, lookup, config, trunk_cache, return_scores, **hybrid):
    # The trunk cache holds the prompts as built; a rotated prompt is another token sequence, scored in full.
    caches = [trunk_cache] + [None] * (config.candidate_orders - 1)
    per_order, runtime = _timed(
        score_over_orders, config, _RANKING_SETTINGS, model, tokenizer, prompts, candidates,
        config.candidate_orders, trunk_caches=caches, **hybrid,
    )  # fmt: skip
    scores = per_order.mean(axis=0)
    target_index = target_indices(candidates, targets)
    metrics = ranking_metrics(scores, target_index, lookup, candidates)
    results = _prefixed("ranking", {**metrics, "runtime_s": runtime})
    if return_scores:
        results["ranking/scores"] = scores
        results["ranking/target_index"] = target_index
    if config.bootstrap_resamples:
        results.update(_ranking_intervals("ranking", scores, target_index, config.bootstrap_resamples, config.seed))
    return results


def _baselines(rows, candidates, targets, lookup, config) -> dict[str, Any]:
    """Popularity, random and (with the rows' `candidate_scores`, e.g. SASRec from the builder's `--teacher`) teacher."""
    teacher = _teacher_scores(rows)
    scored = [{"candidates": c, "target": t} for c, t in zip(candidates, targets)]
    if teacher is not None:
        scored = [{**row, "candidate_scores": scores} for row, scores in zip(scored, teacher)]
    results = baseline_metrics(scored, lookup, seed=config.seed)
    if config.bootstrap_resamples:
        target_index = target_indices(candidates, targets)
        all_scores = baseline_scores(candidates, lookup, seed=config.seed, teacher_scores=teacher)
        for name, scores in all_scores.items():
            prefix = f"baseline_{name}"
            results.update(_ranking_intervals(prefix, scores, target_index, config.bootstrap_resamples, config.seed))
    return results
