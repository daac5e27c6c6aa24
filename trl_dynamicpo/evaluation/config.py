"""[`EvaluationConfig`]: every setting of [`evaluate_recommender`] in one object, and the choices they take."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field


MATCH_MODES = ("exact", "normalized", "title")
SCORE_MODES = ("sum", "mean")
PROTOCOLS = ("generation", "ranking", "constrained_generation")
# The protocols run when none are named: the papers' generation protocol and the ranking protocol.
DEFAULT_PROTOCOLS = ("generation", "ranking")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}.")


@dataclass
class EvaluationConfig:
    """Settings of [`evaluate_recommender`], passed as one object: `evaluate_recommender(model, tokenizer, ds,
    config)`. The fields also work as keyword arguments (`evaluate_recommender(model, tokenizer, ds,
    max_samples=100)`, or `**asdict(config)`).

    The defaults follow the papers' evaluation script (greedy decoding, 20 new tokens, 1024 prompt tokens,
    case-sensitive substring matching). Each protocol evaluates the first `<protocol>_max_samples` rows
    (`max_samples` when None); `num_samples` and the baselines follow the ranking protocol's rows, or the generation
    protocol's when it runs alone.

    Example:

    ```python
    >>> config = EvaluationConfig(max_samples=1000, generation_max_samples=200)
    >>> config.max_samples_for("generation"), config.max_samples_for("ranking")
    (200, 1000)
    ```
    """

    protocols: list[str] = field(
        default_factory=lambda: list(DEFAULT_PROTOCOLS),
        metadata={
            "help": "Protocols to run, any of 'generation' (papers' free greedy decoding), 'ranking' (packed) and "
            "'constrained_generation' (greedy decoding restricted to the row's candidate titles, matched by 'title')."
        },
    )
    match: str = field(
        default="exact",
        metadata={
            "help": "Title matching of the generation protocol: 'exact' (case-sensitive substring, as S-DPO's code), "
            "'normalized' (lower-cased, whitespace-collapsed and stripped on both sides, as LLaRA's code) or 'title' "
            "(the whole stripped output is the title; the rule of the constrained_generation protocol)."
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
    # Added after the fields above so that their positions stay what they were.
    generation_max_samples: int | None = field(
        default=None,
        metadata={
            "help": "Rows of the (slower) generation protocols (free and constrained), the first ones; null: "
            "max_samples."
        },
    )
    ranking_max_samples: int | None = field(
        default=None, metadata={"help": "Rows of the ranking protocol and the baselines; null: max_samples."}
    )
    bootstrap_resamples: int = field(
        default=0,
        metadata={"help": "With > 0, 95% percentile-bootstrap intervals of HR@1 and NDCG@10 over the prompts."},
    )

    candidate_orders: int = field(
        default=1,
        metadata={
            "help": "Ranking protocol: score every prompt under this many evenly spaced rotations of its candidate "
            "list and average each candidate's score, which cancels the model's preference for places in the list "
            "(`trl_dynamicpo.evaluation.orders`). 1: the prompts as built. Costs one ranking pass per order."
        },
    )

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
        for name in ("max_samples", "generation_max_samples", "ranking_max_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be positive or None.")
        if self.candidate_orders < 1:
            raise ValueError(f"`candidate_orders` must be >= 1, got {self.candidate_orders}.")
        if self.bootstrap_resamples < 0:
            raise ValueError("`bootstrap_resamples` must be 0 (no intervals) or positive.")

    def max_samples_for(self, protocol: str) -> int | None:
        """How many of the first rows `protocol` evaluates (None: all): its own count, else `max_samples`.
        Constrained generation decodes like the generation protocol and takes its rows (`generation_max_samples`)."""
        _check_choice("protocol", protocol, PROTOCOLS)
        own = getattr(self, f"{'generation' if protocol == 'constrained_generation' else protocol}_max_samples")
        return self.max_samples if own is None else own

    @classmethod
    def from_settings(cls, config: EvaluationConfig | None = None, **settings) -> EvaluationConfig:
        """`config` with the fields named in `settings` replaced (checked again), or a new config of `settings`.

        Raises:
            TypeError: If `config` is not an `EvaluationConfig`, or a setting is not one of its fields (the error
                names it and the closest field).
        """
        names = [f.name for f in dataclasses.fields(EvaluationConfig) if f.init]
        unknown = [name for name in settings if name not in names]
        if unknown:
            hints = [difflib.get_close_matches(name, names, n=1) for name in unknown]
            guesses = [
                f"{name!r} (did you mean {hint[0]!r}?)" if hint else repr(name) for name, hint in zip(unknown, hints)
            ]
            raise TypeError(
                f"Unknown evaluation setting(s) {', '.join(guesses)}; the settings are the fields of "
                f"`EvaluationConfig`: {', '.join(names)}."
            )
        if config is None:
            return cls(**settings)
        if not isinstance(config, EvaluationConfig):
            raise TypeError(f"`config` must be an `EvaluationConfig`, got {type(config).__name__}.")
        return dataclasses.replace(config, **settings) if settings else config
