"""Metrics of the two protocols, popularity metrics and baselines: pure functions of texts, titles and scores.

Nothing here runs a model: [`generation_metrics`] reads generated texts, [`ranking_metrics`] candidate scores (e.g. of
[`~trl_dynamicpo.evaluation.score_candidates`]), [`baseline_metrics`] only the rows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..statistics import bootstrap_ci, hits_at, ndcg_at
from .config import MATCH_MODES, _check_choice


logger = logging.getLogger(__name__)

#: Folder of the `evaluate` metric module: `evaluate.load(RECOMMENDATION_ACCURACY_PATH)` works offline.
RECOMMENDATION_ACCURACY_PATH = str(Path(__file__).resolve().parents[1] / "metrics" / "recommendation_accuracy")


# --------------------------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------------------------


def _head(dataset: Any, max_samples: int | None):
    """The first `max_samples` rows (all when None) of a `Dataset` or a sequence of row dicts."""
    if max_samples is None:
        return dataset
    if hasattr(dataset, "select"):
        return dataset.select(range(min(max_samples, len(dataset))))
    return list(dataset)[:max_samples]


def _rows(dataset: Any, max_samples: int | None = None, need_prompt: bool = True):
    """(prompts, candidates, targets) of the first `max_samples` rows; `target` falls back to `chosen`."""
    dataset = _head(dataset, max_samples)
    if hasattr(dataset, "column_names"):
        names = set(dataset.column_names)
        wanted = [c for c in ("prompt", "candidates", "target", "chosen") if c in names]
        columns = dataset.select_columns(wanted).to_dict()
        rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
    else:
        rows = list(dataset)
    if not rows:
        raise ValueError("The dataset is empty.")
    prompts = [row["prompt"] for row in rows] if need_prompt else None
    candidates = [list(row["candidates"]) for row in rows]
    targets = [row["target"] if row.get("target") is not None else row["chosen"] for row in rows]
    return prompts, candidates, targets


# --------------------------------------------------------------------------------------------------------------------
# Title matching (generation protocol)
# --------------------------------------------------------------------------------------------------------------------


def normalize_title(text: str) -> str:
    """Lower-case, collapse runs of whitespace to one space and strip (the `normalized` matching mode).

    Example:

    ```python
    >>> normalize_title("  The  Matrix\\n(1999) ")
    'the matrix (1999)'
    ```
    """
    return " ".join(text.lower().split())


def _occurrences(text: str, title: str) -> list[tuple[int, int]]:
    """All (start, end) spans of `title` in `text`, overlapping ones included."""
    spans, start = [], text.find(title)
    while start != -1:
        spans.append((start, start + len(title)))
        start = text.find(title, start + 1)
    return spans


def match_candidates(text: str, candidates: Sequence[str], mode: str = "exact", strict: bool = False) -> list[int]:
    """Indices of the candidates that an output text names.

    With `mode="exact"` a candidate is named when its title is a case-sensitive substring of `text` (the rule of
    S-DPO's evaluation code); with `mode="normalized"` both sides go through [`normalize_title`] first (LLaRA's
    lower-case + strip, plus whitespace collapsing); with `mode="title"` the whole output, stripped, must be the
    title (the rule of constrained generation, whose answers are exactly one candidate, [`generate_candidates`]).

    Caveat of the papers' substring rule: a title that is a substring of another candidate's title ("Heat" in
    "Heat Wave") is named whenever the longer one is, so such an output counts as naming two candidates (invalid).
    `strict=True` drops a candidate whose every occurrence lies inside an occurrence of a longer named candidate;
    an output that names "Heat" on its own as well ("Heat or Heat Wave") still names both.

    Candidates with identical (normalized) titles are reported once, at their first index: the model cannot tell
    them apart by name (the papers' code would count them twice and mark the output invalid). Empty titles never
    match.

    Args:
        text (`str`): The generated text (new tokens only).
        candidates (`Sequence[str]`): Candidate titles in prompt order.
        mode (`str`, defaults to `"exact"`): `"exact"`, `"normalized"` or `"title"`.
        strict (`bool`, defaults to `False`): Apply the longest-match rule described above.

    Returns:
        `list[int]`: Indices into `candidates`, increasing. The output is *valid* when exactly one index is returned.

    Example:

    ```python
    >>> match_candidates(" Heat Wave (1990)", ["Heat", "Heat Wave", "Fargo"])
    [0, 1]
    >>> match_candidates(" Heat Wave (1990)", ["Heat", "Heat Wave", "Fargo"], strict=True)
    [1]
    >>> match_candidates(" fargo", ["Heat", "Fargo"], mode="normalized")
    [1]
    >>> match_candidates(" Heat", ["Heat", "Heat Wave"], mode="title")
    [0]
    ```
    """
    _check_choice("mode", mode, MATCH_MODES)
    if mode == "title":  # the whole answer is one title: a title inside a longer one is not named
        text = text.strip()
        return next(([i] for i, title in enumerate(candidates) if title and title == text), [])
    if mode == "normalized":
        text = normalize_title(text)
        titles = [normalize_title(c) for c in candidates]
    else:
        titles = list(candidates)
    seen, matched = set(), []
    for index, title in enumerate(titles):
        if not title or title in seen:
            continue
        seen.add(title)
        if title in text:
            matched.append(index)
    if strict and len(matched) > 1:
        spans = {i: _occurrences(text, titles[i]) for i in matched}

        def covered(i: int, span: tuple[int, int]) -> bool:
            return any(
                len(titles[j]) > len(titles[i]) and start <= span[0] and span[1] <= end
                for j in matched
                for start, end in spans[j]
            )

        matched = [i for i in matched if not all(covered(i, span) for span in spans[i])]
    return matched


def _predicted_indices(
    outputs: Sequence[str], candidates: Sequence[Sequence[str]], mode: str, strict: bool
) -> np.ndarray:
    """Per prompt, the index of the single named candidate, or -1 when the output names zero or several."""
    predicted = np.full(len(outputs), -1, dtype=np.int64)
    for row, (text, cands) in enumerate(zip(outputs, candidates, strict=True)):
        named = match_candidates(text, cands, mode=mode, strict=strict)
        if len(named) == 1:
            predicted[row] = named[0]
    return predicted


def _generation_hits(outputs, candidates, targets, mode: str, strict: bool):
    """(predicted index or -1, predicted title or None, per-prompt hit) of generated answers."""
    predicted = _predicted_indices(outputs, candidates, mode, strict)
    key = normalize_title if mode == "normalized" else (lambda title: title)
    predictions = [cands[p] if p >= 0 else None for cands, p in zip(candidates, predicted.tolist())]
    hits = np.array([pred is not None and key(pred) == key(t) for pred, t in zip(predictions, targets)])
    return predicted, predictions, hits


def generation_metrics(
    outputs: Sequence[str],
    candidates: Sequence[Sequence[str]],
    targets: Sequence[str],
    mode: str = "exact",
    item_table: Any = None,
    strict: bool = False,
) -> dict[str, Any]:
    """HR@1 and ValidRatio of generated answers, as in the papers' evaluation script (plus popularity metrics).

    Args:
        outputs (`Sequence[str]`): Generated texts, one per prompt.
        candidates (`Sequence[Sequence[str]]`): Candidate titles of each prompt.
        targets (`Sequence[str]`): Target title of each prompt.
        mode (`str`, defaults to `"exact"`): Matching mode of [`match_candidates`]; `"normalized"` also compares the
            named candidate with the target after normalization.
        item_table (*optional*): Item table (see [`popularity_metrics`]); adds `arp`, `head_share`, `tail_share`,
            `tail_hr@1` and `coverage`, computed over the valid outputs' named candidates.
        strict (`bool`, defaults to `False`): Longest-match rule of [`match_candidates`].

    Returns:
        `dict`: `hr@1` (over all prompts), `valid_ratio`, `hr@1_valid` (over valid prompts, LLaRA's definition; NaN
        when no output is valid), `num_samples`, and the popularity metrics when `item_table` is given.

    Example:

    ```python
    >>> cands = [["Heat", "Fargo"], ["Heat", "Fargo"], ["Heat", "Fargo"]]
    >>> generation_metrics([" Fargo", " Heat and Fargo", " Heat"], cands, ["Fargo", "Fargo", "Fargo"])
    {'hr@1': 0.333..., 'valid_ratio': 0.666..., 'hr@1_valid': 0.5, 'num_samples': 3}
    ```
    """
    if not len(outputs) == len(candidates) == len(targets):
        raise ValueError("`outputs`, `candidates` and `targets` must have the same length.")
    if len(outputs) == 0:
        raise ValueError("Nothing to evaluate: `outputs` is empty.")
    predicted, predictions, hits = _generation_hits(outputs, candidates, targets, mode, strict)
    valid = predicted >= 0
    results = {
        "hr@1": float(hits.mean()),
        "valid_ratio": float(valid.mean()),
        "hr@1_valid": float(hits.sum() / valid.sum()) if valid.any() else math.nan,
        "num_samples": len(outputs),
    }
    if item_table is not None:
        results.update(popularity_metrics(predictions, targets, candidates, item_table, hits=hits))
    return results


# --------------------------------------------------------------------------------------------------------------------
# Ranking metrics
# --------------------------------------------------------------------------------------------------------------------


def _pad_scores(scores: Any) -> np.ndarray:
    """A float64 [N, A_max] array; ragged rows (lists of different lengths) are padded with NaN."""
    if hasattr(scores, "detach"):  # torch.Tensor
        scores = scores.detach().cpu().double().numpy()
    if isinstance(scores, np.ndarray):
        return scores.astype(np.float64)
    rows = [np.asarray(row, dtype=np.float64) for row in scores]
    width = max((len(row) for row in rows), default=0)
    padded = np.full((len(rows), width), np.nan)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
    return padded


def target_indices(candidates: Sequence[Sequence[str]], targets: Sequence[str]) -> np.ndarray:
    """Index of each target title among its prompt's candidates (first occurrence).

    Raises:
        ValueError: If a target is not among its candidates.

    Example:

    ```python
    >>> target_indices([["Heat", "Fargo"]], ["Fargo"]).tolist()
    [1]
    ```
    """
    indices = []
    for row, (cands, target) in enumerate(zip(candidates, targets, strict=True)):
        try:
            indices.append(list(cands).index(target))
        except ValueError:
            raise ValueError(f"Row {row}: target {target!r} is not among its candidates.") from None
    return np.asarray(indices, dtype=np.int64)


def target_ranks(scores: Any, target_index: Sequence[int] | np.ndarray) -> np.ndarray:
    """1-based rank of each prompt's target among its candidates (ties broken by prompt order), `[N]` int64.

    The per-prompt quantity behind HR@k (`rank <= k`), NDCG@k and MRR, e.g. for paired bootstrap statistics.

    Example:

    ```python
    >>> target_ranks([[0.1, 0.9, 0.5], [0.3, 0.3, 0.1]], [2, 1]).tolist()
    [2, 2]
    ```
    """
    scores = _pad_scores(scores)
    target_index = np.asarray(target_index, dtype=np.int64)
    n, width = scores.shape
    if n == 0 or target_index.shape != (n,):
        raise ValueError(f"Need one target index per score row, got {target_index.shape} for {n} rows.")
    if (target_index < 0).any() or (target_index >= width).any():
        raise ValueError("Every target index must point at one of its row's candidates.")
    target_score = scores[np.arange(n), target_index]
    if np.isnan(target_score).any():
        raise ValueError("A target has a NaN score (padding?).")
    column = np.arange(width)[None, :]
    higher = scores > target_score[:, None]  # NaN compares False: padding never outranks
    tied_before = (scores == target_score[:, None]) & (column < target_index[:, None])
    return 1 + higher.sum(axis=1) + tied_before.sum(axis=1)


def ranking_metrics(
    scores: Any,
    target_index: Sequence[int] | np.ndarray,
    item_table: Any = None,
    candidates: Sequence[Sequence[str]] | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, Any]:
    """HR@k, NDCG@k and MRR of candidate scores (higher is better), one relevant item per prompt.

    The rank of the target is `1 + #(candidates scoring strictly higher) + #(candidates scoring equally that come
    earlier in prompt order)`: ties are broken by prompt order, like a stable sort of the negated scores, so the
    result is deterministic. NaN scores mark padding (prompts with fewer candidates) and never outrank the target.
    With a single relevant item, NDCG@k = 1 / log2(rank + 1) if rank <= k else 0.

    Args:
        scores (`array-like`): [N, A] scores (NumPy array, tensor, or ragged list of lists).
        target_index (`Sequence[int]`): Index of the target among each prompt's candidates.
        item_table (*optional*): Item table, see [`popularity_metrics`]; needs `candidates`.
        candidates (`Sequence[Sequence[str]]`, *optional*): Candidate titles, for the popularity metrics of the top-1
            recommendations.
        ks (`Sequence[int]`, defaults to `(1, 5, 10)`): Cut-offs of HR@k and NDCG@k (NDCG@1 equals HR@1 and is
            not reported).

    Returns:
        `dict`: `hr@k` for each k, `ndcg@k` for each k > 1, `mrr`, `valid_ratio` (always 1.0: a ranking names one
        candidate), `num_samples`, and the popularity metrics when `item_table` is given.

    Example:

    ```python
    >>> ranking_metrics([[0.1, 0.9, 0.5], [0.3, 0.3, 0.1]], [2, 1], ks=(1, 2))
    {'hr@1': 0.0, 'hr@2': 1.0, 'ndcg@2': 0.63..., 'mrr': 0.5, 'valid_ratio': 1.0, 'num_samples': 2}
    ```
    """
    scores = _pad_scores(scores)
    target_index = np.asarray(target_index, dtype=np.int64)
    ranks = target_ranks(scores, target_index)
    n = len(ranks)

    results: dict[str, Any] = {}
    for k in ks:
        results[f"hr@{k}"] = float((ranks <= k).mean())
    for k in ks:
        if k > 1:
            results[f"ndcg@{k}"] = float(np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0).mean())
    results["mrr"] = float((1.0 / ranks).mean())
    results["valid_ratio"] = 1.0
    results["num_samples"] = n
    if item_table is not None:
        if candidates is None:
            raise ValueError("`candidates` are needed for the popularity metrics.")
        top = np.nanargmax(scores, axis=1)  # first maximum = the same tie-break as the ranks
        predictions = [cands[i] for cands, i in zip(candidates, top.tolist())]
        targets = [cands[i] for cands, i in zip(candidates, target_index.tolist())]
        results.update(popularity_metrics(predictions, targets, candidates, item_table, hits=ranks == 1))
    return results


def _ranking_intervals(prefix: str, scores, target_index, resamples: int, seed: int) -> dict[str, list[float]]:
    ranks = target_ranks(scores, target_index)
    return {
        f"{prefix}/hr@1_ci": list(bootstrap_ci(hits_at(ranks, 1), resamples, seed=seed)[1]),
        f"{prefix}/ndcg@10_ci": list(bootstrap_ci(ndcg_at(ranks, 10), resamples, seed=seed)[1]),
    }


# --------------------------------------------------------------------------------------------------------------------
# Popularity metrics and baselines
# --------------------------------------------------------------------------------------------------------------------


class _ItemLookup:
    """Title -> (train_count, popularity_group) from an item table in any of the accepted forms."""

    def __init__(self, item_table: Any):
        columns = _table_columns(item_table, ("title", "train_count", "popularity_group"))
        self.count: dict[str, float] = {}
        self.group: dict[str, str] = {}
        duplicates = 0
        for title, count, group in zip(columns["title"], columns["train_count"], columns["popularity_group"]):
            if title in self.count:  # e.g. two MovieLens items share a title: keep the first one
                duplicates += 1
                continue
            self.count[title] = float(count)
            self.group[title] = str(group)
        if duplicates:
            logger.warning("Item table: %d duplicate titles, the first row of each is used.", duplicates)

    def counts(self, titles: Iterable[str]) -> np.ndarray:
        return np.array([self.count.get(t, math.nan) for t in titles], dtype=np.float64)

    def groups(self, titles: Iterable[str]) -> np.ndarray:
        return np.array([self.group.get(t, "") for t in titles], dtype=object)


def _as_lookup(item_table: Any) -> _ItemLookup | None:
    if item_table is None or isinstance(item_table, _ItemLookup):
        return item_table
    return _ItemLookup(item_table)


def _table_columns(table: Any, names: Sequence[str]) -> dict[str, list]:
    """Columns `names` of a `datasets.Dataset`, a pandas DataFrame, a dict of columns or a list of row dicts."""
    if isinstance(table, Mapping):
        columns = table
    elif hasattr(table, "column_names"):  # datasets.Dataset
        columns = table.select_columns(list(names)).to_dict()
    elif hasattr(table, "columns") and hasattr(table, "to_dict"):  # pandas.DataFrame
        columns = table.to_dict("list")
    else:
        rows = list(table)
        columns = {name: [row[name] for row in rows] for name in names}
    missing = [name for name in names if name not in columns]
    if missing:
        raise ValueError(f"Item table lacks columns {missing}.")
    return {name: list(columns[name]) for name in names}


def popularity_metrics(
    predictions: Sequence[str | None],
    targets: Sequence[str],
    candidates: Sequence[Sequence[str]],
    item_table: Any,
    hits: Sequence[bool] | np.ndarray | None = None,
) -> dict[str, float]:
    """Popularity-bias metrics of top-1 recommendations.

    Args:
        predictions (`Sequence[str | None]`): Recommended title per prompt; `None` when there is none (an invalid
            generation). Only recommended items enter `arp`, `head_share`, `tail_share` and `coverage`.
        targets (`Sequence[str]`): Target title per prompt.
        candidates (`Sequence[Sequence[str]]`): Candidate titles per prompt (the denominator of `coverage`).
        item_table: Columns `title`, `train_count`, `popularity_group` ("head" | "mid" | "tail"), as a
            `datasets.Dataset`, pandas DataFrame, dict of columns or list of row dicts. Titles missing from the
            table count as unknown (NaN count, no group) and are logged.
        hits (`Sequence[bool]`, *optional*): Whether each prompt's recommendation is correct; defaults to
            `prediction == target`.

    Returns:
        `dict`:
        - `arp`: average `train_count` of the recommended items (Average Recommendation Popularity),
        - `head_share` / `tail_share`: share of the recommendations that are head / tail items,
        - `tail_hr@1`: HR@1 over the prompts whose target is a tail item (invalid outputs count as misses),
        - `coverage`: distinct recommended items / distinct items among all prompts' candidates.

        A metric with an empty denominator (no recommendation, no tail target) is NaN (`None` in saved JSON).

    Example:

    ```python
    >>> items = {"title": ["A", "B", "C"], "train_count": [50, 10, 1], "popularity_group": ["head", "mid", "tail"]}
    >>> popularity_metrics(["A", None], ["A", "C"], [["A", "B", "C"], ["A", "B", "C"]], items)
    {'arp': 50.0, 'head_share': 1.0, 'tail_share': 0.0, 'tail_hr@1': 0.0, 'coverage': 0.333...}
    ```
    """
    lookup = _as_lookup(item_table)
    if hits is None:
        hits = [p is not None and p == t for p, t in zip(predictions, targets)]
    hits = np.asarray(hits, dtype=bool)
    recommended = [p for p in predictions if p is not None]
    unknown = {t for t in (*recommended, *targets) if t not in lookup.count}
    if unknown:
        logger.warning("%d titles are not in the item table (e.g. %r).", len(unknown), sorted(unknown)[:3])
    counts = lookup.counts(recommended)
    groups = lookup.groups(recommended)
    tail_target = lookup.groups(targets) == "tail"
    catalogue = {title for cands in candidates for title in cands}
    return {
        "arp": float(np.nanmean(counts)) if np.isfinite(counts).any() else math.nan,
        "head_share": float((groups == "head").mean()) if recommended else math.nan,
        "tail_share": float((groups == "tail").mean()) if recommended else math.nan,
        "tail_hr@1": float(hits[tail_target].mean()) if tail_target.any() else math.nan,
        "coverage": len(set(recommended)) / len(catalogue) if catalogue else math.nan,
    }


def baseline_metrics(
    dataset: Any,
    item_table: Any = None,
    seed: int = 0,
    ks: Sequence[int] = (1, 5, 10),
    teacher_name: str = "sasrec",
) -> dict[str, Any]:
    """Floors of every results table: a popularity baseline, a seeded random baseline, and a teacher's scores.

    - `baseline_popularity`: ranks each prompt's candidates by `train_count` (ties by prompt order), so its top-1 is
      the most popular candidate; titles missing from the item table count 0 (never seen in training). Only with an
      item table.
    - `baseline_random`: ranks the candidates by seeded uniform noise, so its top-1 is a uniform pick (expected
      HR@1 = 1/20 with 20 candidates).
    - `baseline_sasrec` (`baseline_<teacher_name>`): ranks the candidates by the rows' `candidate_scores` column, the
      scores of a classical recommender trained on the train split (`dataset_builders/build.py --teacher sasrec`).
      Only when the rows have that column.

    All are scored with [`ranking_metrics`] (HR@k, NDCG@k, MRR, popularity metrics); they always name exactly one
    candidate, so their `valid_ratio` is 1.0.

    Args:
        dataset: Rows with `candidates` and `target` (or `chosen`), optionally `candidate_scores` (one finite number
            per candidate, in `candidates` order): a `datasets.Dataset` or a list of dicts.
        item_table (*optional*): Item table, see [`popularity_metrics`].
        seed (`int`, defaults to `0`): Seed of the random baseline.
        ks (`Sequence[int]`, defaults to `(1, 5, 10)`): Cut-offs of HR@k and NDCG@k.
        teacher_name (`str`, defaults to `"sasrec"`): Name of the row of the `candidate_scores` baseline.

    Returns:
        `dict`: Flat metrics prefixed by `baseline_popularity/`, `baseline_random/` and `baseline_sasrec/`.

    Raises:
        ValueError: If only some rows have `candidate_scores`, or a row's scores do not match its candidates (count)
            or are not finite.

    Example:

    ```python
    >>> rows = [{"candidates": ["A", "B", "C"], "target": "A"}, {"candidates": ["C", "B", "A"], "target": "B"}]
    >>> items = {"title": ["A", "B", "C"], "train_count": [50, 10, 1], "popularity_group": ["head", "mid", "tail"]}
    >>> baseline_metrics(rows, items)["baseline_popularity/hr@1"]
    0.5
    >>> rows[0]["candidate_scores"], rows[1]["candidate_scores"] = [0.9, 0.2, 0.1], [0.1, 0.8, 0.3]
    >>> baseline_metrics(rows)["baseline_sasrec/hr@1"]
    1.0
    ```
    """
    _, candidates, targets = _rows(dataset, need_prompt=False)
    target_index = target_indices(candidates, targets)
    lookup = _as_lookup(item_table)
    teacher_scores = _teacher_scores(dataset)
    results: dict[str, Any] = {}
    for name, scores in baseline_scores(
        candidates, lookup, seed=seed, teacher_scores=teacher_scores, teacher_name=teacher_name
    ).items():
        metrics = ranking_metrics(scores, target_index, lookup, candidates if lookup is not None else None, ks=ks)
        results.update(_prefixed(f"baseline_{name}", metrics))
    return results


def baseline_scores(
    candidates: Sequence[Sequence[str]],
    item_table: Any = None,
    seed: int = 0,
    teacher_scores: Sequence[Sequence[float]] | None = None,
    teacher_name: str = "sasrec",
) -> dict[str, Any]:
    """Candidate scores `[N, A]` of the baselines of [`baseline_metrics`]: `"popularity"` (with an item table: each
    candidate's `train_count`, 0 when unknown), `"random"` (seeded uniform noise) and, when `teacher_scores` (the rows'
    `candidate_scores`) are given, `teacher_name` (those scores, checked: one finite number per candidate); NaN marks
    padding.

    Per-prompt scores let the baselines enter paired statistics next to trained models ([`target_ranks`]).
    """
    width = max(len(c) for c in candidates)
    padding = np.array([[j >= len(c) for j in range(width)] for c in candidates])
    lookup = item_table if isinstance(item_table, _ItemLookup) else _as_lookup(item_table)
    out: dict[str, Any] = {}
    if lookup is not None:
        out["popularity"] = _pad_scores([np.nan_to_num(lookup.counts(c), nan=0.0) for c in candidates])
    noise = np.random.default_rng(seed).random((len(candidates), width))
    noise[padding] = np.nan
    out["random"] = noise
    if teacher_scores is not None:
        out[teacher_name] = _pad_scores(_checked_teacher_scores(teacher_scores, candidates))
    return out


def _teacher_scores(dataset: Any) -> list | None:
    """The rows' `candidate_scores` column (a teacher's scores), or None when the rows do not have it."""
    if hasattr(dataset, "column_names"):
        return dataset["candidate_scores"] if "candidate_scores" in dataset.column_names else None
    rows = list(dataset)
    present = [row.get("candidate_scores") is not None for row in rows]
    if not any(present):
        return None
    if not all(present):
        raise ValueError(
            f"Row {present.index(False)} has no `candidate_scores` while other rows have them: a teacher's scores "
            "must cover every row (or none)."
        )
    return [row["candidate_scores"] for row in rows]


def _checked_teacher_scores(scores: Sequence[Sequence[float]], candidates: Sequence[Sequence[str]]) -> list:
    if len(scores) != len(candidates):
        raise ValueError(f"`candidate_scores` has {len(scores)} rows for {len(candidates)} rows of candidates.")
    checked = []
    for row, (values, cands) in enumerate(zip(scores, candidates)):
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (len(cands),):
            raise ValueError(
                f"Row {row}: `candidate_scores` has {values.size} values for {len(cands)} candidates (one score per "
                "candidate, in `candidates` order)."
            )
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise ValueError(
                f"Row {row}: `candidate_scores[{bad[0]}]` is {float(values[bad[0]])!r}; a teacher's scores must be finite."
            )
        checked.append(values)
    return checked


def _prefixed(prefix: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{prefix}/{name}": value for name, value in metrics.items()}
