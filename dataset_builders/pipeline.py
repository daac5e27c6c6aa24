"""The one preprocessing pipeline shared by every dataset: raw interactions -> multi-negative preference dataset.

Steps (parameters in [`BuildConfig`]):

1. Items and interactions. Titles are whitespace-normalized; items without a title are dropped with their
   interactions; interactions naming an item absent from the item file are an error (or dropped, counted); optional
   rating filter; each user's first interaction with an item is kept (later repeats are dropped, counted); optional
   k-core. Titles shared by several kept items get a suffix `" [id <item_id>]"` on every item but the first in item-file
   order, so that a title names exactly one item.
2. Sequences. Each user's interactions sorted by (timestamp, line in the raw file); every interaction with at least
   `min_history` earlier ones is a row: target = that interaction, history = up to `max_history` items just before it.
3. Split. `time`: rows sorted by (target timestamp, line), cut at `split_ratios` (8:1:1), so
   max train timestamp <= min validation timestamp <= max validation timestamp <= min test timestamp.
   `leave-last-out`: each user's last row is test and the one before is validation.
4. Candidates. The target plus `num_candidates - 1` distinct negatives drawn uniformly (or popularity-weighted) from
   the items outside the row's history and target, the target placed at a uniform random position; the RNG of a row is
   `numpy.random.default_rng((seed, hash(user_id), position of the target in the user's sequence))`, so a row does not
   depend on any other row and the same seed gives byte-identical Parquet files.
5. Prompt. A domain template (one fixed by default, or rotated per row), one title per line, ending with "Answer:".
6. Teacher (optional, `teacher="sasrec"`). A sequential recommender trained on the train rows' item sequences
   (validation rows for early stopping, test rows untouched) scores every row's candidates from the row's history:
   columns `candidate_scores`, `rejected_scores`, `embedding` (see `dataset_builders.teachers`). The train rows'
   scores are cross-fitted over `teacher_folds` folds of users (out-of-fold); their `embedding` is the full
   teacher's.
7. Output. Parquet `DatasetDict` + `items` table + dataset card + `build_info.json` (listing every file), written
   beside the output folder and swapped into place when complete (`output.py`); optional push to the Hub.

Leakage is asserted on every build: every history item belongs to the row's user with timestamp <= the target's, no
target appears in its own history, and the time split is ordered.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from .config import SPLITS, BuildConfig
from .download import resolve_raw_files
from .errors import RawDataError
from .output import (
    BUILD_INFO,
    BUILDER,
    ITEM_EMBEDDINGS_FILE,
    LAYOUT,
    check_output_dir,
    file_hashes,
    make_staging_dir,
    replace_folder,
)
from .sources import InteractionData, PresplitData, get_source
from .sources.base import Source
from .teachers import TEACHER_COLUMNS, TeacherData, run_teacher
from .templates import resolve_templates


if TYPE_CHECKING:  # pragma: no cover
    import datasets

COLUMNS = ["prompt", "chosen", "rejected", "candidates", "history", "target", "user_id", "target_id", "timestamp"]
_CHUNK_ROWS = 20_000


@dataclass
class Catalog:
    """Kept items: `ids[i]` (str) and `titles[i]` (unique str) for item index `i`."""

    ids: np.ndarray
    titles: list[str]

    def __len__(self) -> int:
        return len(self.titles)


@dataclass
class Rows:
    """All rows as index arrays (items are catalog indices; lists are flattened with offsets)."""

    split: np.ndarray  # int8: 0 train, 1 validation, 2 test
    user_id: np.ndarray  # object (str)
    target: np.ndarray  # int64
    timestamp: np.ndarray  # int64
    order: np.ndarray  # int64: output order within a split
    hist_offsets: np.ndarray  # int64 [R + 1]
    hist_items: np.ndarray  # int64
    cand_offsets: np.ndarray | None = None
    cand_items: np.ndarray | None = None
    template: np.ndarray | None = None  # int64 template index per row

    def __len__(self) -> int:
        return len(self.target)


@dataclass
class BuildResult:
    """Everything a build produced.

    Attributes:
        dataset (`datasets.DatasetDict`): the train/validation/test splits.
        items (`datasets.Dataset`): the item table.
        output_dir (`Path`): the folder written.
        info (`dict`): the content of `build_info.json`.
        timings (`dict[str, float]`): seconds per stage (and `total`).
        summary (`str`): the summary table.
    """

    dataset: object
    items: object
    output_dir: Path
    info: dict
    timings: dict[str, float] = field(default_factory=dict)
    summary: str = ""


class _Timer:
    def __init__(self):
        self.timings: dict[str, float] = {}
        self._start = time.perf_counter()
        self._last = self._start

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = self.timings.get(name, 0.0) + now - self._last
        self._last = now

    def total(self) -> float:
        self.timings["total"] = time.perf_counter() - self._start
        return self.timings["total"]


# --------------------------------------------------------------------------------------------------------------------
# Step 1: items and interactions


def _normalize_titles(titles: pd.Series) -> pd.Series:
    # One space between words and none at the ends, so that a title never contains a newline (prompt lists are one
    # title per line) and equal-looking titles compare equal; NFC, so that a title's decomposed (NFD) and precomposed
    # forms are one title.
    return titles.astype(str).str.replace(r"\s+", " ", regex=True).str.strip().str.normalize("NFC")


def _natural_order(ids: np.ndarray) -> np.ndarray:
    """Sort keys for item ids: numeric when every id is an integer, else lexicographic (ranks of the sorted ids)."""
    numeric = pd.to_numeric(pd.Series(ids), errors="coerce")
    if not numeric.isna().any():
        return np.argsort(np.argsort(numeric.to_numpy(), kind="stable"), kind="stable")
    return np.argsort(np.argsort(ids.astype(str), kind="stable"), kind="stable")


def _disambiguate(ids: np.ndarray, titles: pd.Series) -> tuple[list[str], int]:
    """Suffix " [id X]" to every repeated title but its first occurrence; returns the titles and how many changed."""
    titles = titles.astype(object).copy()
    repeated = titles.duplicated(keep="first").to_numpy()
    titles[repeated] = [f"{title} [id {item_id}]" for title, item_id in zip(titles[repeated], ids[repeated])]
    # A suffixed title could in theory equal another raw title; number such (pathological) clashes until unique.
    round_ = 2
    while titles.duplicated().any():
        clash = titles.duplicated(keep="first").to_numpy()
        titles[clash] = titles[clash] + f" ({round_})"
        round_ += 1
    return titles.tolist(), int(repeated.sum())


def prepare_interactions(data: InteractionData, config: BuildConfig, dropped: dict) -> tuple[pd.DataFrame, Catalog]:
    """Validate and filter the parsed interactions; return them with catalog item indices, and the catalog.

    Returns:
        `(interactions, catalog)`: interactions with columns `user` (str), `item` (int64 catalog index),
        `timestamp` (int64), `line` (int64); the catalog of kept items in item-file order.
    """
    items = data.items.copy()
    items["title"] = _normalize_titles(items["title"])
    item_index = pd.Index(items["item"].to_numpy(dtype=object))
    if not item_index.is_unique:
        row = items.iloc[int(np.flatnonzero(item_index.duplicated())[0])]
        raise RawDataError(data.items_file, int(row["line"]), f"item id {row['item']!r} appears twice")
    untitled = ((items["title"] == "") | items["title"].isin(list(data.missing_titles))).to_numpy()
    dropped["items_without_title"] = int(untitled.sum())

    inter = data.interactions
    # Integer codes (hash lookups) instead of string comparisons: this step runs on millions of rows.
    codes = item_index.get_indexer(inter["item"].to_numpy(dtype=object))
    known = codes >= 0
    if not known.all():
        if config.on_unknown_item == "error":
            row = inter.iloc[int(np.flatnonzero(~known)[0])]
            raise RawDataError(
                data.interactions_file,
                int(row["line"]),
                f"unknown item id {row['item']!r} (not in {Path(data.items_file).name}); "
                "pass on_unknown_item='drop' (--on-unknown-item drop) to drop such interactions",
            )
    dropped["interactions_unknown_item"] = int((~known).sum())
    keep = known.copy()
    keep[known] = ~untitled[codes[known]]
    dropped["interactions_without_title"] = int((known & ~keep).sum())

    if config.min_rating is not None:
        if "rating" not in inter.columns:
            raise ValueError("min_rating was given but this source has no ratings")
        rated = inter["rating"].to_numpy() >= config.min_rating
        dropped["interactions_below_min_rating"] = int((keep & ~rated).sum())
        keep &= rated

    users = inter["user"].to_numpy(dtype=object)[keep]
    codes = codes[keep]
    stamps = inter["timestamp"].to_numpy(dtype=np.int64)[keep]
    lines = inter["line"].to_numpy(dtype=np.int64)[keep]
    user_codes = pd.factorize(users)[0].astype(np.int64)

    # Keep each user's first interaction with an item (earliest timestamp, then file order): repeated consumption
    # would put a target in its own history.
    chronological = np.lexsort((lines, stamps))
    pair = user_codes[chronological] * len(item_index) + codes[chronological]
    first = np.zeros(len(pair), dtype=bool)
    first[chronological[~pd.Series(pair).duplicated().to_numpy()]] = True
    dropped["duplicate_interactions"] = int((~first).sum())
    users, codes, stamps, lines, user_codes = (a[first] for a in (users, codes, stamps, lines, user_codes))

    if config.k_core > 0:
        before_users, before = len(np.unique(user_codes)), len(codes)
        while True:
            user_counts = np.bincount(user_codes)[user_codes]
            item_counts = np.bincount(codes)[codes]
            core = (user_counts >= config.k_core) & (item_counts >= config.k_core)
            if core.all():
                break
            users, codes, stamps, lines, user_codes = (a[core] for a in (users, codes, stamps, lines, user_codes))
        dropped["interactions_removed_by_k_core"] = before - len(codes)
        dropped["users_removed_by_k_core"] = before_users - len(np.unique(user_codes))
    if len(codes) == 0:
        raise ValueError("no interactions left after filtering")

    present = np.zeros(len(item_index), dtype=bool)
    present[codes] = True
    kept = np.flatnonzero(present)  # item-file order
    dropped["items_without_interactions"] = int((~untitled).sum()) - len(kept)
    kept_ids = items["item"].to_numpy(dtype=object)[kept]
    titles, renamed = _disambiguate(kept_ids, items["title"].iloc[kept].reset_index(drop=True))
    dropped["titles_disambiguated"] = renamed
    catalog = Catalog(ids=kept_ids, titles=titles)
    remap = np.full(len(item_index), -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    out = pd.DataFrame({"user": users, "item": remap[codes], "timestamp": stamps, "line": lines})
    return out, catalog


# --------------------------------------------------------------------------------------------------------------------
# Steps 2-3: sequences, rows, split


def _user_keys(users: np.ndarray) -> np.ndarray:
    """A stable 64-bit key per user id (blake2b), independent of Python's hash randomization."""
    unique, inverse = np.unique(users.astype(str), return_inverse=True)
    keys = np.array(
        [int.from_bytes(hashlib.blake2b(u.encode("utf-8"), digest_size=8).digest(), "little") for u in unique],
        dtype=np.uint64,
    )
    return keys[inverse]


