"""Teachers: classical sequential recommenders trained on a build's own train split, whose scores go into the dataset.

A teacher adds three columns to every split of a build (`--teacher NAME`, `BuildConfig(teacher=NAME)`):

- `candidate_scores` (list of floats): one score per candidate, in `candidates` order (higher = more likely next);
- `rejected_scores` (list of floats): the same values at the positions of `rejected` (NAPO's confidence in each
  negative);
- `embedding` (list of floats): the teacher's sequence state for the row's history (NAPO's in-batch similarity).

Every row is scored from its own `history` only: the model input never holds the row's target. The teacher is trained
on the item-id sequences of the train split only (validation rows for early stopping, test rows untouched), so its
validation and test metrics are honest held-out numbers on the build's own candidates.

The registry maps a name to a module with a config dataclass (every field a hyperparameter with `help` metadata) and a
`fit_and_score(data, config, progress)` function; modules are imported only when a teacher is used (they need torch).

Example:
```python
>>> from dataset_builders.teachers import TEACHERS, get_teacher
>>> sorted(TEACHERS)
['sasrec']
>>> get_teacher("sasrec").config_class().hidden_size
64
```
"""

from __future__ import annotations

import importlib
import json
import time
from dataclasses import asdict, dataclass, fields, replace

import numpy as np


#: Teacher name -> (module, config class, one-line description).
TEACHERS: dict[str, tuple[str, str, str]] = {
    "sasrec": (
        "dataset_builders.teachers.sasrec",
        "SASRecConfig",
        "SASRec (Kang & McAuley, ICDM 2018): causal self-attention over item embeddings",
    ),
}
TEACHER_COLUMNS = ["candidate_scores", "rejected_scores", "embedding"]
METRIC_KS = (1, 5)


@dataclass
class TeacherData:
    """What a teacher sees of a build: items as catalog indices `0..num_items-1`, rows as flat arrays.

    Attributes:
        num_items (`int`): catalog size.
        split (`np.ndarray`): int8 per row, 0 train / 1 validation / 2 test.
        user (`np.ndarray`): int64 user code per row.
        position (`np.ndarray`): int64 position of the row's target in its user's sequence.
        target (`np.ndarray`): int64 target item per row.
        hist_offsets, hist_items (`np.ndarray`): the histories (CSR: row `r` is `hist_items[o[r]:o[r+1]]`, oldest
            first).
        cand_offsets, cand_items (`np.ndarray`): the candidates in prompt order (CSR).
        seed (`int`): the build's seed (used when the teacher config has none).
    """

    num_items: int
    split: np.ndarray
    user: np.ndarray
    position: np.ndarray
    target: np.ndarray
    hist_offsets: np.ndarray
    hist_items: np.ndarray
    cand_offsets: np.ndarray
    cand_items: np.ndarray
    seed: int = 0

    def __len__(self) -> int:
        return len(self.target)


@dataclass
class TeacherResult:
    """Output of a teacher: `candidate_scores` aligned with `TeacherData.cand_items` (float64), `embeddings`
    `[rows, dim]` (float32), `info` (what `build_info.json` records under `teacher`) and `item_embeddings`
    `[items, item_dim]` (float32, catalog order; the build writes them to `item_embeddings.parquet`), or None for a
    teacher without item vectors."""

    candidate_scores: np.ndarray
    embeddings: np.ndarray
    info: dict
    item_embeddings: np.ndarray | None = None


class _Entry:
    def __init__(self, name: str, module: str, config_name: str, description: str):
        self.name, self.module_name, self.config_name, self.description = name, module, config_name, description

    @property
    def module(self):
        return importlib.import_module(self.module_name)

    @property
    def config_class(self):
        return getattr(self.module, self.config_name)

    def make_config(self, overrides: dict | None):
        """The teacher's config with `overrides` (a dict, or a JSON object text) applied; unknown keys are an error."""
        overrides = parse_teacher_args(overrides)
        known = {f.name for f in fields(self.config_class)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(
                f"unknown hyperparameters {unknown} for teacher {self.name!r}; known: {', '.join(sorted(known))}"
            )
        return self.config_class(**overrides)


def known_teachers() -> str:
    return ", ".join(sorted(TEACHERS))


def get_teacher(name: str) -> _Entry:
    """The registry entry of teacher `name` (its module is imported on first use of `.module`)."""
    if name not in TEACHERS:
        raise ValueError(f"unknown teacher {name!r}; known teachers: {known_teachers()}")
    return _Entry(name, *TEACHERS[name])


def parse_teacher_args(value) -> dict:
    """`teacher_args` as a dict: `None` -> `{}`, a JSON object text (command line) -> dict."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"teacher_args must be a JSON object, e.g. '{{\"max_epochs\": 50}}': {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"teacher_args must be a mapping of hyperparameters, got {type(value).__name__}")
    return dict(value)


def candidate_ranks(scores: np.ndarray, cand_offsets: np.ndarray, target_pos: np.ndarray) -> np.ndarray:
    """1-based rank of each row's target among its candidates; ties broken by prompt order (as
    `trl_dynamicpo.evaluation.target_ranks`). `target_pos` = flat index of each row's target in `scores`."""
    row = np.repeat(np.arange(len(target_pos)), np.diff(cand_offsets))
    target_score = scores[target_pos][row]
    flat = np.arange(len(scores))
    ahead = (scores > target_score) | ((scores == target_score) & (flat < target_pos[row]))
    return 1 + np.bincount(row, weights=ahead, minlength=len(target_pos)).astype(np.int64)


