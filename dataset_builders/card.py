"""The dataset card (`README.md` with a YAML header) of a built dataset folder."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .config import SPLITS
from .output import LAYOUT
from .sources.base import Source


_SIZES = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
]

_PARAMETER_MEANINGS = {
    "min_rating": "interactions with a lower rating dropped (None: all kept)",
    "k_core": "users and items with fewer interactions removed iteratively (0: off)",
    "max_history": "history = the last max_history items before the target",
    "min_history": "rows with a shorter history dropped",
    "split": "time: global cut on target timestamps; leave-last-out: last row per user is test, previous validation",
    "split_ratios": "train/validation/test shares of the rows (time split)",
    "num_candidates": "candidates per prompt (target + negatives)",
    "negative_sampling": "uniform, or popularity (probability proportional to train_count + 1)",
    "seed": "per-row RNG seed: numpy default_rng((seed, blake2b(user_id), position of the target))",
    "head_share": "share of training interactions covered by the 'head' items",
    "tail_share": "maximum share of training interactions covered by the 'tail' items",
    "domain": "prompt template domain",
    "teacher": "sequential recommender trained on the train split whose scores are columns (see Teacher)",
}


def size_category(rows: int) -> str:
    return next((label for bound, label in _SIZES if rows < bound), "100M<n<1B")


def _data_files(info: dict, config: str) -> list[dict]:
    # The exact files of the build, not a pattern such as `data/train-*.parquet`: a stray shard left in the folder
    # would match the pattern and be loaded as data.
    splits = info.get("output", {}).get("configs", LAYOUT)[config]
    return [{"split": split, "path": paths[0] if len(paths) == 1 else list(paths)} for split, paths in splits.items()]


def is_import(info: dict) -> bool:
    """Whether the build imported already-processed rows (`sdpo-json`) rather than building them from interactions."""
    return info.get("kind") == "import" or "presplit" in info["notes"]


def card_metadata(source: Source, info: dict) -> dict:
    """The YAML header: license, task, tags, pretty name, and the `default` and `items` configs (their exact files)."""
    rows = sum(info["statistics"]["rows"].values())
    return {
        "pretty_name": f"{source.pretty_name} multi-negative preferences (DynamicPO)",
        **source.license,
        "task_categories": ["text-generation"],
        "tags": ["recommendation", "preference", "dynamicpo"],
        "size_categories": [size_category(rows)],
        "configs": [
            {"config_name": "default", "default": True, "data_files": _data_files(info, "default")},
            {"config_name": "items", "data_files": _data_files(info, "items")},
        ],
    }


def _statistics_table(info: dict) -> str:
    stats = info["statistics"]
    lines = ["| split | rows | users | mean history length | target timestamps |", "|---|---:|---:|---:|---|"]
    for split in SPLITS:
        span = stats["timestamp_range"][split]
        span_text = f"{span[0]} – {span[1]}" if span else "–"
        users = stats["users_per_split"][split]
        lines.append(
            f"| {split} | {stats['rows'][split]:,} | {'–' if users is None else f'{users:,}'} | "
            f"{stats['mean_history_length'][split]:.2f} | {span_text} |"
        )
    lines.append("")
    if stats["users"] is None:
        lines.append(f"- users: unknown (the records have no `user_id`); items: {stats['items']:,}")
    else:
        lines.append(f"- users: {stats['users']:,}; items: {stats['items']:,}")
    if stats.get("candidates_per_row"):
        low, high = stats["candidates_per_row"]
        lines.append(f"- candidates per row: {low}" + (f" to {high}" if high != low else ""))
    if stats.get("interactions_kept") is not None:
        lines.append(f"- interactions kept: {stats['interactions_kept']:,}")
    lines.append(f"- rows whose history has the maximum length: {stats['share_rows_with_full_history']:.1%}")
    groups = stats["item_groups"]
    lines.append(f"- item groups: head {groups['head']:,}, mid {groups['mid']:,}, tail {groups['tail']:,}")
    dropped = {k: v for k, v in info["dropped"].items() if v}
    if dropped:
        lines.append(
            "- dropped or changed while preprocessing: " + ", ".join(f"{k} = {v:,}" for k, v in dropped.items())
        )
    return "\n".join(lines)


_IMPORT_PARAMETER_MEANINGS = {
    "seed": "picks each row's template: numpy default_rng((seed, split, index of the row in its split))",
    "domain": _PARAMETER_MEANINGS["domain"],
    "head_share": "share of the training rows' targets covered by the 'head' items",
    "tail_share": "maximum share of the training rows' targets covered by the 'tail' items",
}


def _parameters_table(info: dict) -> str:
    params = info["parameters"]
    meanings = _IMPORT_PARAMETER_MEANINGS if is_import(info) else _PARAMETER_MEANINGS
    lines = ["| parameter | value | meaning |", "|---|---|---|"]
    for key, meaning in meanings.items():
        if key in params:
            lines.append(f"| `{key}` | `{params[key]}` | {meaning} |")
    return "\n".join(lines)


def _preprocessing(info: dict) -> str:
    """The preprocessing section: parameters and steps (an import of processed files only renders prompts)."""
    params = info["parameters"]
    if is_import(info):
        return f"""{_parameters_table(info)}