def _segments(offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat positions of the variable-length segments `rows` (given CSR `offsets`), and the new offsets."""
    starts, lengths = offsets[rows], offsets[rows + 1] - offsets[rows]
    new_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    flat = np.repeat(starts - new_offsets[:-1], lengths) + np.arange(new_offsets[-1], dtype=np.int64)
    return flat, new_offsets


def build_rows(inter: pd.DataFrame, config: BuildConfig, dropped: dict) -> tuple[Rows, dict]:
    """Sliding-window rows and their split; also returns, per interaction, whether it is a training interaction."""
    users = inter["user"].to_numpy(dtype=object)
    user_code = pd.factorize(users)[0]
    ts, line, item = (inter[c].to_numpy() for c in ("timestamp", "line", "item"))
    order = np.lexsort((line, ts, user_code))  # per user, chronological, ties by raw-file order
    user_code, users, ts, line, item = user_code[order], users[order], ts[order], line[order], item[order]
    n = len(order)
    new_user = np.r_[True, user_code[1:] != user_code[:-1]]
    first_index = np.maximum.accumulate(np.where(new_user, np.arange(n), 0))
    position = np.arange(n) - first_index
    # Global time rank of each interaction (timestamp, then line) for the time split and the item counts.
    global_rank = np.empty(n, dtype=np.int64)
    global_rank[np.lexsort((line, ts))] = np.arange(n)

    row_index = np.flatnonzero(position >= config.min_history)
    dropped["targets_with_short_history"] = int(n - len(row_index))
    if len(row_index) == 0:
        raise ValueError(f"no user has more than min_history={config.min_history} interactions")
    hist_len = np.minimum(position[row_index], config.max_history)
    hist_offsets = np.zeros(len(row_index) + 1, dtype=np.int64)
    np.cumsum(hist_len, out=hist_offsets[1:])
    hist_inter = np.repeat(row_index - hist_len - hist_offsets[:-1], hist_len) + np.arange(hist_offsets[-1])

    # Leakage: history items are the row user's own, not later than the target, and never the target itself.
    owner = np.repeat(np.arange(len(row_index)), hist_len)
    if not (user_code[hist_inter] == user_code[row_index][owner]).all():
        raise AssertionError("a history holds another user's interaction")
    if not (ts[hist_inter] <= ts[row_index][owner]).all():
        raise AssertionError("a history holds an interaction later than its target")
    if (item[hist_inter] == item[row_index][owner]).any():
        raise AssertionError("a target appears in its own history")

    split = np.zeros(len(row_index), dtype=np.int8)
    row_rank = global_rank[row_index]
    if config.split == "time":
        by_time = np.argsort(row_rank, kind="stable")
        total = len(row_index)
        n_train = int(np.floor(total * config.split_ratios[0] + 1e-9))
        n_valid = int(np.floor(total * (config.split_ratios[0] + config.split_ratios[1]) + 1e-9)) - n_train
        if n_train == 0:
            raise ValueError(
                f"The train split is empty: {total} rows x a train share of {config.split_ratios[0]:g} (split_ratios) "
                "rounds to 0 rows. Use more raw data, a lower min_history or a larger train share."
            )
        split[by_time[n_train : n_train + n_valid]] = 1
        split[by_time[n_train + n_valid :]] = 2
        cut = row_rank[by_time[n_train - 1]] if n_train else -1
        train_interaction = global_rank <= cut
        row_ts = ts[row_index]
        spans = [row_ts[split == s] for s in range(3)]
        for earlier, later in zip(spans, spans[1:]):
            if len(earlier) and len(later) and earlier.max() > later.min():
                raise AssertionError("time split is not ordered")
    else:  # leave-last-out
        row_user = user_code[row_index]
        last = np.r_[row_user[1:] != row_user[:-1], True]
        second_last = np.r_[last[1:] & ~last[:-1], False]
        split[second_last] = 1
        split[last] = 2
        held_out_start = np.full(user_code.max() + 1, np.iinfo(np.int64).max)
        held = row_index[split > 0]
        np.minimum.at(held_out_start, user_code[held], position[held])
        train_interaction = position < held_out_start[user_code]
    rows = Rows(
        split=split,
        user_id=users[row_index],
        target=item[row_index],
        timestamp=ts[row_index],
        order=row_rank,
        hist_offsets=hist_offsets,
        hist_items=item[hist_inter],
    )
    extra = {
        "position": position[row_index],
        "train_items": item[train_interaction],
        "users": int(user_code.max() + 1),
        "interactions": n,
    }
    return rows, extra


# --------------------------------------------------------------------------------------------------------------------
# Step 4: item table and candidates


def item_table(catalog: Catalog, train_counts: np.ndarray, head_share: float, tail_share: float) -> pd.DataFrame:
    """Item table: training count, popularity rank (1 = most popular; ties by item id) and group.

    Groups: sort items by rank; "head" = the shortest prefix of items whose training interactions reach `head_share`
    of all training interactions (an item is head if the interactions of the items ranked before it are below that
    share); "tail" = the longest suffix (least popular items) whose interactions total at most `tail_share` (items with
    no training interaction are always tail); "mid" = the rest.
    """
    n = len(catalog)
    by_rank = np.lexsort((_natural_order(catalog.ids), -train_counts))
    rank = np.empty(n, dtype=np.int64)
    rank[by_rank] = np.arange(1, n + 1)
    sorted_counts = train_counts[by_rank].astype(np.float64)
    total = sorted_counts.sum()
    before = np.cumsum(sorted_counts) - sorted_counts
    from_bottom = np.cumsum(sorted_counts[::-1])[::-1]  # interactions of this item and all less popular ones
    group = np.full(n, "mid", dtype=object)
    group[from_bottom <= tail_share * total + 1e-9] = "tail"
    group[before < head_share * total] = "head"
    return pd.DataFrame(
        {
            "item_id": catalog.ids[by_rank].astype(str),
            "title": [catalog.titles[i] for i in by_rank],
            "train_count": train_counts[by_rank].astype(np.int64),
            "popularity_rank": rank[by_rank],
            "popularity_group": group,
        }
    )


def _items_from_uniforms(u: np.ndarray, n_items: int, cdf: np.ndarray | None) -> np.ndarray:
    """Map uniforms in [0, 1) to item indices: uniformly, or by inverting the popularity CDF."""
    if cdf is None:
        return (u * n_items).astype(np.int64)
    return np.minimum(np.searchsorted(cdf, u, side="right"), n_items - 1)


def _sequential_negatives(rng, first: np.ndarray, excluded: set, k: int, n_items: int, cdf) -> list[int]:
    """The sampling rule, one draw at a time: the first `k` draws not excluded and not drawn before.

    `first` are the draws of the row's first batch; further batches come from `rng` until `k` negatives are found.
    """
    excluded = set(excluded)
    negatives: list[int] = []
    draws = first
    while True:
        for x in draws.tolist():
            if x not in excluded:  # rejection = sampling without replacement from the allowed items
                excluded.add(x)
                negatives.append(x)
                if len(negatives) == k:
                    return negatives
        draws = _items_from_uniforms(rng.random(len(first) + 2)[2:], n_items, cdf)


def sample_candidates(
    rows: Rows,
    positions: np.ndarray,
    n_items: int,
    config: BuildConfig,
    weights: np.ndarray | None,
    n_templates: int,
) -> None:
    """Fill `rows.cand_*` and `rows.template` (see the module docstring for the sampling rule).

    Each row draws one batch of `2k + 10` uniforms from its own generator: `u[0]` places the target, `u[1]` picks the
    template, `u[2:]` are candidate negatives, kept in order when they are neither in the history, nor the target, nor
    drawn before. The rejection is vectorized over a chunk of rows; the rare rows whose first batch does not hold `k`
    acceptable draws continue drawing from their generator one batch at a time (same rule, applied sequentially).
    """
    k = config.num_candidates - 1
    cdf = None
    if weights is not None:
        cdf = np.cumsum(weights, dtype=np.float64)
        cdf /= cdf[-1]
    total = len(rows)
    lengths = np.diff(rows.hist_offsets)
    available = n_items - lengths - 1  # history items are distinct and differ from the target
    if total and available.min() < k:
        r = int(np.argmin(available))
        raise ValueError(
            f"only {available[r]} items are available as negatives for user {rows.user_id[r]!r}, need {k}: "
            "lower num_candidates"
        )
    keys = _user_keys(rows.user_id).tolist()
    pos = positions.tolist()
    batch = 2 * k + 10
    cands = np.empty((total, k + 1), dtype=np.int64)
    template = np.empty(total, dtype=np.int64)
    width = int(lengths.max()) if total else 0
    bar = tqdm(total=total, desc="candidates", unit="row", disable=not config.progress, leave=False)
    for start in range(0, total, _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, total)
        u = np.empty((stop - start, batch))
        for r in range(start, stop):
            u[r - start] = np.random.default_rng((config.seed, keys[r], pos[r])).random(batch)
        bar.update(stop - start)
        chunk = np.arange(start, stop)
        targets = rows.target[chunk]
        draws = _items_from_uniforms(u[:, 2:], n_items, cdf)
        # history as a padded matrix (-1 never equals an item index)
        history = np.full((len(chunk), max(width, 1)), -1, dtype=np.int64)
        flat, offsets = _segments(rows.hist_offsets, chunk)
        column = np.arange(len(flat)) - np.repeat(offsets[:-1], np.diff(offsets))
        history[np.repeat(np.arange(len(chunk)), np.diff(offsets)), column] = rows.hist_items[flat]
        rejected = (draws[:, :, None] == history[:, None, :]).any(axis=2) | (draws == targets[:, None])
        order = np.argsort(draws, axis=1, kind="stable")  # equal draws stay in draw order
        ordered = np.take_along_axis(draws, order, axis=1)
        repeat = np.zeros_like(rejected)
        np.put_along_axis(repeat, order[:, 1:], ordered[:, 1:] == ordered[:, :-1], axis=1)
        accepted = ~rejected & ~repeat
        rank = np.cumsum(accepted, axis=1)
        negatives = np.empty((len(chunk), k), dtype=np.int64)
        complete = rank[:, -1] >= k
        pick = accepted & (rank <= k) & complete[:, None]
        negatives[complete] = draws[pick].reshape(-1, k)
        for i in np.flatnonzero(~complete):
            r = int(chunk[i])
            rng = np.random.default_rng((config.seed, keys[r], pos[r]))
            rng.random(batch)  # the first batch, already in `draws`
            excluded = set(history[i][history[i] >= 0].tolist()) | {int(targets[i])}
            negatives[i] = _sequential_negatives(rng, draws[i], excluded, k, n_items, cdf)
        # Insert the target at a uniform slot of the (uniformly ordered) negatives: a shuffled candidate list.
        slot = (u[:, 0] * (k + 1)).astype(np.int64)
        column = np.arange(k + 1)
        source = np.clip(column[None, :] - (column[None, :] > slot[:, None]), 0, k - 1)
        chunk_cands = np.take_along_axis(negatives, source, axis=1)
        chunk_cands[column[None, :] == slot[:, None]] = targets
        cands[start:stop] = chunk_cands
        template[start:stop] = (u[:, 1] * n_templates).astype(np.int64)
    bar.close()
    ordered = np.sort(cands, axis=1)
    if (ordered[:, 1:] == ordered[:, :-1]).any() or ((cands == rows.target[:, None]).sum(axis=1) != 1).any():
        raise AssertionError("candidate lists must be distinct and hold the target exactly once")
    rows.cand_offsets = np.arange(0, total * (k + 1) + 1, k + 1, dtype=np.int64)
    rows.cand_items = cands.ravel()
    rows.template = template


# --------------------------------------------------------------------------------------------------------------------
# Pre-split imports (sdpo-json)


def presplit_rows(data: PresplitData, config: BuildConfig, n_templates: int) -> tuple[Rows, Catalog, dict]:
    """Rows of an already-processed dataset: keep its split and candidates; item ids are first-appearance indices."""
    title_index: dict[str, int] = {}
    split, users, targets, stamps = [], [], [], []
    hist_lengths, hist_items, cand_lengths, cand_items = [], [], [], []
    running = 0
    for code, name in enumerate(SPLITS):
        for i, record in enumerate(data.splits[name]):
            for title in (*record.history, *record.candidates):
                title_index.setdefault(title, len(title_index))
            split.append(code)
            users.append(record.user_id if record.user_id is not None else f"{name}-{i}")
            targets.append(title_index[record.target])
            stamps.append(record.timestamp if record.timestamp is not None else running)
            running += 1
            hist_lengths.append(len(record.history))
            hist_items.extend(title_index[t] for t in record.history)
            cand_lengths.append(len(record.candidates))
            cand_items.extend(title_index[t] for t in record.candidates)
    total = len(targets)
    template = np.zeros(total, dtype=np.int64)
    if n_templates > 1:
        codes = np.asarray(split)
        index_in_split = np.arange(total) - np.searchsorted(codes, codes)
        for r in range(total):
            template[r] = np.random.default_rng((config.seed, int(codes[r]), int(index_in_split[r]))).integers(
                0, n_templates
            )
    rows = Rows(
        split=np.asarray(split, dtype=np.int8),
        user_id=np.asarray(users, dtype=object),
        target=np.asarray(targets, dtype=np.int64),
        timestamp=np.asarray(stamps, dtype=np.int64),
        order=np.arange(total, dtype=np.int64),
        hist_offsets=np.r_[0, np.cumsum(hist_lengths)].astype(np.int64),
        hist_items=np.asarray(hist_items, dtype=np.int64),
        cand_offsets=np.r_[0, np.cumsum(cand_lengths)].astype(np.int64),
        cand_items=np.asarray(cand_items, dtype=np.int64),
        template=template,
    )
    titles = list(title_index)
    catalog = Catalog(ids=np.asarray([str(i) for i in range(len(titles))], dtype=object), titles=titles)
    train_counts = np.bincount(rows.target[rows.split == 0], minlength=len(catalog))
    # Users are known only when every record names its user: the `<split>-<index>` stand-ins are one per row, and
    # counting them would report as many users as rows.
    known = all(record.user_id is not None for name in SPLITS for record in data.splits[name])
    users_per_split = {
        name: len({record.user_id for record in data.splits[name]}) if known else None for name in SPLITS
    }
    lengths = np.diff(rows.cand_offsets)
    extra = {
        "train_counts": train_counts,
        "users": len(set(users)) if known else None,
        "users_per_split": users_per_split,
        "candidates_per_row": [int(lengths.min()), int(lengths.max())] if total else None,
    }
    return rows, catalog, extra


# --------------------------------------------------------------------------------------------------------------------
# Steps 5-6: prompts and tables


def _list_array(offsets: np.ndarray, values: pa.Array) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), values)


def split_table(
    rows: Rows, which: np.ndarray, catalog: Catalog, templates, progress: bool, name: str, teacher=None
) -> pa.Table:
    """The Arrow table of the rows `which` (in that order), with rendered prompts, and with a teacher's columns
    (`candidate_scores`, `rejected_scores`, `embedding`) when `teacher` (a `teachers.TeacherResult`) is given."""
    titles = pa.array(catalog.titles, type=pa.string())
    hist_flat, hist_offsets = _segments(rows.hist_offsets, which)
    cand_flat, cand_offsets = _segments(rows.cand_offsets, which)
    hist_items, cand_items = rows.hist_items[hist_flat], rows.cand_items[cand_flat]
    targets = rows.target[which]
    is_target = cand_items == np.repeat(targets, np.diff(cand_offsets))
    rejected_offsets = cand_offsets - np.arange(len(which) + 1)

    title_list = catalog.titles
    hist_list, cand_list = hist_items.tolist(), cand_items.tolist()
    ho, co, chosen_template = hist_offsets.tolist(), cand_offsets.tolist(), rows.template[which].tolist()
    prompts = []
    for start in tqdm(range(0, len(which), _CHUNK_ROWS), desc=f"prompts {name}", disable=not progress, leave=False):
        for r in range(start, min(start + _CHUNK_ROWS, len(which))):
            history = [title_list[i] for i in hist_list[ho[r] : ho[r + 1]]]
            candidates = [title_list[i] for i in cand_list[co[r] : co[r + 1]]]
            prompts.append(templates[chosen_template[r]].render(history, candidates))
    columns = {
        "prompt": pa.array(prompts, type=pa.string()),
        "chosen": titles.take(pa.array(targets)),
        "rejected": _list_array(rejected_offsets, titles.take(pa.array(cand_items[~is_target]))),
        "candidates": _list_array(cand_offsets, titles.take(pa.array(cand_items))),
        "history": _list_array(hist_offsets, titles.take(pa.array(hist_items))),
        "target": titles.take(pa.array(targets)),
        "user_id": pa.array(rows.user_id[which].astype(str).tolist(), type=pa.string()),
        "target_id": pa.array(catalog.ids[targets].astype(str).tolist(), type=pa.string()),
        "timestamp": pa.array(rows.timestamp[which], type=pa.int64()),
    }
    if teacher is not None:
        # float64 (as computed): float32 would round confident scores to exactly 1.0 and tie them
        scores = pa.array(teacher.candidate_scores[cand_flat].astype(np.float64), type=pa.float64())
        columns["candidate_scores"] = _list_array(cand_offsets, scores)
        columns["rejected_scores"] = _list_array(rejected_offsets, scores.filter(pa.array(~is_target)))
        embeddings = teacher.embeddings[which]
        columns["embedding"] = _list_array(
            np.arange(len(which) + 1, dtype=np.int64) * embeddings.shape[1],
            pa.array(embeddings.ravel(), type=pa.float32()),
        )
    return pa.table(columns)


def _split_statistics(rows: Rows) -> dict:
    lengths = np.diff(rows.hist_offsets)
    stats = {"rows": {}, "users_per_split": {}, "mean_history_length": {}, "timestamp_range": {}}
    for code, name in enumerate(SPLITS):
        mask = rows.split == code
        stats["rows"][name] = int(mask.sum())
        stats["users_per_split"][name] = int(len(np.unique(rows.user_id[mask].astype(str))))
        stats["mean_history_length"][name] = round(float(lengths[mask].mean()), 4) if mask.any() else 0.0
        stamps = rows.timestamp[mask]
        stats["timestamp_range"][name] = [int(stamps.min()), int(stamps.max())] if mask.any() else None
    stats["share_rows_with_full_history"] = round(float((lengths == lengths.max()).mean()), 4) if len(rows) else 0.0
    return stats


def teacher_data(rows: Rows, positions: np.ndarray, n_items: int, seed: int) -> TeacherData:
    """The view of the rows a teacher trains on and scores (catalog indices, CSR histories and candidates)."""
    return TeacherData(
        num_items=n_items,
        split=rows.split,
        user=pd.factorize(rows.user_id.astype(str))[0].astype(np.int64),
        position=np.asarray(positions, dtype=np.int64),
        target=rows.target,
        hist_offsets=rows.hist_offsets,
        hist_items=rows.hist_items,
        cand_offsets=rows.cand_offsets,
        cand_items=rows.cand_items,
        seed=seed,
    )


# --------------------------------------------------------------------------------------------------------------------
# Orchestration


_IMPORT_NOTE = (
    "rows imported as given: splits, histories, candidates (in their order) and targets come from the files; no "
    "interactions are read, no candidates are sampled and nothing is re-split, so min_rating, k_core, min_history, "
    "max_history, split, split_ratios, num_candidates, negative_sampling and on_unknown_item do not apply; users are "
    "counted only when every record has a user_id; train_count = number of training rows whose target is the item"
)


def _import_parameters(config: BuildConfig, domain: str, templates) -> dict:
    """The parameters that shape an imported (pre-split) dataset: only the prompts and the item groups."""
    parameters = {"domain": domain, "templates": [t.text for t in templates]}
    if len(templates) > 1:  # the seed only picks each row's template
        parameters["seed"] = config.seed
    parameters.update(head_share=config.head_share, tail_share=config.tail_share)
    return parameters


def teacher_item_table(catalog: Catalog, item_embeddings: np.ndarray) -> pa.Table:
    """The teacher's item-embedding table (`item_id`, `title`, `embedding`), one row per catalog item in catalog order:
    what hybrid item tokens (`trl_dynamicpo.item_tokens.ItemEmbeddingTable`) look a prompt's titles up in."""
    dim = item_embeddings.shape[1]
    return pa.table(
        {
            "item_id": pa.array(catalog.ids.astype(str)),
            "title": pa.array(list(catalog.titles), type=pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(item_embeddings.reshape(-1), pa.float32()), dim),
        }
    )


def _write_output(
    folder: Path,
    tables: dict,
    items_table: pa.Table,
    info: dict,
    source: Source,
    repo_hint: str,
    progress: bool,
    item_embeddings: pa.Table | None = None,
) -> None:
    """Write the Parquet files, the card and `build_info.json` (listing every file with its SHA-256) to `folder`;
    with a teacher that has item vectors, also `ITEM_EMBEDDINGS_FILE`."""
    from .card import write_card

    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "items").mkdir(parents=True, exist_ok=True)
    for split_name, table in tqdm(tables.items(), desc="write parquet", disable=not progress, leave=False):
        pq.write_table(table, folder / LAYOUT["default"][split_name][0])
    pq.write_table(items_table, folder / LAYOUT["items"]["train"][0])
    written = ["README.md", *(path for config in LAYOUT.values() for paths in config.values() for path in paths)]
    if item_embeddings is not None:
        pq.write_table(item_embeddings, folder / ITEM_EMBEDDINGS_FILE)
        written.append(ITEM_EMBEDDINGS_FILE)
    example_split = next((s for s in SPLITS if len(tables[s])), None)
    example = tables[example_split].slice(0, 1).to_pylist()[0] if example_split else None
    write_card(folder, source, info, example, repo_hint=repo_hint)
    info["output"]["files"] = file_hashes(folder, written)
    (folder / BUILD_INFO).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", "utf-8")


