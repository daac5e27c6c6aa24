"""Evaluation of LLM recommenders: the papers' generation protocol, a faster ranking protocol, popularity metrics.

Two protocols are offered on the same rows (`prompt`, `candidates`, `target` / `chosen`, see the data row format):

- **generation** (the protocol of S-DPO, DynamicPO and NAPO): greedy decoding of at most 20 new tokens, then
  substring matching of the 20 candidate titles in the output. `valid_ratio` is the share of prompts whose output
  names exactly one candidate, `hr@1` the share of *all* prompts whose output names exactly one candidate and that
  candidate is the target (`hr@1_valid` divides by the valid prompts instead, as LLaRA's script does).
- **ranking**: every candidate is scored by the summed (or length-normalized) log-probability of its tokens after
  the prompt, all 20 candidates of a prompt in one packed forward pass (`trl_dynamicpo.packing`), then ranked.
  This gives HR@k, NDCG@k and MRR, always names exactly one candidate, and is several times faster than decoding.

Both protocols can report popularity-bias metrics when an item table (`title`, `train_count`, `popularity_group`)
is given, and two baselines (most popular candidate, seeded random candidate) are reported as their own rows so
that every results table shows its floor.

Example:

```python
from trl_dynamicpo.evaluation import evaluate_recommender, format_results_table

results = evaluate_recommender(model, tokenizer, dataset["test"], item_table=items, max_samples=200)
print(format_results_table(results))
```
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


logger = logging.getLogger(__name__)

MATCH_MODES = ("exact", "normalized")
SCORE_MODES = ("sum", "mean")
PROTOCOLS = ("generation", "ranking")

#: Folder of the `evaluate` metric module: `evaluate.load(RECOMMENDATION_ACCURACY_PATH)` works offline.
RECOMMENDATION_ACCURACY_PATH = str(Path(__file__).resolve().parent / "metrics" / "recommendation_accuracy")

# Column order of `format_results_table`; metrics not listed here are appended in alphabetical order.
_TABLE_COLUMNS = (
    "hr@1",
    "valid_ratio",
    "hr@1_valid",
    "hr@5",
    "hr@10",
    "ndcg@5",
    "ndcg@10",
    "mrr",
    "arp",
    "head_share",
    "tail_share",
    "tail_hr@1",
    "coverage",
    "runtime_s",
)
_TABLE_ROWS = ("generation", "ranking", "baseline_popularity", "baseline_random")


@dataclass
class EvaluationConfig:
    """Settings of [`evaluate_recommender`]; `evaluate_recommender(model, tokenizer, ds, **asdict(config))` works.

    The defaults follow the papers' evaluation script (greedy decoding, 20 new tokens, 1024 prompt tokens,
    case-sensitive substring matching).
    """

    protocols: list[str] = field(
        default_factory=lambda: list(PROTOCOLS),
        metadata={"help": "Protocols to run, any of 'generation' (papers' greedy decoding) and 'ranking' (packed)."},
    )
    match: str = field(
        default="exact",
        metadata={
            "help": "Title matching of the generation protocol: 'exact' (case-sensitive substring, as S-DPO's code) "
            "or 'normalized' (lower-cased, whitespace-collapsed and stripped on both sides, as LLaRA's code)."
        },
    )
    strict_match: bool = field(
        default=False,
        metadata={
            "help": "Stricter matching: a candidate whose every occurrence lies inside the occurrence of a longer "
            "named candidate (e.g. 'Heat' inside 'Heat Wave') is not counted. Off by default (papers' rule)."
        },
    )
    max_new_tokens: int = field(default=20, metadata={"help": "Maximum number of generated tokens (papers: 20)."})
    max_prompt_length: int = field(
        default=1024,
        metadata={
            "help": "Prompts longer than this many tokens keep their END (and a leading BOS), so 'Answer:' stays."
        },
    )
    batch_size: int = field(default=8, metadata={"help": "Prompts per `generate` call / per packed forward."})
    max_samples: int | None = field(
        default=None, metadata={"help": "Evaluate only the first `max_samples` rows (deterministic)."}
    )
    score: str = field(
        default="sum",
        metadata={"help": "Ranking score: 'sum' of the answer's token log-probs or their 'mean' (length-normalized)."},
    )
    separator: str = field(
        default=" ", metadata={"help": "Text between the prompt and an answer when scoring (same as the trainer)."}
    )
    add_eos: bool = field(
        default=True, metadata={"help": "Score the EOS token after each candidate title (same as the trainer)."}
    )
    baselines: bool = field(
        default=True,
        metadata={"help": "Also report the random baseline and, with an item table, the popularity baseline."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the random baseline."})
    show_progress: bool = field(default=True, metadata={"help": "Show tqdm progress bars."})

    def __post_init__(self):
        if isinstance(self.protocols, str):
            self.protocols = [self.protocols]
        self.protocols = list(self.protocols)
        unknown = set(self.protocols) - set(PROTOCOLS)
        if unknown:
            raise ValueError(f"Unknown protocols {sorted(unknown)}; choose from {PROTOCOLS}.")
        _check_choice("match", self.match, MATCH_MODES)
        _check_choice("score", self.score, SCORE_MODES)
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.max_prompt_length < 1:
            raise ValueError("`max_new_tokens`, `batch_size` and `max_prompt_length` must be positive.")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError("`max_samples` must be positive or None.")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}.")


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
    lower-case + strip, plus whitespace collapsing).

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
        mode (`str`, defaults to `"exact"`): `"exact"` or `"normalized"`.
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
    ```
    """
    _check_choice("mode", mode, MATCH_MODES)
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