Imported from already-processed files ({", ".join(info["notes"]["input_files"].values())}): the rows are imported
as given. Their splits, histories, candidates (in their order) and targets are kept; nothing is sampled, filtered or
re-split here, and no interactions are read. Titles are whitespace-normalized; `item_id` is the index of a title in
order of first appearance; `user_id` is the record's `user_id`, or `<split>-<index>` when the record has none (users
are then not counted). Only the prompts are rendered here ({_template_choice(params)})."""
    return f"""{_parameters_table(info)}

1. Items without a title are dropped with their interactions; a title shared by several items gets `" [id <item_id>]"`
   on every item but the first (item-file order), so each title names exactly one item. Titles are
   whitespace-normalized (MovieLens: a trailing article is moved to the front, "Usual Suspects, The (1995)" becomes
   "The Usual Suspects (1995)").
2. A user's first interaction with an item is kept (repeats are dropped) and each user's interactions are ordered by
   timestamp ({info["source"]["timestamp"]}), ties by line in the raw file. Every interaction with at least
   `min_history` earlier ones is a row: the target, and up to `max_history` items just before it (oldest first).
3. Split {_split_text(params)}. No history contains its target or any interaction later than its target (checked on
   every build).
4. Candidates: the target plus negatives drawn without replacement from the items not in the row's history and not the
   target, the target at a random position; each row has its own RNG, so builds are reproducible byte for byte."""


def _template_choice(params: dict) -> str:
    if len(params["templates"]) > 1:
        return "the per-row template choice is seeded by (seed, split, index)"
    return "one fixed template"


def _split_text(params: dict) -> str:
    if params["split"] == "leave-last-out":
        return "(leave-last-out): each user's last row is test, the row before it validation, the rest train"
    shares = ":".join(f"{share:g}" for share in params["split_ratios"])
    return (
        f"by time ({shares}): rows sorted by target timestamp (ties by raw-file line) and cut at those shares, so the "
        "training targets are no later than the validation targets, which are no later than the test targets"
    )


def _intro(info: dict, files: str, source: Source) -> str:
    if is_import(info):
        span = info["statistics"].get("candidates_per_row") or [0, 0]
        negatives = f"{span[0] - 1}" if span[0] == span[1] else f"{span[0] - 1} to {span[1] - 1}"
        return f"""\
Recommendation prompts imported as given from already-processed files: each row keeps its record's target as the
positive (`chosen`) and the record's {negatives} other candidates as negatives (`rejected`), in the format used by
S-DPO, DMPO and DynamicPO (multi-negative preference optimization). Imported by `dataset_builders` of `trl_dynamicpo`
from {files}; the rows, their splits and their candidates are those of the files."""
    return f"""\
