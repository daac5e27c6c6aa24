"""Parameters of a dataset build (one dataclass, shared by the API and the command line)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .teachers import TEACHERS, get_teacher, parse_teacher_args


SPLITS = ("train", "validation", "test")


@dataclass
class BuildConfig:
    """Parameters of [`build_dataset`]. Every field is also a command-line option (`--field-name`).

    Defaults follow the S-DPO / LLaRA / DynamicPO preprocessing: chronological 8:1:1 split, the last 10 items before the
    target as history, rows with fewer than 3 history items dropped, 20 candidates (target + 19 uniformly sampled
    negatives), one fixed prompt template.

    Example:
    ```python
    >>> from dataset_builders import BuildConfig
    >>> BuildConfig(max_history=5, negative_sampling="popularity").num_candidates
    20
    ```
    """

    # Inputs
    raw_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder holding the raw files (flat, or as extracted from the official archive). Nothing "
            "is downloaded when it is given."
        },
    )
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "Download cache root (default ~/.cache/trl_dynamicpo/raw); files go to <cache>/<dataset>."},
    )
    offline: bool = field(
        default=False,
        metadata={"help": "Never download (also implied by HF_DATASETS_OFFLINE=1 or HF_HUB_OFFLINE=1)."},
    )
    verify_checksums: bool = field(
        default=True, metadata={"help": "Check raw files against their known SHA-256 values."}
    )
    genre: str = field(
        default="poetry",
        metadata={
            "help": "UCSD Book Graph genre subset (goodreads-ucsd only).",
            "choices": [
                "children",
                "comics_graphic",
                "fantasy_paranormal",
                "history_biography",
                "mystery_thriller_crime",
                "poetry",
                "romance",
                "young_adult",
            ],
        },
    )
    raw_encoding: str | None = field(
        default=None,
        metadata={
            "help": "Override the text encoding of the item (title) file, e.g. latin-1 for a re-encoded copy. "
            "Default: the encoding of the official file."
        },
    )
    on_unknown_item: str = field(
        default="error",
        metadata={
            "help": "What to do with interactions whose item id is absent from the item file: raise an error "
            "naming the line, or drop them (counted in build_info.json).",
            "choices": ["error", "drop"],
        },
    )
    # Filtering and sequences
    min_rating: float | None = field(
        default=None,
        metadata={"help": "Keep only interactions with rating >= this (sources with ratings); default keeps all."},
    )
    k_core: int = field(
        default=0,
        metadata={"help": "Iteratively drop users and items with fewer than k interactions (0 = off)."},
    )
    max_history: int = field(default=10, metadata={"help": "History = the last max_history items before the target."})
    min_history: int = field(default=3, metadata={"help": "Rows whose history has fewer items are dropped."})
    # Split
    split: str = field(
        default="time",
        metadata={
            "help": "time: global cut on the target timestamps by split_ratios; leave-last-out: each user's last "
            "target is test, the one before validation.",
            "choices": ["time", "leave-last-out"],
        },
    )
    split_ratios: tuple[float, float, float] = field(
        default=(0.8, 0.1, 0.1), metadata={"help": "train/validation/test shares of the rows (time split)."}
    )
    # Candidates
    num_candidates: int = field(
        default=20, metadata={"help": "Candidates per prompt: the target plus num_candidates - 1 negatives."}
    )
    negative_sampling: str = field(
        default="uniform",
        metadata={
            "help": "uniform: negatives drawn uniformly from the items outside the row's history and target; "
            "popularity: drawn with probability proportional to train_count + 1.",
            "choices": ["uniform", "popularity"],
        },
    )
    seed: int = field(
        default=42,
        metadata={
            "help": "Seed; each row's RNG is seeded from (seed, user, position), so a seed gives a byte-identical "
            "dataset."
        },
    )
    # Prompts
    templates: int | list[str] = field(
        default=1,
        metadata={
            "help": "Number N of the domain's built-in prompt templates to rotate over (chosen per row by the "
            "row's RNG; 1 = one fixed template), or a JSON file with a list of templates using {history}, "
            "{candidates} and {num_candidates} and ending with 'Answer:'."
        },
    )
    domain: str | None = field(
        default=None,
        metadata={
            "help": "Prompt domain (default: the source's; sdpo-json defaults to generic items).",
            "choices": ["movies", "music", "books", "items"],
        },
    )
    # Item table
    head_share: float = field(
        default=0.2,
        metadata={
            "help": "'head' items: the most popular items that together make the first head_share of the "
            "training interactions."
        },
    )
    tail_share: float = field(
        default=0.2,
        metadata={
            "help": "'tail' items: the least popular items that together make at most tail_share of the "
            "training interactions (items never seen in training are always tail)."
        },
    )
    # Teacher
    teacher: str | None = field(
        default=None,
        metadata={
            "help": "Train this sequential recommender on the train split and add its scores to every split: columns "
            "candidate_scores (one per candidate), rejected_scores (aligned with rejected) and embedding (its state "
            "for the row's history); metrics in build_info.json and the card. Needs item ids (not sdpo-json).",
            "choices": sorted(TEACHERS),
        },
    )
    teacher_args: dict | None = field(
        default=None,
        metadata={
            "help": "Teacher hyperparameters as a JSON object (command line) or dict, e.g. "
            '\'{"max_epochs": 50, "hidden_size": 32}\' (fields of dataset_builders.teachers.sasrec.SASRecConfig; '
            "seed defaults to --seed)."
        },
    )
    teacher_folds: int = field(
        default=3,
        metadata={
            "help": "Cross-fitting folds over users for the train rows' teacher scores: each fold's train rows get "
            "candidate_scores / rejected_scores from a teacher trained without that fold's users (k more trainings), "
            "so that they are out-of-sample like the validation and test rows' scores. The full teacher still gives "
            "the validation and test scores, every row's embedding and item_embeddings.parquet. 1 = off: the train "
            "rows are scored in-sample by the full teacher."
        },
    )
    # Output
    push_to_hub: str | None = field(
        default=None, metadata={"help": "Push the built folder to this Hub dataset repository (user/name)."}
    )
    private: bool = field(default=False, metadata={"help": "Create the Hub repository as private."})
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Replace an output folder that holds files this builder did not write (a README of your own, a "
            "save_to_disk dataset, stray files): they are deleted. Without it such a folder is refused; a folder "
            "holding only a previous build is always replaced."
        },
    )
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})
    verbose: bool = field(default=True, metadata={"help": "Print the summary table at the end."})

    def __post_init__(self):
        self.split_ratios = tuple(float(r) for r in self.split_ratios)
        if len(self.split_ratios) != 3 or min(self.split_ratios) < 0 or abs(sum(self.split_ratios) - 1) > 1e-6:
            raise ValueError(f"split_ratios must be three non-negative shares summing to 1, got {self.split_ratios}")
        if self.split == "time" and self.split_ratios[0] <= 0:
            # Refused before any work: an empty train split would only fail in training, with a bare IndexError.
            raise ValueError(
                f"split_ratios gives the train split a share of 0 ({self.split_ratios}): the train split would be "
                "empty. Give it a positive share, e.g. --split-ratios 0.8 0.1 0.1."
            )
        if self.max_history < 1 or self.min_history < 0 or self.min_history > self.max_history:
            raise ValueError(
                f"need 0 <= min_history <= max_history and max_history >= 1, got {self.min_history}, "
                f"{self.max_history}"
            )
        if self.num_candidates < 2:
            raise ValueError(
                f"num_candidates must be at least 2 (the target and a negative), got {self.num_candidates}"
            )
        if self.k_core < 0 or self.seed < 0:
            raise ValueError("k_core and seed must be non-negative")
        if not (0 <= self.head_share <= 1 and 0 <= self.tail_share <= 1 and self.head_share + self.tail_share <= 1):
            raise ValueError("head_share and tail_share must be in [0, 1] and sum to at most 1")
        if isinstance(self.teacher_folds, bool) or not isinstance(self.teacher_folds, int) or self.teacher_folds < 1:
            raise ValueError(
                f"teacher_folds must be an integer >= 2 (cross-fitting folds) or 1 (off), got {self.teacher_folds!r}"
            )
        if self.teacher is not None:
            entry = get_teacher(self.teacher)  # unknown name: lists the known teachers
            self.teacher_args = parse_teacher_args(self.teacher_args) or None
            entry.make_config(self.teacher_args)  # unknown or invalid hyperparameters fail here, before any work
        elif self.teacher_args:
            raise ValueError("teacher_args were given without a teacher (--teacher NAME)")
        for f in fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise ValueError(f"{f.name} must be one of {choices}, got {value!r}")
        if isinstance(self.templates, int) and self.templates < 1:
            raise ValueError("templates must be >= 1")

    def to_dict(self, dataset: str | None = None) -> dict:
        """The parameters that shape the data (paths, Hub and display options left out), for build_info.json."""
        skip = {"raw_dir", "cache_dir", "offline", "push_to_hub", "private", "progress", "verbose", "overwrite"}
        if self.teacher is None:  # builds without a teacher keep the parameters they always had
            skip |= {"teacher", "teacher_args", "teacher_folds"}
        if dataset is not None and dataset != "goodreads-ucsd":
            skip.add("genre")
        out = {k: v for k, v in asdict(self).items() if k not in skip}
        out["split_ratios"] = list(self.split_ratios)
        return out