def ranking_summary(ranks: np.ndarray) -> dict:
    """HR@1, HR@5, NDCG@10 and MRR of target ranks (rounded to 6 digits for `build_info.json`)."""
    if len(ranks) == 0:
        return {"rows": 0}
    out = {f"hr@{k}": round(float((ranks <= k).mean()), 6) for k in METRIC_KS}
    out["ndcg@10"] = round(float(np.where(ranks <= 10, 1.0 / np.log2(ranks + 1.0), 0.0).mean()), 6)
    out["mrr"] = round(float((1.0 / ranks).mean()), 6)
    out["rows"] = int(len(ranks))
    return out


def target_positions(data: TeacherData) -> np.ndarray:
    """Flat index (into `cand_items`) of each row's target."""
    row = np.repeat(np.arange(len(data)), np.diff(data.cand_offsets))
    hit = np.flatnonzero(data.cand_items == data.target[row])
    if len(hit) != len(data):
        raise ValueError("every row must hold its target exactly once among its candidates")
    return hit


def check_finite(name: str, result: TeacherResult, data: TeacherData) -> None:
    """Refuse NaN / infinite scores or embeddings, naming the first bad row (a diverged training, typically)."""
    for what, values, row_of in (
        ("candidate_scores", result.candidate_scores, np.repeat(np.arange(len(data)), np.diff(data.cand_offsets))),
        ("embedding", result.embeddings.reshape(len(data), -1), None),
    ):
        bad = ~np.isfinite(values)
        if bad.any():
            flat = np.flatnonzero(bad.reshape(len(values), -1).any(axis=1))
            first = int(row_of[flat[0]]) if row_of is not None else int(flat[0])
            raise ValueError(
                f"teacher {name!r} produced non-finite {what} ({int(bad.sum())} values; first in row {first} of "
                f"split {['train', 'validation', 'test'][int(data.split[first])]}): the training diverged; try a lower "
                "learning_rate in teacher_args"
            )
    if len(result.candidate_scores) != len(data.cand_items) or len(result.embeddings) != len(data):
        raise ValueError(f"teacher {name!r} returned scores or embeddings that do not match the rows")


def run_teacher(name: str, data: TeacherData, teacher_args=None, progress: bool = True) -> TeacherResult:
    """Train teacher `name` on the train rows of `data`, score every row, and return the scores, embeddings and the
    `build_info.json` record (name, hyperparameters, train seconds, train/validation/test metrics on the build's
    candidates computed from the returned `candidate_scores`)."""
    entry = get_teacher(name)
    config = entry.make_config(teacher_args)
    if getattr(config, "seed", 0) is None:  # default: the build's seed
        config = replace(config, seed=data.seed)
    start = time.perf_counter()
    result = entry.module.fit_and_score(data, config, progress=progress)
    seconds = time.perf_counter() - start
    check_finite(name, result, data)
    ranks = candidate_ranks(result.candidate_scores.astype(np.float64), data.cand_offsets, target_positions(data))
    metrics = {split: ranking_summary(ranks[data.split == code]) for code, split in enumerate(SPLIT_NAMES)}
    info = {
        "name": name,
        "description": entry.description,
        "hyperparameters": asdict(config),
        **result.info,
        "metrics": {
            "validation": metrics["validation"],
            "test": metrics["test"],
            # In-sample: the model was trained on these targets (never as an input), so this is optimistic.
            "train_in_sample": metrics["train"],
        },
        "columns": TEACHER_COLUMNS,
        # Wall time, the only field that differs between two builds with the same seed.
        "train_seconds": round(seconds, 2),
    }
    result.info = info
    return result


SPLIT_NAMES = ("train", "validation", "test")