# --------------------------------------------------------------------------------------------------------------------
# Model side: tokenization, generation, packed scoring
# --------------------------------------------------------------------------------------------------------------------


def _tokenize(tokenizer, prompt, answers: Sequence[str], separator: str = " ", add_eos: bool = True):
    """Prompt ids and answer ids exactly as the trainer builds them, so that scores are the trainer's log-probs.

    Conversational prompts (lists of messages) get each title as an assistant message.
    """
    from .data import tokenize_prompt_answers

    if not isinstance(prompt, str):
        answers = [[{"role": "assistant", "content": a}] for a in answers]
    prompt_ids, answer_ids = tokenize_prompt_answers(
        tokenizer, prompt, list(answers), separator=separator, add_eos=add_eos
    )
    return list(prompt_ids), [list(a) for a in answer_ids]


def _truncate_prompt(ids: list[int], max_length: int, bos_token_id: int | None) -> list[int]:
    """Keep the END of a too-long prompt (where "Answer:" is), and its leading BOS if it had one."""
    if len(ids) <= max_length:
        return ids
    if bos_token_id is not None and ids and ids[0] == bos_token_id and max_length > 1:
        return [ids[0], *ids[len(ids) - max_length + 1 :]]
    return ids[len(ids) - max_length :]


def _pad_token_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    raise ValueError("The tokenizer has neither a pad nor an EOS token.")


def _model_device(model):
    device = getattr(model, "device", None)
    if device is not None:
        return device
    return next(model.parameters()).device


@contextlib.contextmanager
def _inference(model, tokenizer):
    """`model.eval()` + `torch.no_grad()`; restores the model's training mode and the tokenizer's padding side."""
    import torch

    was_training = getattr(model, "training", False)
    padding_side = getattr(tokenizer, "padding_side", None)
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            model.train()
        if padding_side is not None:
            tokenizer.padding_side = padding_side


def _batches(order: Sequence[int], batch_size: int) -> list[list[int]]:
    return [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]


def _progress(iterable, total: int, desc: str, show: bool):
    if not show:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc)


