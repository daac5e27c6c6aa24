"""Configuration of [`DynamicPOTrainer`]: TRL's `DPOConfig` plus the multi-negative fields."""

import dataclasses
import math
from dataclasses import dataclass, field

from trl import DPOConfig

from .device import use_cpu, warn_if_slow_bf16
from .losses import LOSS_ALIASES, LOSS_TYPES, resolve_loss_type
from .napo import SELECTIONS
from .packing import LAYOUTS


@dataclass
class DynamicPOConfig(DPOConfig):
    r"""
    Configuration class for [`DynamicPOTrainer`].

    Subclasses [`trl.DPOConfig`], so every DPO and [`~transformers.TrainingArguments`] field works as in TRL. The
    fields below add multi-negative preference optimization: S-DPO, DMPO, NAPO, and DynamicPO's Dynamic Boundary
    Negative Selection and Dual-Margin Dynamic β as plug-ins on them.

    Defaults that differ from `DPOConfig`: `loss_type=["dynamicpo"]`, `beta=1.0` and `learning_rate=1e-5` (the
    values of the S-DPO and DynamicPO papers), and `bf16` defaults to `False` when no GPU is available (bf16 on CPU
    moves log-probs by up to 0.3 nats, and is far slower than fp32 on CPUs without AVX512-BF16 or AMX: `bf16=True`
    there warns); with no accelerator `use_cpu` is set, so that processes started by torchrun join a CPU process
    group.

    Parameters:
        loss_type (`list[str]`, *optional*, defaults to `["dynamicpo"]`):
            Loss(es) among `"dpo"` (alias `"sigmoid"`), `"sdpo"`, `"dmpo"`, `"dynamicpo"` (DMPO with both DynamicPO
            plug-ins), `"napo"`, `"mppo"` (reference-free, on raw probabilities) and `"sft"` (the chosen answer's NLL,
            as in TRL); several are combined with `loss_weights`. `["sft"]` alone is supervised fine-tuning through the
            same forward pass (and trunk cache).
        num_negatives (`int`, *optional*):
            Negatives used per row and step. Rows with more are subsampled (seeded, re-drawn each epoch); rows with
            fewer are masked. `None` uses all.
        layout (`str`, *optional*, defaults to `"packed"`):
            `"packed"` scores the prompt once and all answers after it with a 4D attention mask; `"concatenated"`
            repeats the prompt per answer as TRL does (for attention kernels that cannot take a custom mask).
        completion_separator (`str`, *optional*, defaults to `" "`):
            Inserted between a plain-text prompt and an answer when neither has whitespace at the junction.
        dynamic_boundary_selection (`bool`, *optional*):
            Train on the boundary negatives only. `None`: on for `dynamicpo`, off otherwise.
        dynamic_beta (`bool`, *optional*):
            Per-negative Dual-Margin Dynamic β. `None`: on for `dynamicpo`, off otherwise.
        boundary_clusters (`int`, *optional*, defaults to `3`):
            Clusters of the 1-D k-means fallback used when no negative scores above the chosen answer.
        beta_scale (`float`, *optional*, defaults to `0.5`):
            Amplitude of the dynamic β: β_j lies in `[(1 - beta_scale)·β, (1 + beta_scale)·β]`.
        beta_margin (`float`, *optional*, defaults to `2.0`):
            Margin of the dual-margin term.
        beta_eps (`float`, *optional*, defaults to `1e-6`):
            Added to the denominator of the dual-margin term (the official code has none and can divide 0 by 0).
        negative_sampling_seed (`int`, *optional*):
            Seed of the per-epoch negative sampling; defaults to `seed`.
        in_batch_negatives (`bool`, *optional*, defaults to `False`):
            NAPO's in-batch sharing: add answers of other rows of the global batch as negatives, scored under the
            row's own prompt.
        in_batch_fraction (`float`, *optional*, defaults to `0.7`):
            Share of the other rows used.
        in_batch_selection (`str`, *optional*, defaults to `"random"`):
            `"random"` or `"similarity"` (from a per-row `embedding` column).
        in_batch_share_chosen (`bool`, *optional*, defaults to `False`):
            Also share the other rows' chosen answers.
        max_negatives (`int`, *optional*):
            Cap on a row's negatives after sharing.
        napo_gamma0 (`float`, *optional*, defaults to `1.0`), napo_alpha (`float`, *optional*, defaults to `0.3`):
            NAPO's margin γ = γ0·(1 − α·(M_b − M)).
        napo_ema_decay (`float`, *optional*, defaults to `0.9`):
            Decay of the running mean M (synced across processes, saved in checkpoints).
        napo_use_reference (`bool`, *optional*, defaults to `False`):
            NAPO on log-ratios instead of policy log-probs.
        trunk_cache (`str`, *optional*):
            Folder of a [`~trl_dynamicpo.trunk_cache.TrunkCache`] built from `train_dataset` (same rows, same order):
            the frozen layers below the adapter are not run again; only the adapted top layers run per step. Needs
            the packed layout and an adapter on the cache's `trainable_layers` only.
        item_embeddings (`str`, *optional*):
            Hybrid item tokens ([`~trl_dynamicpo.item_tokens`]): a dataset folder (or file) with the teacher's
            `item_embeddings.parquet`. Every prompt line that is an item title gets an item token whose hidden state
            receives the projected teacher embedding. A model without a projector gets a fresh one.
        item_token (`str`, *optional*):
            The marker token (default: a reserved special token of the tokenizer, `<empty_output>` for SmolLM2).
        item_features (`str`, *optional*, defaults to `"item"`):
            `"item"` (the item's embedding) or `"item+state"` (also its product with the row's teacher state).
        item_token_layer (`str` or `int`, *optional*, defaults to `"trunk"`):
            Where the vectors are added: `"trunk"` (input of the lowest trainable layer: exact with `trunk_cache`),
            `"input"` (the input embeddings, LLaRA's way) or a layer index.
        item_projector_hidden (`int`, *optional*):
            Hidden width of the projector MLP (default: the LM's hidden size).
        item_feature_dropout (`float`, *optional*, defaults to `0.0`):
            Dropout on the teacher's vectors while training.
        item_token_curriculum (`float`, *optional*, defaults to `0.0`):
            LLaRA's curriculum: over this fraction of the training steps, the share of rows whose item tokens receive
            their vectors rises linearly from 0 to 1 (the other rows keep the markers without vectors: the text-only
            prompt). 0 gives every row its vectors from the first step.
    """

    _VALID_DICT_FIELDS = DPOConfig._VALID_DICT_FIELDS

    learning_rate: float = field(
        default=1e-5,
        metadata={"help": "The initial learning rate for AdamW (1e-5 in the S-DPO and DynamicPO papers)."},
    )
    beta: float = field(
        default=1.0,
        metadata={"help": "Temperature β of the preference loss (1.0 in the S-DPO and DynamicPO papers)."},
    )
    loss_type: list[str] = field(
        default_factory=lambda: ["dynamicpo"],
        metadata={
            "help": "Loss(es) among 'dpo' (alias 'sigmoid'), 'sdpo', 'dmpo', 'dynamicpo', 'napo', 'mppo' "
            "(reference-free, on raw probabilities) and 'sft' (the chosen answer's NLL per token, as TRL's). Several "
            "are combined with `loss_weights`."
        },
    )
    num_negatives: int | None = field(
        default=None,
        metadata={
            "help": "Negatives per row and step. Rows with more are subsampled with a seeded generator, re-drawn each "
            "epoch; rows with fewer are masked. None uses all negatives of each row."
        },
    )
    layout: str = field(
        default="packed",
        metadata={
            "help": "Forward layout: 'packed' (prompt once, all answers after it, 4D attention mask) or "
            "'concatenated' (TRL's layout, prompt repeated per answer).",
            "choices": list(LAYOUTS),
        },
    )
    completion_separator: str = field(
        default=" ",
        metadata={
            "help": "Inserted between a plain-text prompt and an answer when the prompt does not end with whitespace "
            "and the answer does not start with whitespace (recommendation datasets store bare titles). '' "
            "concatenates as TRL does."
        },
    )
    dynamic_boundary_selection: bool | None = field(
        default=None,
        metadata={
            "help": "DynamicPO's Dynamic Boundary Negative Selection: train on the negatives scoring at least the "
            "chosen answer (k-means fallback when none does). None: on for 'dynamicpo', off otherwise."
        },
    )
    dynamic_beta: bool | None = field(
        default=None,
        metadata={
            "help": "DynamicPO's Dual-Margin Dynamic β: a per-negative β from how ambiguous the negative is. None: on "
            "for 'dynamicpo', off otherwise."
        },
    )
    boundary_clusters: int = field(
        default=3,
        metadata={"help": "Clusters of the exact 1-D k-means fallback of the boundary selection."},
    )
    beta_scale: float = field(
        default=0.5,
        metadata={"help": "Amplitude of the dynamic β: β_j lies in [(1 - beta_scale)·β, (1 + beta_scale)·β]."},
    )
    beta_margin: float = field(
        default=2.0,
        metadata={"help": "Margin of the dual-margin dynamic β term."},
    )
    beta_eps: float = field(
        default=1e-6,
        metadata={"help": "Added to the denominator of the dual-margin term to avoid 0/0."},
    )
    negative_sampling_seed: int | None = field(
        default=None,
        metadata={"help": "Seed of the per-epoch negative sampling. Defaults to `seed`."},
    )

    in_batch_negatives: bool = field(
        default=False,
        metadata={
            "help": "NAPO's in-batch negative sharing: extend each row's negatives with answers of other rows of the "
            "global batch (all processes), scored under the row's own prompt."
        },
    )
    in_batch_fraction: float = field(
        default=0.7,
        metadata={"help": "Share of the other rows of the global batch whose answers are shared (0.7 in NAPO)."},
    )
    in_batch_selection: str = field(
        default="random",
        metadata={
            "help": "How the other rows are chosen: 'random' (seeded) or 'similarity' (cosine similarity of a per-row "
            "`embedding` column, e.g. a sequential recommender's user state).",
            "choices": list(SELECTIONS),
        },
    )
    in_batch_share_chosen: bool = field(
        default=False,
        metadata={"help": "Also share the other rows' chosen answers as negatives."},
    )
    max_negatives: int | None = field(
        default=None,
        metadata={"help": "Cap on a row's negatives after in-batch sharing (own negatives are kept first)."},
    )
    napo_gamma0: float = field(default=1.0, metadata={"help": "NAPO's base margin γ0."})
    napo_alpha: float = field(default=0.3, metadata={"help": "NAPO's margin sensitivity α in γ0·(1 − α·(M_b − M))."})
    napo_ema_decay: float = field(
        default=0.9, metadata={"help": "Decay of NAPO's running mean M of the negatives' confidence."}
    )
    napo_use_reference: bool = field(
        default=False,
        metadata={
            "help": "Use log-ratios to the reference in the NAPO loss instead of policy log-probs (NAPO's code is "
            "reference-free)."
        },
    )

    trunk_cache: str | None = field(
        default=None,
        metadata={
            "help": "Folder of a TrunkCache built from train_dataset (same rows and order): the frozen layers below "
            "the adapter are not run again, only the adapted top layers. Needs layout='packed' and an adapter on the "
            "cache's trainable layers only."
        },
    )

    item_embeddings: str | None = field(
        default=None,
        metadata={
            "help": "Hybrid item tokens: a dataset folder (or file) with the teacher's item_embeddings.parquet. Every "
            "prompt line that is an item title gets an item token carrying the projected teacher embedding."
        },
    )
    item_token: str | None = field(
        default=None,
        metadata={"help": "Marker token of item positions (default: a reserved special token of the tokenizer)."},
    )
    item_features: str = field(
        default="item",
        metadata={
            "help": "Item-token vectors: 'item' (teacher item embedding) or 'item+state' (also its elementwise "
            "product with the row's teacher sequence state).",
            "choices": ["item", "item+state"],
        },
    )
    item_token_layer: str = field(
        default="trunk",
        metadata={
            "help": "Where item vectors are added: 'trunk' (input of the lowest trainable layer, exact with "
            "trunk_cache), 'input' (the input embeddings) or a layer index."
        },
    )
    item_projector_hidden: int | None = field(
        default=None, metadata={"help": "Hidden width of the item projector MLP (default: the LM's hidden size)."}
    )
    item_feature_dropout: float = field(
        default=0.0, metadata={"help": "Dropout on the teacher's vectors while training (0 = off)."}
    )
    item_token_curriculum: float = field(
        default=0.0,
        metadata={
            "help": "LLaRA's curriculum: the share of rows whose item tokens get their vectors rises linearly from 0 "
            "to 1 over this fraction of the training steps (0 = all rows from the start)."
        },
    )

    def __post_init__(self):
        if use_cpu():
            if self.bf16 is None and not self.fp16:
                self.bf16 = False
            if self.bf16:
                warn_if_slow_bf16("DynamicPOConfig(bf16=True)", stacklevel=4)  # past the dataclass __init__
            # With no accelerator, processes started by torchrun (`accelerate launch --multi_gpu`) must join a CPU
            # (gloo) process group; without `use_cpu` they would each train alone.
            self.use_cpu = True
        super().__post_init__()
        self.loss_type = [LOSS_ALIASES.get(name, name) for name in self.loss_type]
        for name in self.loss_type:
            if name not in LOSS_TYPES:
                raise ValueError(
                    f"Unknown loss_type {name!r}. DynamicPOTrainer supports {list(LOSS_TYPES)} (and the alias "
                    f"'sigmoid' for 'dpo'); TRL's pairwise-only losses are not defined for multiple negatives."
                )
            # Raises for flags that do not apply to this loss (e.g. dynamic_beta with 'dpo').
            resolve_loss_type(name, self.dynamic_boundary_selection, self.dynamic_beta)
        if self.layout not in LAYOUTS:
            raise ValueError(f"Unknown layout {self.layout!r}; expected one of {list(LAYOUTS)}.")
        sft_only = set(self.loss_type) == {"sft"}
        if self.num_negatives is not None and self.num_negatives < (0 if sft_only else 1):
            raise ValueError(
                f"`num_negatives` must be at least 1, got {self.num_negatives} (0 is allowed with loss_type=['sft'], "
                "which reads no negatives)."
            )
        if self.trunk_cache is not None:
            if self.layout != "packed":
                raise ValueError("`trunk_cache` needs layout='packed': the cache holds packed rows.")
            if self.in_batch_negatives:
                raise ValueError(
                    "`trunk_cache` cannot be combined with `in_batch_negatives`: answers shared from other rows are "
                    "not in this row's cached states."
                )
        if self.item_features not in ("item", "item+state"):
            raise ValueError(f"`item_features` must be 'item' or 'item+state', got {self.item_features!r}.")
        if isinstance(self.item_token_layer, str) and self.item_token_layer.lstrip("-").isdigit():
            self.item_token_layer = int(self.item_token_layer)  # from the command line
        if self.item_token_layer not in ("trunk", "input") and not isinstance(self.item_token_layer, int):
            raise ValueError(
                f"`item_token_layer` must be 'trunk', 'input' or a layer index, got {self.item_token_layer!r}."
            )
        if not 0.0 <= self.item_feature_dropout < 1.0:
            raise ValueError(f"`item_feature_dropout` must lie in [0, 1), got {self.item_feature_dropout}.")
        if not 0.0 <= self.item_token_curriculum <= 1.0:  # NaN fails both comparisons
            raise ValueError(f"`item_token_curriculum` must lie in [0, 1], got {self.item_token_curriculum}.")
        # Numbers that would train silently wrong (a negative β trains backwards while `rewards/accuracies` reads 1.0;
        # NaN turns the weights to NaN; an EMA decay >= 1 lets NAPO's margin drift): refuse them here, by name.
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ValueError(f"`beta` must be a finite number > 0, got {self.beta}.")
        for name in ("napo_gamma0", "napo_alpha", "beta_scale"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"`{name}` must be finite, got {getattr(self, name)}.")
        # Then every other float option, this class's and the Trainer's: NaN or an infinity is never meant (a NaN
        # `beta_margin` would otherwise stop at step 1 with an error that blames the rows).
        for f in dataclasses.fields(self):
            value = getattr(self, f.name, None)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"`{f.name}` must be a finite number, got {value}.")
        if self.loss_weights is not None:
            weights = list(self.loss_weights)
            bad = next((w for w in weights if not (math.isfinite(float(w)) and w >= 0)), None)
            if bad is not None or not any(weights):
                # A negative weight maximizes its loss (the total runs to -inf while it "improves").
                raise ValueError(
                    f"`loss_weights` must be finite and >= 0 with at least one > 0, got {weights}"
                    + (f" ({bad} is not)." if bad is not None else ".")
                )
        if not 0.0 <= self.napo_ema_decay < 1.0:
            raise ValueError(f"`napo_ema_decay` must lie in [0, 1), got {self.napo_ema_decay}.")
        if self.label_smoothing:
            raise ValueError(
                f"`label_smoothing={self.label_smoothing}` is not supported: the multi-negative losses have no "
                "label-smoothed (robust DPO) form here. Leave it at 0."
            )
        if self.boundary_clusters < 1:
            raise ValueError(f"`boundary_clusters` must be at least 1, got {self.boundary_clusters}.")
        if not 0.0 <= self.beta_scale < 1.0:
            raise ValueError(f"`beta_scale` must lie in [0, 1) so that β_j stays positive, got {self.beta_scale}.")
        if self.in_batch_selection not in SELECTIONS:
            raise ValueError(f"Unknown in_batch_selection {self.in_batch_selection!r}; expected one of {SELECTIONS}.")
        if not 0.0 <= self.in_batch_fraction <= 1.0:
            raise ValueError(f"`in_batch_fraction` must lie in [0, 1], got {self.in_batch_fraction}.")
        if self.in_batch_negatives and self.precompute_ref_log_probs:
            raise ValueError(
                "`in_batch_negatives` scores other rows' answers under each row's prompt, so their reference "
                "log-probs cannot be precomputed; set `precompute_ref_log_probs=False`."
            )
        if self.max_negatives is not None and self.max_negatives < 1:
            raise ValueError(f"`max_negatives` must be at least 1, got {self.max_negatives}.")
        if self.f_divergence_type != "reverse_kl":
            raise ValueError("DynamicPOTrainer supports only `f_divergence_type='reverse_kl'`.")
        if self.ld_alpha is not None or self.use_weighting:
            raise ValueError("`ld_alpha` and `use_weighting` are pairwise DPO options not supported with negatives.")

    def card_hyperparameters(self) -> dict:
        """The settings that define a run's loss, for model cards and logs (the trainer's card and the recipes'):
        losses and weights, β, negatives, layout, learning rate, epochs or steps, and the DynamicPO plug-ins' settings
        when one of the losses uses them."""
        flags = [
            resolve_loss_type(name, self.dynamic_boundary_selection, self.dynamic_beta) for name in self.loss_type
        ]
        params = {
            "loss_type": ",".join(self.loss_type),
            "beta": self.beta,
            "num_negatives": self.num_negatives if self.num_negatives is not None else "all",
            "layout": self.layout,
            "learning_rate": self.learning_rate,
            "num_train_epochs": self.num_train_epochs if self.max_steps <= 0 else None,
            "max_steps": self.max_steps if self.max_steps > 0 else None,
        }
        if len(self.loss_type) > 1:
            params["loss_weights"] = ",".join(str(w) for w in self.loss_weights or [1.0] * len(self.loss_type))
        if any(selection or dynamic for _, selection, dynamic in flags):
            params.update(
                dynamic_boundary_selection=any(selection for _, selection, _ in flags),
                dynamic_beta=any(dynamic for _, _, dynamic in flags),
                boundary_clusters=self.boundary_clusters,
                beta_scale=self.beta_scale,
                beta_margin=self.beta_margin,
            )
        return params