def run_build(name: str, output_dir: str | Path, config: BuildConfig | None = None) -> BuildResult:
    """Build dataset `name` into `output_dir` and return a [`BuildResult`] (see [`build_dataset`]).

    The folder is written next to `output_dir` and swapped into place when complete (see `dataset_builders.output`):
    a failed build leaves the previous content as it was. A folder holding files that no build wrote is refused
    before any raw file is read, unless `config.overwrite`.
    """
    from datasets import Dataset, DatasetDict, NamedSplit
    from datasets.table import InMemoryTable

    config = config or BuildConfig()
    source: Source = get_source(name)
    output_dir = Path(output_dir)
    check_output_dir(output_dir, config.overwrite, config.raw_dir)  # before any work: a refused folder costs nothing
    timer = _Timer()

    files = resolve_raw_files(
        source.cache_name(config),
        source.requirements(config),
        raw_dir=config.raw_dir,
        cache_dir=config.cache_dir,
        offline=config.offline,
        verify_checksums=config.verify_checksums,
        progress=config.progress,
    )
    timer.lap("locate files")
    data = source.parse(files, config)
    timer.lap("parse")
    domain = config.domain or source.domain
    templates = resolve_templates(config.templates, domain)
    dropped: dict[str, int] = {}
    notes = dict(data.notes)

    imported = isinstance(data, PresplitData)
    if imported and config.teacher:
        raise ValueError(
            f"--teacher {config.teacher} needs item ids to train on, and {name} imports titles only: its rows come "
            "from already-processed files without the source's item ids or user sequences (item_id there is just "
            "the index of a title in order of first appearance). Build from the raw interactions instead (e.g. "
            "movielens-100k, lastfm-hetrec), or build without --teacher."
        )
    if imported:
        rows, catalog, extra = presplit_rows(data, config, len(templates))
        train_counts = extra["train_counts"]
        counts = {"users": extra["users"], "items": len(catalog), "interactions_read": None, "interactions_kept": None}
        notes["presplit"] = _IMPORT_NOTE
        notes["input_files"] = data.files
        parameters = _import_parameters(config, domain, templates)
        timer.lap("sequences + split")
    else:
        dropped.update(data.counts)
        inter, catalog = prepare_interactions(data, config, dropped)
        timer.lap("filter")
        rows, extra = build_rows(inter, config, dropped)
        train_counts = np.bincount(extra["train_items"], minlength=len(catalog))
        counts = {
            "users": extra["users"],
            "items": len(catalog),
            "interactions_read": len(data.interactions),
            "interactions_kept": extra["interactions"],
        }
        parameters = {**config.to_dict(source.name), "domain": domain, "templates": [t.text for t in templates]}
        timer.lap("sequences + split")
        weights = train_counts + 1.0 if config.negative_sampling == "popularity" else None
        sample_candidates(rows, extra["position"], len(catalog), config, weights, len(templates))
        timer.lap("candidates")

    teacher = None
    if config.teacher:
        teacher = run_teacher(
            config.teacher,
            teacher_data(rows, extra["position"], len(catalog), config.seed),
            config.teacher_args,
            progress=config.progress,
            folds=config.teacher_folds,
        )
        timer.lap("teacher")

    items = item_table(catalog, train_counts, config.head_share, config.tail_share)
    tables = {}
    for code, split_name in enumerate(SPLITS):
        which = np.flatnonzero(rows.split == code)
        which = which[np.argsort(rows.order[which], kind="stable")]
        tables[split_name] = split_table(rows, which, catalog, templates, config.progress, split_name, teacher)
    timer.lap("prompts")

    statistics = {**counts, **_split_statistics(rows)}
    if imported:
        statistics["users_per_split"] = extra["users_per_split"]
        statistics["candidates_per_row"] = extra["candidates_per_row"]
    statistics["item_groups"] = {g: int((items["popularity_group"] == g).sum()) for g in ("head", "mid", "tail")}
    info = {
        "dataset": name,
        "kind": "import" if imported else "build",
        "source": {
            "name": source.pretty_name,
            "homepage": source.homepage,
            "license": source.license,
            "citation": source.citation,
            "files": files.records,
            "timestamp": source.timestamp_meaning,
        },
        "parameters": parameters,
        "statistics": statistics,
        "dropped": dropped,
        "notes": notes,
        "columns": COLUMNS + (TEACHER_COLUMNS if teacher is not None else []),
        "prompt_list_format": "one title per line, verbatim (whitespace-normalized), no quotes or numbering",
        # Exactly the files of each config: readers take these, not a glob that would also pick up a stray file.
        "output": {
            "builder": BUILDER,
            "configs": {
                config_name: {s: list(p) for s, p in splits.items()} for config_name, splits in LAYOUT.items()
            },
            "files": {},
        },
    }
    if teacher is not None:
        info["teacher"] = teacher.info
        if teacher.item_embeddings is not None:
            info["teacher"]["item_embeddings"] = {
                "file": ITEM_EMBEDDINGS_FILE,
                "rows": int(teacher.item_embeddings.shape[0]),
                "dim": int(teacher.item_embeddings.shape[1]),
            }
    items_table = pa.Table.from_pandas(items, preserve_index=False)
    # Write a complete folder beside the output and swap it in: a failure (or a kill) before the swap leaves the
    # previous dataset as it was, never a mix of old and new files.
    staging = make_staging_dir(output_dir)
    try:
        item_embeddings = None
        if teacher is not None and teacher.item_embeddings is not None:
            item_embeddings = teacher_item_table(catalog, teacher.item_embeddings)
        _write_output(
            staging,
            tables,
            items_table,
            info,
            source,
            config.push_to_hub or str(output_dir),
            config.progress,
            item_embeddings,
        )
        check_output_dir(output_dir, config.overwrite, config.raw_dir)  # it may have changed during the build
        replace_folder(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    timer.lap("write")

    # An explicit fingerprint: otherwise `datasets` hashes every table (over a second for MovieLens 100K).
    digest = hashlib.sha256(json.dumps(info, sort_keys=True, default=str).encode()).hexdigest()
    dataset = DatasetDict(
        {
            s: Dataset(InMemoryTable(t), split=NamedSplit(s), fingerprint=f"{digest[:24]}-{s}")
            for s, t in tables.items()
        }
    )
    items_dataset = Dataset(InMemoryTable(items_table), split=NamedSplit("train"), fingerprint=f"{digest[:24]}-items")
    if config.push_to_hub:
        push_folder(output_dir, config.push_to_hub, private=config.private)
        timer.lap("push")
    timer.total()
    result = BuildResult(dataset, items_dataset, output_dir, info, timer.timings)
    result.summary = format_summary(result)
    if config.verbose:
        print(result.summary)
    return result


def push_folder(folder: Path, repo_id: str, private: bool = False) -> None:
    """Push the built folder with `folder.push_dataset_folder` (the Hub clients are imported only then)."""
    from .folder import push_dataset_folder

    push_dataset_folder(str(folder), repo_id, token=None, private=private)


def format_summary(result: BuildResult) -> str:
    """The end-of-build summary table (users, items, interactions kept, rows per split, history length, seconds)."""
    info, stats = result.info, result.info["statistics"]
    kept = stats["interactions_kept"]
    read = stats.get("interactions_read")
    users = f"{stats['users']:>12,}" if stats["users"] is not None else f"{'unknown':>12}  (records have no user_id)"
    lines = [
        f"Built {info['dataset']} -> {result.output_dir}",
        f"  {'users':<22}{users}",
        f"  {'items':<22}{stats['items']:>12,}",
    ]
    if kept is not None:
        lines.append(f"  {'interactions kept':<22}{kept:>12,}" + (f"  (of {read:,} read)" if read else ""))
    dropped = {k: v for k, v in info["dropped"].items() if v}
    if dropped:
        lines.append(f"  {'dropped / changed':<22}" + ", ".join(f"{k}={v:,}" for k, v in dropped.items()))
    for key, value in info["notes"].items():
        if key.startswith("lastfm") or key == "goodreads_genre":
            lines.append(f"  {key:<22}{value}")
    lines.append(f"  {'split':<12}{'rows':>12}{'users':>10}{'mean history':>15}")
    for split_name in SPLITS:
        split_users = stats["users_per_split"][split_name]
        lines.append(
            f"  {split_name:<12}{stats['rows'][split_name]:>12,}"
            + (f"{split_users:>10,}" if split_users is not None else f"{'-':>10}")
            + f"{stats['mean_history_length'][split_name]:>15.2f}"
        )
    if "teacher" in info:
        teacher, metrics = info["teacher"], info["teacher"]["metrics"]
        hr1 = {split: m.get("hr@1", float("nan")) for split, m in metrics.items()}
        train = f"train in-sample {hr1['train_in_sample']:.4f}"
        seconds = f"{teacher['train_seconds']:.1f} s"
        if "cross_fitting" in teacher:  # the train rows' written scores are the cross-fitted ones: shown first
            folds = teacher["cross_fitting"]
            train = f"train (cross-fitted) {hr1['train_cross_fitted']:.4f}, {train}"
            seconds += f" + {folds['folds']} folds {folds['seconds']:.1f} s"
        lines.append(
            f"  {'teacher':<22}{teacher['name']:>12}  test HR@1 {hr1['test']:.4f}, NDCG@10 "
            f"{metrics['test'].get('ndcg@10', float('nan')):.4f} (validation HR@1 {hr1['validation']:.4f}; {train}); "
            f"best epoch {teacher['best_epoch']} of {teacher['epochs_run']}, {seconds}"
        )
    total = result.timings.get("total", 0.0)
    stages = " | ".join(f"{k} {v:.2f}" for k, v in result.timings.items() if k != "total")
    lines.append(f"  {'seconds taken':<22}{total:>12.2f}  ({stages})")
    return "\n".join(lines)


def build_dataset(
    name: str, output_dir: str | Path, config: BuildConfig | None = None, **overrides
) -> datasets.DatasetDict:
    """Build a multi-negative preference dataset from raw data, write it to `output_dir`, and return it.

    Args:
        name (`str`): dataset, one of `dataset_builders.SOURCES` (`movielens-100k`, `movielens-1m`,
            `movielens-latest-small`, `lastfm-hetrec`, `goodreads-ucsd`, `goodbooks-10k`, `sdpo-json`).
        output_dir (`str` or `Path`): output folder. It is created, or replaced as a whole when it holds a previous
            build; a folder holding other files is refused unless `overwrite=True` (see `dataset_builders.output`).
        config ([`BuildConfig`], *optional*): parameters; keyword `overrides` replace its fields.

    Returns:
        `datasets.DatasetDict`: splits `train`, `validation`, `test` with columns `prompt`, `chosen`, `rejected`,
        `candidates`, `history`, `target`, `user_id`, `target_id`, `timestamp`.

    Example:
    ```python
    from dataset_builders import build_dataset

    dataset = build_dataset("movielens-100k", "data/ml100k", raw_dir="/path/to/ml-100k", progress=False)
    print(dataset["train"][0]["prompt"])
    # later: datasets.load_dataset("data/ml100k") and datasets.load_dataset("data/ml100k", "items")
    ```
    """
    config = replace(config or BuildConfig(), **overrides)
    return run_build(name, output_dir, config).dataset