def generate_answers(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 20,
    batch_size: int = 8,
    max_prompt_length: int = 1024,
    show_progress: bool = True,
) -> list[str]:
    """Greedy answers of a causal LM to plain-text prompts (the papers' generation protocol).

    Prompts are tokenized like the trainer does, truncated to their last `max_prompt_length` tokens (the papers
    truncate to 1024 tokens; keeping the end keeps "Answer:"; a leading BOS is kept), sorted by length so that a batch
    wastes little padding, left-padded and passed to `model.generate(do_sample=False, num_beams=1)`. Settings of
    `model.generation_config` that do not conflict (e.g. `repetition_penalty`) still apply, as in the papers' script.
    Generation stops at the tokenizer's or the model's EOS. Only the new tokens are decoded, special tokens skipped.

    Args:
        model: A causal LM (`PreTrainedModel` or `PeftModel`).
        tokenizer: Its tokenizer (needs a pad or EOS token). It is not modified.
        prompts (`Sequence`): Plain-text prompts (or lists of chat messages, rendered with the chat template).
        max_new_tokens (`int`, defaults to `20`): Maximum number of generated tokens.
        batch_size (`int`, defaults to `8`): Prompts per `generate` call.
        max_prompt_length (`int`, defaults to `1024`): Prompt token budget.
        show_progress (`bool`, defaults to `True`): Show a tqdm bar.

    Returns:
        `list[str]`: The decoded new text of each prompt, in input order.

    Example:

    ```python
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
    model = AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
    generate_answers(model, tokenizer, ["Choose one of: Heat, Fargo. Answer:"], max_new_tokens=5)
    ```
    """
    import torch
    from transformers import GenerationConfig

    pad_id = _pad_token_id(tokenizer)
    prompt_ids = [
        _truncate_prompt(_tokenize(tokenizer, p, [])[0], max_prompt_length, tokenizer.bos_token_id) for p in prompts
    ]
    eos_ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    model_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos_ids |= set(model_eos if isinstance(model_eos, list) else [model_eos]) - {None}
    generation_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_id,
        eos_token_id=sorted(eos_ids) or None,
    )
    device = _model_device(model)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompt_ids[i]))  # longest first: OOM shows up at once
    answers: list[str] = [""] * len(prompts)
    batches = _batches(order, batch_size)
    with _inference(model, tokenizer):
        for batch in _progress(batches, len(batches), "generation", show_progress):
            width = max(len(prompt_ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):  # left padding: every prompt ends where generation starts
                ids = prompt_ids[i]
                input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention_mask[row, width - len(ids) :] = 1
            output = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=generation_config,
            )
            texts = tokenizer.batch_decode(output[:, width:].tolist(), skip_special_tokens=True)
            for i, text in zip(batch, texts):
                answers[i] = text
    return answers


def score_candidates(
    model,
    tokenizer,
    prompts: Sequence[str],
    candidates: Sequence[Sequence[str]],
    *,
    batch_size: int = 8,
    score: str = "sum",
    max_prompt_length: int = 1024,
    separator: str = " ",
    add_eos: bool = True,
    show_progress: bool = True,
    trunk_cache=None,
) -> np.ndarray:
    """Log-probability of every candidate title after its prompt, one packed forward per batch of prompts.

    Each prompt is encoded once and all its candidates are attached as answers ([`trl_dynamicpo.packing`]), with the
    trainer's tokenization (answer = separator + title + EOS), so the scores are the trainer's `s(y)`.

    Args:
        model: A causal LM (`PreTrainedModel` or `PeftModel`); the fused LM head of TRL is added if missing.
        tokenizer: Its tokenizer.
        prompts (`Sequence`): Plain-text prompts (or lists of chat messages; titles then become assistant messages).
        candidates (`Sequence[Sequence[str]]`): Candidate titles per prompt.
        batch_size (`int`, defaults to `8`): Prompts per forward pass.
        score (`str`, defaults to `"sum"`): `"sum"` of the answer's token log-probs, or `"mean"` (divided by the
            number of answer tokens, EOS included).
        max_prompt_length (`int`, defaults to `1024`): Prompt token budget (the end of the prompt is kept).
        separator (`str`, defaults to `" "`): Text between prompt and answer.
        add_eos (`bool`, defaults to `True`): Score the EOS token after the title.
        show_progress (`bool`, defaults to `True`): Show a tqdm bar.
        trunk_cache ([`~trl_dynamicpo.trunk_cache.TrunkCache`], *optional*): Cached trunk states of these rows (row
            `i` of the cache = prompt `i`, built with the same tokenization): only the layers above the trunk run.
            Every prompt and candidate is checked against the cache first.

    Returns:
        `np.ndarray`: float64 [N, A_max] scores in candidate order; NaN where a prompt has fewer candidates.

    Example:

    ```python
    scores = score_candidates(model, tokenizer, ["Choose one of: Heat, Fargo. Answer:"], [["Heat", "Fargo"]])
    ranking_metrics(scores, [1])
    ```
    """
    _check_choice("score", score, SCORE_MODES)
    import torch

    from .packing import answer_logps, ensure_fused_lm_head, pack_answers

    if len(prompts) != len(candidates):
        raise ValueError("`prompts` and `candidates` must have the same length.")
    ensure_fused_lm_head(model)
    pad_id = _pad_token_id(tokenizer)
    prompt_ids, answer_ids = [], []
    for prompt, cands in zip(prompts, candidates):
        ids, answers = _tokenize(tokenizer, prompt, cands, separator=separator, add_eos=add_eos)
        prompt_ids.append(_truncate_prompt(list(ids), max_prompt_length, tokenizer.bos_token_id))
        answer_ids.append([list(a) for a in answers])
    width = max((len(c) for c in candidates), default=0)
    scores = np.full((len(prompts), width), np.nan)
    device = _model_device(model)
    cached = None
    if trunk_cache is not None:
        trunk_cache.check_model(model)
        cached = [
            trunk_cache.locate(
                i, prompt_ids[i], answer_ids[i], [f"candidates[{k}]" for k in range(len(answer_ids[i]))]
            )
            for i in range(len(prompts))
        ]
    cost = [len(p) + sum(len(a) for a in answers) for p, answers in zip(prompt_ids, answer_ids)]
    batches = _batches(sorted(range(len(prompts)), key=lambda i: -cost[i]), batch_size)
    with _inference(model, tokenizer):
        for batch in _progress(batches, len(batches), "ranking", show_progress):
            if cached is not None:
                packed = trunk_cache.batch(batch, [cached[i] for i in batch], pad_token_id=pad_id)
            else:
                packed = pack_answers(
                    [prompt_ids[i] for i in batch], [answer_ids[i] for i in batch], pad_token_id=pad_id
                )
            packed = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in packed.items()}
            logps = answer_logps(model, packed).double().cpu().numpy()
            for row, i in enumerate(batch):
                n = len(answer_ids[i])
                values = logps[row, :n]
                if score == "mean":
                    values = values / np.array([len(a) for a in answer_ids[i]], dtype=np.float64)
                scores[i, :n] = values
    return scores