Next-item recommendation prompts with one positive (`chosen`, the item the user really consumed next) and
{info["parameters"]["num_candidates"] - 1} negatives (`rejected`) among the candidates listed in the prompt, in the
format used by S-DPO, DMPO and DynamicPO (multi-negative preference optimization). Built by `dataset_builders` of
`trl_dynamicpo` from the raw files {files} of [{source.pretty_name}]({source.homepage})."""


def _train_count_text(info: dict) -> str:
    if is_import(info):
        return "`train_count` is the number of training rows whose target is the item."
    return """\
`train_count` is the number of interactions with the item that belong to training time: with the time split, the
kept interactions no later than the last training target (in timestamp, then raw-file order); with leave-last-out,
each user's interactions before the user's first validation or test target."""


def _teacher_section(info: dict) -> str:
    """The teacher section (no timing: the card is identical for identical builds)."""
    teacher = info.get("teacher")
    if not teacher:
        return ""
    metrics = teacher["metrics"]
    rows = ["| split | rows | HR@1 | HR@5 | NDCG@10 | MRR |", "|---|---:|---:|---:|---:|---:|"]
    labels = (
        ("validation", "validation"),
        ("test", "test"),
        ("train_cross_fitted", "train (cross-fitted)"),
        ("train_in_sample", "train (in-sample)"),
    )
    for split, label in labels:
        m = metrics.get(split, {})
        if m.get("rows"):
            rows.append(
                f"| {label} | {m['rows']:,} | {m['hr@1']:.4f} | {m['hr@5']:.4f} | {m['ndcg@10']:.4f} | {m['mrr']:.4f} |"
            )
    hyper = ", ".join(f"`{k}={v}`" for k, v in teacher["hyperparameters"].items())
    candidates = info["parameters"].get("num_candidates")
    return f"""
## Teacher: {teacher["name"]}

{teacher["description"]}.

Trained by the builder on the item sequences of the **train split only** (each user's train rows: the first row's
history, then the targets), early-stopped on the validation rows; the test rows are never used for training or model
selection. Early stopping: {teacher["early_stopping"]}; best epoch {teacher["best_epoch"]} of {teacher["epochs_run"]}.
Every row, train rows included, is scored from its own `history` alone: the model input never holds the row's target.
{_train_scores_note(teacher)}

Its ranking of each row's {candidates} candidates, computed from the `candidate_scores` column (ties broken by prompt
order), next to which any LLM recommender trained on this data can be placed:

{chr(10).join(rows)}

Hyperparameters: {hyper}.

Columns:

- `candidate_scores` (list of floats, one per candidate, in `candidates` order): {teacher["score"]}.
- `rejected_scores` (list of floats): the same values at the positions of `rejected` (NAPO's confidence in each
  negative).
- `embedding` (list of floats): {teacher["embedding"]}; NAPO's in-batch similarity.
{_item_embeddings_note(teacher)}"""


def _train_scores_note(teacher: dict) -> str:
    """Where the train rows' scores come from: the full teacher (in-sample) or the cross-fitting folds."""
    folds = teacher.get("cross_fitting")
    if not folds:
        return "The train rows' targets were training labels, so their scores are in-sample (optimistic)."
    return f"""\
The train rows' `candidate_scores` and `rejected_scores` are **out-of-fold** (cross-fitting over {folds["folds"]} folds of
users): each comes from a teacher trained and early-stopped without any row of the row's user, so they are
out-of-sample like the validation and test rows' scores ("train (cross-fitted)" below; "train (in-sample)" is the full
teacher's score of the same rows, for comparison). The validation and test rows' scores, every row's `embedding` and
the item embeddings come from the **full teacher** (one embedding space for all splits), so a train row's `embedding`
is in-sample and does not reproduce its `candidate_scores`."""


def _item_embeddings_note(teacher: dict) -> str:
    table = teacher.get("item_embeddings")
    if not table:
        return ""
    return f"""
Item embeddings: `{table["file"]}` (columns `item_id`, `title`, `embedding`; {table["rows"]:,} items x {table["dim"]}
floats) holds the teacher's item vectors, the ones its scores dot the state with, for every item of the catalog. Hybrid
item tokens (`trl_dynamicpo.item_tokens`, `DynamicPOConfig(item_embeddings=...)`) look a prompt's titles up in it.
"""


