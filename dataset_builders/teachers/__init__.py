"""Teachers: classical sequential recommenders trained on a build's own train split, whose scores go into the dataset.

A teacher adds three columns to every split of a build (`--teacher NAME`, `BuildConfig(teacher=NAME)`):

- `candidate_scores` (list of floats): one score per candidate, in `candidates` order (higher = more likely next);
- `rejected_scores` (list of floats): the same values at the positions of `rejected` (NAPO's confidence in each
  negative);
- `embedding` (list of floats): the teacher's sequence state for the row's history (NAPO's in-batch similarity).

Every row is scored from its own `history` only: the model input never holds the row's target. The teacher is trained
on the item-id sequences of the train split only (validation rows for early stopping, test rows untouched), so its
validation and test metrics are honest held-out numbers on the build's own candidates.

Cross-fitting (`folds` of [`run_teacher`], `--teacher-folds`): a teacher trained on the train split scores the train
rows in-sample, from a model fit to those very targets (a stacking leak: a model trained on the scores learns to trust
them more than it should at test time). With `folds=k >= 2` the users who have train rows are split into k folds and
the train rows of each fold get the scores of a teacher trained (and early-stopped) without any row of that fold's
users. The full teacher is trained first, exactly as with `folds=1`, and keeps everything else: the validation and
test rows' scores, every row's `embedding` and the item embeddings (the k fold teachers have k unrelated embedding
spaces, so their states could not share one projector).

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
SPLIT_NAMES = ("train", "validation", "test")
#: `TeacherData.split` code of the rows a cross-fitting fold teacher must not learn from.
HELD_OUT = 3
#: What `build_info.json` keeps of each fold teacher's own record (the validation curve and texts stay with the full
#: teacher's).
FOLD_RECORD_KEYS = ("epochs_run", "best_epoch", "train_sequences", "train_transitions")


@dataclass
class TeacherData:
    """What a teacher sees of a build: items as catalog indices `0..num_items-1`, rows as flat arrays.

    Attributes:
        num_items (`int`): catalog size.
        split (`np.ndarray`): int8 per row, 0 train / 1 validation / 2 test / 3 held out (the rows of a
            cross-fitting fold's users: a fold teacher neither trains nor early-stops on them, it only scores them).
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
            split = (*SPLIT_NAMES, "held out")[int(data.split[first])]
            raise ValueError(
                f"teacher {name!r} produced non-finite {what} ({int(bad.sum())} values; first in row {first} of "
                f"split {split}): the training diverged; try a lower learning_rate in teacher_args"
            )
    if len(result.candidate_scores) != len(data.cand_items) or len(result.embeddings) != len(data):
        raise ValueError(f"teacher {name!r} returned scores or embeddings that do not match the rows")


def user_folds(data: TeacherData, folds: int, seed: int) -> np.ndarray:
    """Cross-fitting fold of each row's user, `-1` for users without train rows (they have nothing to cross-fit).

    The users with train rows, in a random order drawn from `(seed, folds)`, are dealt round-robin into `folds` folds
    of (almost) equal numbers of users; a user's rows all share one fold.

    Args:
        data ([`TeacherData`]): the build's rows.
        folds (`int`): number of folds, at most the number of users with train rows.
        seed (`int`): the teacher's seed.

    Returns:
        `np.ndarray`: int64 fold per row.
    """
    users = np.unique(data.user[data.split == 0])
    if folds > len(users):
        raise ValueError(
            f"teacher_folds={folds} needs at least {folds} users with train rows; this build has {len(users)}"
        )
    order = np.random.default_rng((seed, folds)).permutation(len(users))
    fold_of_user = np.empty(len(users), dtype=np.int64)
    fold_of_user[order] = np.arange(len(users)) % folds
    where = np.searchsorted(users, data.user)
    known = (where < len(users)) & (users[np.minimum(where, len(users) - 1)] == data.user)
    return np.where(known, fold_of_user[np.minimum(where, len(users) - 1)], -1)


def fold_seed(seed: int, fold: int) -> int:
    """The seed of cross-fitting fold `fold`'s teacher, derived from the full teacher's `seed` (deterministic, and
    unrelated to the seeds of the other folds and of the full teacher)."""
    return int(np.random.SeedSequence((seed, fold)).generate_state(1)[0])


def cross_fit(
    entry, config, data: TeacherData, row_fold: np.ndarray, progress: bool = True
) -> tuple[np.ndarray, dict]:
    """Out-of-fold candidate scores of the train rows (see the module docstring).

    Each fold's teacher gets `data` with every row of the fold's users marked `HELD_OUT` (so it neither trains nor
    early-stops on them), the config with a seed derived by [`fold_seed`], and scores the fold's train rows.

    Args:
        entry: the teacher's registry entry ([`get_teacher`]).
        config: the full teacher's config (its seed set).
        data ([`TeacherData`]): the build's rows.
        row_fold (`np.ndarray`): the fold of each row's user, from [`user_folds`].
        progress (`bool`): show the fold teachers' progress bars.

    Returns:
        `(scores, record)`: `scores` aligned with `data.cand_items`, filled on the train rows only (NaN elsewhere), and
        the `build_info.json` record (folds, seeds, users, rows scored and what each fold teacher trained on).
    """
    folds = int(row_fold.max()) + 1
    rows_per_candidate = np.repeat(np.arange(len(data)), np.diff(data.cand_offsets))
    scores = np.full(len(data.cand_items), np.nan)
    record = {"folds": folds, "fold_teachers": []}
    start = time.perf_counter()
    for fold in range(folds):
        held = row_fold == fold
        fold_data = replace(data, split=np.where(held, HELD_OUT, data.split).astype(data.split.dtype))
        fold_config = replace(config, seed=fold_seed(config.seed, fold))
        result = entry.module.fit_and_score(fold_data, fold_config, progress=progress)
        check_finite(f"{entry.name} (fold {fold})", result, fold_data)
        scored = (held & (data.split == 0))[rows_per_candidate]
        scores[scored] = result.candidate_scores[scored]
        record["fold_teachers"].append(
            {
                "fold": fold,
                "seed": fold_config.seed,
                "held_out_users": int(len(np.unique(data.user[held]))),
                "scored_train_rows": int((held & (data.split == 0)).sum()),
                **{k: result.info[k] for k in FOLD_RECORD_KEYS if k in result.info},
            }
        )
    record["seconds"] = round(time.perf_counter() - start, 2)
    return scores, record


def run_teacher(
    name: str, data: TeacherData, teacher_args=None, progress: bool = True, folds: int = 1
) -> TeacherResult:
    """Train teacher `name` on the train rows of `data`, score every row, and return the scores, embeddings and the
    `build_info.json` record (name, hyperparameters, train seconds, train/validation/test metrics on the build's
    candidates computed from the returned `candidate_scores`).

    Args:
        name (`str`): a key of `TEACHERS`.
        data ([`TeacherData`]): the build's rows.
        teacher_args (`dict` or JSON `str`, *optional*): hyperparameters overriding the teacher config's defaults.
        progress (`bool`): show progress bars.
        folds (`int`): cross-fitting folds for the train rows' scores (see the module docstring); 1 = off, the train
            rows are scored in-sample by the full teacher.
    """
    entry = get_teacher(name)
    config = entry.make_config(teacher_args)
    if getattr(config, "seed", 0) is None:  # default: the build's seed
        config = replace(config, seed=data.seed)
    # Before any training: too many folds for the users fails here, not after the full teacher.
    row_fold = user_folds(data, folds, config.seed) if folds > 1 else None
    start = time.perf_counter()
    # The full teacher first, exactly as without cross-fitting: its outputs must not depend on `folds`.
    result = entry.module.fit_and_score(data, config, progress=progress)
    seconds = time.perf_counter() - start
    check_finite(name, result, data)
    targets = target_positions(data)
    ranks = candidate_ranks(result.candidate_scores.astype(np.float64), data.cand_offsets, targets)
    metrics = {split: ranking_summary(ranks[data.split == code]) for code, split in enumerate(SPLIT_NAMES)}
    info = {
        "name": name,
        "description": entry.description,
        "hyperparameters": asdict(config),
        **result.info,
        "metrics": {
            "validation": metrics["validation"],
            "test": metrics["test"],
            # In-sample: the full teacher was trained on these targets (never as an input), so this is optimistic.
            "train_in_sample": metrics["train"],
        },
        "columns": TEACHER_COLUMNS,
        # Wall time, the only field (with cross_fitting.seconds) that differs between two builds with the same seed.
        "train_seconds": round(seconds, 2),
    }
    if row_fold is not None:
        out_of_fold, info["cross_fitting"] = cross_fit(entry, config, data, row_fold, progress)
        train = np.repeat(data.split == 0, np.diff(data.cand_offsets))
        scores = result.candidate_scores.copy()
        scores[train] = out_of_fold[train]
        ranks = candidate_ranks(scores.astype(np.float64), data.cand_offsets, targets)
        info["metrics"]["train_cross_fitted"] = ranking_summary(ranks[data.split == 0])
        info["cross_fitting"]["note"] = (
            "train rows' candidate_scores / rejected_scores are out-of-fold (each from a teacher trained without the "
            "row's user); validation and test scores, every row's embedding and the item embeddings are the full "
            "teacher's"
        )
        result = replace(result, candidate_scores=scores)
    result.info = info
    return result