# --------------------------------------------------------------------------------------------------------------------
# Entry point and reporting
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


def evaluate_recommender(
    model,
    tokenizer,
    dataset: Any,
    *,
    protocols: Sequence[str] = PROTOCOLS,
    item_table: Any = None,
    match: str = "exact",
    strict_match: bool = False,
    max_new_tokens: int = 20,
    max_prompt_length: int = 1024,
    batch_size: int = 8,
    max_samples: int | None = None,
    score: str = "sum",
    separator: str = " ",
    add_eos: bool = True,
    baselines: bool = True,
    seed: int = 0,
    show_progress: bool = True,
    trunk_cache=None,
    return_scores: bool = False,
    bootstrap_resamples: int = 0,
) -> dict[str, Any]:
    """Evaluate a recommender LM with the generation and/or ranking protocol, plus baselines.

    The arguments are those of [`EvaluationConfig`] (see there), so `evaluate_recommender(m, t, ds,
    **dataclasses.asdict(config))` works.

    Args:
        model: A causal LM (`PreTrainedModel` or `PeftModel`). Put in eval mode during evaluation, then restored.
        tokenizer: Its tokenizer.
        dataset: Rows with `prompt`, `candidates` and `target` (or `chosen`): `datasets.Dataset` or list of dicts.
        item_table (*optional*): Item table (`title`, `train_count`, `popularity_group`) for the popularity metrics
            and the popularity baseline.
        trunk_cache ([`~trl_dynamicpo.trunk_cache.TrunkCache`], *optional*): Cached trunk states of the evaluated
            rows, for the ranking protocol (see [`score_candidates`]).
        return_scores (`bool`, defaults to `False`): Also return the per-prompt results, for paired statistics:
            `ranking/scores` (`[N, A]` candidate scores), `ranking/target_index`, `generation/outputs`.
        bootstrap_resamples (`int`, defaults to `0`): With `> 0`, 95% percentile-bootstrap intervals over the
            prompts ([`~trl_dynamicpo.statistics.bootstrap_ci`]): `<row>/hr@1_ci` and `<row>/ndcg@10_ci` for the
            ranking protocol and the baselines, `generation/hr@1_ci`.

    Returns:
        `dict`: Flat results: `generation/hr@1`, `generation/valid_ratio`, `generation/hr@1_valid`,
        `ranking/hr@1`, `ranking/hr@5`, `ranking/ndcg@10`, `ranking/mrr`, ..., `<protocol>/runtime_s`,
        `baseline_popularity/...`, `baseline_random/...` and with an item table `<row>/arp`, `/head_share`,
        `/tail_share`, `/tail_hr@1`, `/coverage`; plus `num_samples`, `match_mode`, `match_strict`, `score_mode`.

    Example:

    ```python
    results = evaluate_recommender(model, tokenizer, dataset["test"], item_table=items, max_samples=100)
    print(format_results_table(results))
    save_results(results, "results/test.json")
    ```
    """
    config = EvaluationConfig(
        protocols=list(protocols),
        match=match,
        strict_match=strict_match,
        max_new_tokens=max_new_tokens,
        max_prompt_length=max_prompt_length,
        batch_size=batch_size,
        max_samples=max_samples,
        score=score,
        separator=separator,
        add_eos=add_eos,
        baselines=baselines,
        seed=seed,
        show_progress=show_progress,
    )
    prompts, candidates, targets = _rows(dataset, config.max_samples)
    lookup = _as_lookup(item_table)  # parsed once for all rows of the table
    results: dict[str, Any] = {
        "num_samples": len(prompts),
        "match_mode": config.match,
        "match_strict": config.strict_match,
        "score_mode": config.score,
    }
    if "generation" in config.protocols:
        start = time.perf_counter()
        outputs = generate_answers(
            model,
            tokenizer,
            prompts,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size,
            max_prompt_length=config.max_prompt_length,
            show_progress=config.show_progress,
        )
        runtime = time.perf_counter() - start
        metrics = generation_metrics(outputs, candidates, targets, config.match, lookup, strict=config.strict_match)
        results.update(_prefixed("generation", {**metrics, "runtime_s": runtime}))
        if return_scores:
            results["generation/outputs"] = outputs
        if bootstrap_resamples:
            from .statistics import bootstrap_ci

            hits = _generation_hits(outputs, candidates, targets, config.match, config.strict_match)[2]
            results["generation/hr@1_ci"] = list(bootstrap_ci(hits, bootstrap_resamples, seed=config.seed)[1])
    if "ranking" in config.protocols:
        start = time.perf_counter()
        scores = score_candidates(
            model,
            tokenizer,
            prompts,
            candidates,
            batch_size=config.batch_size,
            score=config.score,
            max_prompt_length=config.max_prompt_length,
            separator=config.separator,
            add_eos=config.add_eos,
            show_progress=config.show_progress,
            trunk_cache=trunk_cache,
        )
        runtime = time.perf_counter() - start
        target_index = target_indices(candidates, targets)
        metrics = ranking_metrics(scores, target_index, lookup, candidates)
        results.update(_prefixed("ranking", {**metrics, "runtime_s": runtime}))
        if return_scores:
            results["ranking/scores"] = scores
            results["ranking/target_index"] = target_index
        if bootstrap_resamples:
            results.update(_ranking_intervals("ranking", scores, target_index, bootstrap_resamples, config.seed))
    if config.baselines:
        # A teacher's `candidate_scores` (e.g. SASRec from the builder's `--teacher`) join popularity and random.
        teacher = _teacher_scores(_head(dataset, config.max_samples))
        rows = [{"candidates": c, "target": t} for c, t in zip(candidates, targets)]
        if teacher is not None:
            rows = [{**row, "candidate_scores": scores} for row, scores in zip(rows, teacher)]
        results.update(baseline_metrics(rows, lookup, seed=config.seed))
        if bootstrap_resamples:
            target_index = target_indices(candidates, targets)
            all_scores = baseline_scores(candidates, lookup, seed=config.seed, teacher_scores=teacher)
            for name, scores in all_scores.items():
                results.update(
                    _ranking_intervals(f"baseline_{name}", scores, target_index, bootstrap_resamples, config.seed)
                )
    return results