def card_text(source: Source, info: dict, example: dict | None, repo_hint: str = "path/to/this/folder") -> str:
    """The complete README.md text."""
    header = yaml.safe_dump(card_metadata(source, info), sort_keys=False, allow_unicode=True, width=1000)
    params = info["parameters"]
    notes = info["notes"]
    files = ", ".join(f"`{record['name']}`" for record in info["source"]["files"])
    note_lines = "\n".join(f"- {key}: {value}" for key, value in notes.items() if key != "input_files")
    history = "history titles as given in the file" if is_import(info) else "history titles, oldest first"
    counted = "training rows' targets" if is_import(info) else "training interactions"
    template_blocks = "\n\n".join(f"```text\n{text}\n```" for text in params["templates"])
    if example and isinstance(example.get("embedding"), list) and len(example["embedding"]) > 4:
        dim = len(example["embedding"])
        example = {**example, "embedding": [*example["embedding"][:4], f"... ({dim} floats in all)"]}
    example_block = (
        "```json\n" + json.dumps(example, indent=2, ensure_ascii=False) + "\n```" if example else "(no rows)"
    )
    teacher_columns = (
        f"- `candidate_scores`, `rejected_scores`, `embedding`: the {info['teacher']['name']} teacher's scores and "
        "sequence state, see Teacher below.\n"
        if info.get("teacher")
        else ""
    )
    license_line = source.license["license"]
    if "license_link" in source.license:
        license_line = f"{source.license.get('license_name', license_line)} ({source.license['license_link']})"
    return f"""---
{header}---

# {source.pretty_name}: multi-negative preference data for LLM recommenders

{_intro(info, files, source)}

## Source, terms and citation

{source.terms}

License: {license_line}. Please cite the data:

> {source.citation}

Only the raw data's own terms apply; the processing adds no restriction. Files used, with their SHA-256 checks, are
listed in `build_info.json`.

## Statistics

{_statistics_table(info)}

{note_lines}

## Preprocessing

{_preprocessing(info)}

## Prompt format

The history and the candidates are listed one title per line, verbatim, without quotes or numbering; titles are
unique and contain no newline, so every line is exactly one title. The prompt ends with `Answer:` (no trailing space);
`chosen` / `rejected` are bare titles (the trainer inserts the separating space). Template(s) used
({"rotated per row" if len(params["templates"]) > 1 else "one fixed template"}):

{template_blocks}

## Columns

- `prompt` (string): the full prompt.
- `chosen` (string): the target title; `target` (string) is the same title.
- `rejected` (list of strings): the other candidate titles, in prompt order.
- `candidates` (list of strings): all candidate titles in prompt order (includes the target).
- `history` (list of strings): {history}.
- `user_id` (string), `target_id` (string, item id of the target), `timestamp` (int: {info["source"]["timestamp"]}).
{teacher_columns}
Config `items` (split `train`): `item_id`, `title`, `train_count`, `popularity_rank`, `popularity_group`.
{_train_count_text(info)} `popularity_rank` orders items by
`train_count` (1 = most popular; ties by item id). `popularity_group`: items sorted by rank; **head** = the shortest
prefix of items that together make {params["head_share"]:.0%} of the {counted}; **tail** = the longest
suffix of least popular items that together make at most {params["tail_share"]:.0%} of them (items never seen in
training are always tail); **mid** = the rest.

{_teacher_section(info)}
## How to load

```python
from datasets import load_dataset

dataset = load_dataset("{repo_hint}")           # train / validation / test
items = load_dataset("{repo_hint}", "items")    # item table (split "train")
```

## Example row

{example_block}
"""


def write_card(
    output_dir: Path, source: Source, info: dict, example: dict | None, repo_hint: str | None = None
) -> Path:
    """Write `<output_dir>/README.md`; `repo_hint` is the name shown in the loading snippet (default: the folder)."""
    path = Path(output_dir) / "README.md"
    path.write_text(card_text(source, info, example, repo_hint=repo_hint or str(output_dir)), encoding="utf-8")
    return path