def _ranking_intervals(prefix: str, scores, target_index, resamples: int, seed: int) -> dict[str, list[float]]:
    from .statistics import bootstrap_ci, hits_at, ndcg_at

    ranks = target_ranks(scores, target_index)
    return {
        f"{prefix}/hr@1_ci": list(bootstrap_ci(hits_at(ranks, 1), resamples, seed=seed)[1]),
        f"{prefix}/ndcg@10_ci": list(bootstrap_ci(ndcg_at(ranks, 10), resamples, seed=seed)[1]),
    }


def _generation_hits(outputs, candidates, targets, mode: str, strict: bool):
    """(predicted index or -1, predicted title or None, per-prompt hit) of generated answers."""
    predicted = _predicted_indices(outputs, candidates, mode, strict)
    key = normalize_title if mode == "normalized" else (lambda title: title)
    predictions = [cands[p] if p >= 0 else None for cands, p in zip(candidates, predicted.tolist())]
    hits = np.array([pred is not None and key(pred) == key(t) for pred, t in zip(predictions, targets)])
    return predicted, predictions, hits


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN
    return value


def save_results(results: Mapping[str, Any], path: str | Path) -> Path:
    """Write results as strict JSON (NaN becomes `null`, NumPy scalars become Python numbers).

    Args:
        results (`Mapping[str, Any]`): E.g. the output of [`evaluate_recommender`].
        path (`str | Path`): Output file; parent folders are created.

    Returns:
        `Path`: The written file.

    Example:

    ```python
    >>> import tempfile, os
    >>> save_results({"ranking/hr@1": 0.25, "generation/tail_hr@1": float("nan")},
    ...              os.path.join(tempfile.mkdtemp(), "r.json")).read_text()
    '{\\n  "ranking/hr@1": 0.25,\\n  "generation/tail_hr@1": null\\n}'
    ```
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(results), indent=2, allow_nan=False))
    return path


def _format_value(name: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(value)
    if name in ("arp", "runtime_s"):
        return f"{float(value):.1f}"
    return f"{float(value):.4f}"


def format_results_table(results: Mapping[str, Any]) -> str:
    """Markdown table of flat results: one row per protocol / baseline, one column per metric.

    Keys `<row>/<metric>` become cells; rows appear in the order generation, ranking, baseline_popularity,
    baseline_random (then any other prefix); a metric a row lacks shows `-`, a NaN shows `n/a`. Keys without a `/`
    (`num_samples`, `match_mode`, ...) go to a line under the table.

    Args:
        results (`Mapping[str, Any]`): E.g. the output of [`evaluate_recommender`].

    Returns:
        `str`: The markdown text.

    Example:

    ```python
    >>> print(format_results_table({"ranking/hr@1": 0.5, "baseline_random/hr@1": 0.05, "num_samples": 20}))
    | protocol | hr@1 |
    |---|---|
    | ranking | 0.5000 |
    | baseline_random | 0.0500 |
    <BLANKLINE>
    num_samples: 20
    ```
    """
    table: dict[str, dict[str, Any]] = {}
    extra: dict[str, Any] = {}
    for key, value in results.items():
        if "/" in key:
            row, metric = key.split("/", 1)
            table.setdefault(row, {})[metric] = value
        else:
            extra[key] = value
    rows = [r for r in _TABLE_ROWS if r in table] + sorted(r for r in table if r not in _TABLE_ROWS)
    metrics = {m for cells in table.values() for m in cells}
    columns = [c for c in _TABLE_COLUMNS if c in metrics] + sorted(metrics - set(_TABLE_COLUMNS))
    lines = ["| protocol | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in rows:
        cells = [_format_value(c, table[row][c]) if c in table[row] else "-" for c in columns]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    if extra:
        lines += ["", ", ".join(f"{k}: {_format_value(k, v)}" for k, v in extra.items())]
    return "\n".join(lines)


__all__ = [
    "EvaluationConfig",
    "MATCH_MODES",
    "PROTOCOLS",
    "RECOMMENDATION_ACCURACY_PATH",
    "SCORE_MODES",
    "baseline_metrics",
    "evaluate_recommender",
    "format_results_table",
    "generate_answers",
    "generation_metrics",
    "match_candidates",
    "normalize_title",
    "popularity_metrics",
    "ranking_metrics",
    "save_results",
    "score_candidates",
    "target_indices",
]
