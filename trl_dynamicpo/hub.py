"""Publish preference datasets and trained LoRA recommenders to the Hugging Face Hub, and load them back.

- [`push_dataset_folder`] pushes a dataset folder written by `dataset_builders` (Parquet shards of every config plus a
  dataset card) with `DatasetDict.push_to_hub`, then restores the builder's card on top of what `push_to_hub` wrote.
- [`push_adapter_folder`] pushes a saved adapter folder (adapter weights and config, tokenizer, model card).
- [`build_model_card`] writes the model card of a trained recommender (metadata, loss, data, metrics, usage,
  citations); the trainer calls it from `create_model_card`.
- [`load_recommender`] returns a `PeftModel` and its tokenizer ready for generation, from a Hub repo id, a local
  folder, or the local Hugging Face cache when offline.

A push that fails midway raises [`HubPushError`]; nothing in the local folder is modified, and calling the same
function again finishes the push (files already on the Hub are skipped by the Hub client).

Example:

```python
from trl_dynamicpo.hub import load_recommender, push_adapter_folder

push_adapter_folder("outputs/lastfm-dynamicpo", "my-user/lastfm-dynamicpo")
model, tokenizer = load_recommender("my-user/lastfm-dynamicpo")
```
"""

import json
import logging
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard_data import EvalResult
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .losses import LOSS_ALIASES, LOSS_SPECS


logger = logging.getLogger(__name__)

__all__ = ["HubPushError", "build_model_card", "load_recommender", "push_adapter_folder", "push_dataset_folder"]

HUB_URL = "https://huggingface.co"

# Files of an adapter repo that `load_recommender` needs: adapter weights/config and every tokenizer file that
# `save_pretrained` writes. Checkpoints, optimizer states and training arguments are never downloaded.
_ADAPTER_FILES = ["adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"]
_TOKENIZER_FILES = [
    "tokenizer_config.json",
    "tokenizer.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
    "additional_chat_templates/*",
    "generation_config.json",
]
# Folders a training run leaves next to the adapter that do not belong in the published repo.
# `training_args.bin` is the trainer's pickled config: it holds `hub_token` in plain text when one is set, and nothing
# that loading the adapter needs, so it never leaves the machine.
_ADAPTER_IGNORE_PATTERNS = ["checkpoint-*", "runs/*", "wandb/*", ".git/*", "*.lock", "training_args.bin"]

# BibTeX of the methods this library implements and of TRL, by the keys of `LossSpec.citations`: a model card cites
# DynamicPO, what each of its losses builds on, and TRL.
CITATIONS = {
    "dynamicpo": """@inproceedings{hu2026dynamicpo,
    title         = {{DynamicPO: Dynamic Preference Optimization for Recommendation}},
    author        = {Xingyu Hu and Kai Zhang and Jiancan Wu and Shuli Wang and Chi Wang and Wenshuai Chen and Yinhua Zhu and Haitao Wang and Xingxing Wang and Xiang Wang},
    booktitle     = {Database Systems for Advanced Applications (DASFAA)},
    year          = 2026,
    eprint        = {2605.00327},
    archivePrefix = {arXiv},
    primaryClass  = {cs.IR}
}""",
    "sdpo": """@inproceedings{chen2024softmax,
    title         = {{On Softmax Direct Preference Optimization for Recommendation}},
    author        = {Yuxin Chen and Junfei Tan and An Zhang and Zhengyi Yang and Leheng Sheng and Enzhi Zhang and Xiang Wang and Tat-Seng Chua},
    booktitle     = {Advances in Neural Information Processing Systems (NeurIPS)},
    year          = 2024,
    eprint        = {2406.09215},
    archivePrefix = {arXiv},
    primaryClass  = {cs.IR}
}""",
    "napo": """@article{ding2025negative,
    title         = {{On Negative-aware Preference Optimization for Recommendation}},
    author        = {Chenlu Ding and Daoxuan Liu and Jiancan Wu and Xingyu Hu and Junkang Wu and Haitao Wang and Yongkang Wang and Xingxing Wang and Xiang Wang},
    journal       = {arXiv preprint arXiv:2508.09653},
    year          = 2025,
    eprint        = {2508.09653},
    archivePrefix = {arXiv},
    primaryClass  = {cs.IR}
}""",
    "trl": """@misc{vonwerra2020trl,
    title        = {{TRL: Transformer Reinforcement Learning}},
    author       = {Leandro von Werra and Younes Belkada and Lewis Tunstall and Edward Beeching and Tristan Thrush and Nathan Lambert and Shengyi Huang and Kashif Rasul and Quentin Gallou{\\'e}dec},
    year         = 2020,
    journal      = {GitHub repository},
    publisher    = {GitHub},
    howpublished = {\\url{https://github.com/huggingface/trl}}
}""",
}

_METRIC_NAMES = {
    "hr": "HR",
    "hit_rate": "HR",
    "hitrate": "HR",
    "ndcg": "NDCG",
    "recall": "Recall",
    "precision": "Precision",
    "mrr": "MRR",
    "map": "MAP",
    "valid_ratio": "ValidRatio",
    "validratio": "ValidRatio",
    "coverage": "Coverage",
    # Popularity metrics of `trl_dynamicpo.evaluation`.
    "arp": "ARP",
    "head_share": "Head share",
    "tail_share": "Tail share",
    "tail_hr": "Tail HR",
}
# Numbers a trainer reports next to the metrics that are not model quality metrics.
_NOT_METRICS = {
    "epoch",
    "step",
    "runtime",
    "runtime_s",
    "samples_per_second",
    "steps_per_second",
    "num_samples",
    "num_prompts",
}


class HubPushError(RuntimeError):
    """A push to the Hub failed midway. The local folder is untouched; running the same call again finishes it."""


# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------
def _is_hub_id(name: str | None) -> bool:
    """True for a Hub repo id (`user/name` or `name`), False for None or a path that exists or looks local."""
    if not name or os.path.exists(os.path.expanduser(name)):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _redact(text: str, token: str | None) -> str:
    """Remove every token that could have been used (explicit or from the environment/login) from `text`."""
    from huggingface_hub import get_token

    for secret in {token, get_token(), os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")}:
        if isinstance(secret, str) and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _push_error(kind: str, folder: Path, repo_id: str, stage: str, call: str, err: Exception, token) -> HubPushError:
    cause = _redact(f"{type(err).__name__}: {err}".strip(), token)
    return HubPushError(
        f"Pushing the {kind} folder '{folder}' to the Hub repo '{repo_id}' failed while {stage}: {cause}\n"
        f"The local folder was not modified. Run `{call}` again to finish the push; files that already reached the "
        "Hub are not uploaded twice."
    )


def _is_offline() -> bool:
    """Offline mode, also when `HF_HUB_OFFLINE` is set after `huggingface_hub` was imported."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _data_dir_of(config: dict) -> str | None:
    """Top-level folder of a dataset config's `data_files` patterns, if they all share one."""
    data_files = config.get("data_files")
    if data_files is None:
        return None
    if isinstance(data_files, (str, dict)):
        data_files = [data_files]
    patterns = []
    for entry in data_files:
        paths = entry.get("path") if isinstance(entry, dict) else entry
        patterns.extend([paths] if isinstance(paths, str) else paths)
    tops = {pattern.split("/")[0] for pattern in patterns if "/" in pattern}
    return tops.pop() if len(tops) == 1 and all("/" in p for p in patterns) else None


# ---------------------------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------------------------
def push_dataset_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
) -> str:
    """Push a dataset folder built by `dataset_builders` to a Hub dataset repo.

    The folder holds a dataset card `README.md` whose YAML `configs` list the Parquet files of each config (the
    `default` config with splits train/validation/test under `data/`, the `items` config under `items/`), plus other
    files such as `build_info.json`. Every config is loaded from the folder and pushed with
    `DatasetDict.push_to_hub` (which writes the Parquet shards and the `dataset_info` features/sizes); then the
    builder's card is uploaded as the final `README.md`: its body and metadata are kept, and its `configs` point to
    the pushed shards. The other files of the folder are uploaded alongside.

    Args:
        folder (`str` or `os.PathLike`):
            The dataset folder. It is only read.
        repo_id (`str`):
            The dataset repo (`user/name`); created if it does not exist.
        token (`str`, *optional*):
            Hub token with write access. Defaults to the logged-in token / `HF_TOKEN`.
        private (`bool`, *optional*, defaults to `False`):
            Whether a newly created repo is private.
        commit_message (`str`, *optional*):
            Message of the commits; the config name is appended for the data commits.

    Returns:
        `str`: URL of the dataset repo.

    Raises:
        `HubPushError`: if the push fails midway (network error, server error). Running the same call again finishes
        the push.

    Example:

    ```python
    >>> from datasets import load_dataset
    >>> from trl_dynamicpo.hub import push_dataset_folder
    >>> url = push_dataset_folder("datasets/lastfm-sdpo", "my-user/lastfm-sdpo")
    >>> load_dataset("my-user/lastfm-sdpo")["train"][0]["chosen"]
    ```
    """
    from huggingface_hub import CommitOperationAdd, DatasetCard, HfApi

    from .data import load_dataset_folder

    folder = Path(folder)
    validate_repo_id(repo_id)
    card_path = folder / "README.md"
    if not card_path.is_file():
        raise FileNotFoundError(f"{folder} has no dataset card README.md; build the dataset folder first.")
    card = DatasetCard.load(card_path)
    configs = card.data.get("configs") or [{"config_name": "default"}]
    call = f"push_dataset_folder({str(folder)!r}, {repo_id!r})"

    # Load everything before talking to the Hub: a bad folder fails fast, without touching the repo.
    loaded = []
    for config in configs:
        name = config.get("config_name", "default")
        dataset = load_dataset_folder(folder, name)
        if dataset is None:
            raise FileNotFoundError(f"{folder}: the card lists the config {name!r} but none of its files exist.")
        data_dir = _data_dir_of(config) or ("data" if name == "default" else name)
        loaded.append((config, name, data_dir, dataset))
    data_dirs = {data_dir for _, _, data_dir, _ in loaded}
    extra_files = sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path != card_path
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and path.relative_to(folder).parts[0] not in data_dirs
    )

    api = HfApi(token=token)
    stage = "creating the repo"
    try:
        repo_url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        for config, name, data_dir, dataset in loaded:
            stage = f"uploading the '{name}' config"
            dataset.push_to_hub(
                repo_id,
                config_name=name,
                data_dir=data_dir,
                set_default=True if config.get("default") and name != "default" else None,
                private=private,
                token=token,
                commit_message=f"{commit_message or 'Upload dataset'} ({name} config)",
            )

        stage = "uploading the dataset card"
        # push_to_hub rewrote README.md: its YAML now describes the pushed shards (configs + dataset_info), but its
        # body and the builder's metadata come from whatever card was there before. Rebuild the builder's card with
        # the pushed configs and features.
        # The card is read at a known commit and written on top of it, so a concurrent commit fails (412) instead of
        # being overwritten.
        head = api.repo_info(repo_id, repo_type="dataset").sha
        pushed_card = api.hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=head)
        pushed = DatasetCard.load(pushed_card).data
        pushed_configs = {c.get("config_name", "default"): c for c in pushed.get("configs") or []}
        final_configs = []
        for config in configs:
            name = config.get("config_name", "default")
            pushed_config = pushed_configs.pop(name, None)
            final_configs.append({**config, "data_files": pushed_config["data_files"]} if pushed_config else config)
        final_configs.extend(pushed_configs.values())  # configs pushed earlier by someone else stay usable
        card.data["configs"] = final_configs
        if pushed.get("dataset_info") is not None:
            card.data["dataset_info"] = pushed.get("dataset_info")

        operations = [CommitOperationAdd("README.md", str(card).encode("utf-8"))]
        operations += [CommitOperationAdd(p.relative_to(folder).as_posix(), str(p)) for p in extra_files]
        api.create_commit(
            repo_id,
            operations=operations,
            commit_message=commit_message or "Upload dataset card",
            repo_type="dataset",
            parent_commit=head,
        )
    except Exception as err:  # any failure midway: report which step, and how to resume
        raise _push_error("dataset", folder, repo_id, stage, call, err, token) from err
    logger.info("Pushed dataset folder %s to %s", folder, repo_url)
    return str(repo_url)


# ---------------------------------------------------------------------------------------------------------------------
# Adapters
# ---------------------------------------------------------------------------------------------------------------------
def push_adapter_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
) -> str:
    """Push a saved adapter folder (adapter config and weights, tokenizer, model card, eval results) to a model repo.

    Intermediate `checkpoint-*` folders and logging folders (`runs/`, `wandb/`) of a training run are not uploaded.

    Args:
        folder (`str` or `os.PathLike`):
            Folder written by `PeftModel.save_pretrained` (or the trainer's `save_model`). It is only read.
        repo_id (`str`):
            The model repo (`user/name`); created if it does not exist.
        token (`str`, *optional*):
            Hub token with write access. Defaults to the logged-in token / `HF_TOKEN`.
        private (`bool`, *optional*, defaults to `False`):
            Whether a newly created repo is private.
        commit_message (`str`, *optional*):
            Commit message. Defaults to "Upload LoRA adapter".

    Returns:
        `str`: URL of the model repo.

    Raises:
        `HubPushError`: if the push fails midway. Running the same call again finishes the push.

    Example:

    ```python
    >>> from trl_dynamicpo.hub import push_adapter_folder
    >>> push_adapter_folder("outputs/lastfm-dynamicpo", "my-user/lastfm-dynamicpo")
    ```
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    validate_repo_id(repo_id)
    if not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder} has no adapter_config.json; save the adapter with `save_pretrained` first.")
    if not (folder / "README.md").is_file():
        logger.warning("%s has no README.md: the repo will have no model card (see `build_model_card`).", folder)

    api = HfApi(token=token)
    call = f"push_adapter_folder({str(folder)!r}, {repo_id!r})"
    stage = "creating the repo"
    try:
        repo_url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        stage = "uploading the adapter files"
        api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            commit_message=commit_message or "Upload LoRA adapter",
            ignore_patterns=_ADAPTER_IGNORE_PATTERNS,
        )
    except Exception as err:  # any failure midway: report which step, and how to resume
        raise _push_error("adapter", folder, repo_id, stage, call, err, token) from err
    logger.info("Pushed adapter folder %s to %s", folder, repo_url)
    return str(repo_url)


# ---------------------------------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------------------------------
def _split_metric_key(key: str) -> tuple[str | None, str]:
    """`"generation/hr@1"` -> `("generation", "hr@1")`; a trainer's `eval_` / `test_` prefix is dropped."""
    group, _, metric = key.rpartition("/")
    metric = re.sub(r"^(eval|test)_", "", metric.strip().lower())
    return (group or None), metric


def _metric_label(group: str | None, metric: str) -> str:
    base, at, k = metric.partition("@")
    label = _METRIC_NAMES.get(base, base.replace("_", " ").title().replace(" ", "")) + (f"@{k}" if at else "")
    return f"{label} ({group})" if group else label


def _metrics(eval_results: dict | None) -> list[tuple[str, str, float]]:
    """(type, display name, value) of every finite numeric metric of a flat metrics dict."""
    rows = []
    for key, value in (eval_results or {}).items():
        group, metric = _split_metric_key(str(key))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        if metric in _NOT_METRICS or metric.endswith("_runtime"):
            continue
        rows.append((metric, _metric_label(group, metric), float(value)))
    return rows


def _format_value(value: Any) -> str | None:
    """Markdown-table text of a hyperparameter, or None when it must not appear (None, empty, local path)."""
    if value is None or value == "" or value == [] or value == {}:
        return None
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, tuple, set)):
        items = [_format_value(v) for v in value]
        text = ", ".join(item for item in items if item is not None)
    elif isinstance(value, dict):
        text = json.dumps({k: v for k, v in value.items() if v is not None}, default=str)
    else:
        text = str(value)
        if isinstance(value, (str, os.PathLike)) and (os.path.isabs(text) or text.startswith(("./", "../", "~"))):
            return None  # a local path means nothing to readers of the card and may reveal the user's machine
    return text.replace("|", "\\|") if text else None


def _usage_snippet(model_ref: str, base_model: str | None, is_adapter: bool) -> str:
    if is_adapter:
        base_arg = f', base_model="{base_model}"' if base_model else ""
        # Without a Hub base model the adapter config may name a folder of the training machine.
        hint = "" if base_model else "# Pass base_model= (Hub id or folder) if the base model is not found.\n"
        load = (
            f"from trl_dynamicpo.hub import load_recommender\n\n"
            f'{hint}model, tokenizer = load_recommender("{model_ref}"{base_arg})'
        )
    else:
        load = (
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f'tokenizer = AutoTokenizer.from_pretrained("{model_ref}", padding_side="left")\n'
            f'model = AutoModelForCausalLM.from_pretrained("{model_ref}").eval()'
        )
    return f"""```python
{load}
prompt = (
    "This user recently listened to: Radiohead, Portishead, Massive Attack. "
    "Choose the next artist from these candidates: Björk, Metallica, Tricky, Slayer. Answer:"
)
inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
```"""


def build_model_card(
    *,
    model_name: str,
    base_model: str | None,
    loss_type: str,
    hyperparameters: dict,
    dataset_name: str | None = None,
    hub_model_id: str | None = None,
    eval_results: dict | None = None,
    eval_dataset_split: str = "test",
    tags: Iterable[str] | None = None,
    license: str | None = None,
    library_name: str = "peft",
    pipeline_tag: str = "text-generation",
) -> ModelCard:
    """Model card of a LoRA recommender trained with a multi-negative preference loss.

    The YAML metadata has `base_model` (only for a Hub model id, never a local path), `datasets` (a Hub dataset id),
    `library_name`, `pipeline_tag`, `license`, `tags` (`trl`, `trl-dynamicpo`, `recommendation`, `lora` for a peft
    adapter, each loss and `tags`) and, when `eval_results` is given, a `model-index` with one metric per numeric entry. The body describes
    the task, the loss and its hyperparameters, the training data, the evaluation results, a usage snippet and the
    BibTeX citations (DynamicPO, S-DPO, NAPO for the NAPO loss, TRL). Values that are None and local paths are left
    out, and keys containing "token" are never written.

    Args:
        model_name (`str`):
            Name of the model (e.g. the output folder's name); used in the title and the `model-index`.
        base_model (`str` or `None`):
            Hub id of the base model; None or a local path leaves it out of the metadata.
        loss_type (`str`):
            Loss the adapter was trained with (`"sdpo"`, `"dmpo"`, `"napo"`, `"dynamicpo"`, ...); combined losses
            are joined with "+" (e.g. `"sdpo+dynamicpo"`).
        hyperparameters (`dict`):
            Training hyperparameters shown in a table (e.g. beta, number of negatives, learning rate, LoRA rank).
        dataset_name (`str`, *optional*):
            Hub id (or name) of the training dataset.
        hub_model_id (`str`, *optional*):
            Repo id the adapter is (or will be) pushed to; used in the usage snippet.
        eval_results (`dict`, *optional*):
            Flat metrics dict, e.g. `{"generation/hr@1": 0.42, "generation/valid_ratio": 0.97, "ranking/ndcg@10": 0.6}`.
        eval_dataset_split (`str`, *optional*, defaults to `"test"`):
            Split the metrics were computed on.
        tags (`Iterable[str]`, *optional*):
            Extra tags.
        license (`str`, *optional*):
            License id (e.g. `"apache-2.0"`).
        library_name (`str`, *optional*, defaults to `"peft"`):
            Library the weights load with. `"peft"` describes a LoRA adapter loaded with `load_recommender`; any
            other value a full model loaded with `transformers`.
        pipeline_tag (`str`, *optional*, defaults to `"text-generation"`):
            Hub pipeline tag.

    Returns:
        `huggingface_hub.ModelCard`: call `.save(path)` or `.push_to_hub(repo_id)`.

    Example:

    ```python
    >>> from trl_dynamicpo.hub import build_model_card
    >>> card = build_model_card(
    ...     model_name="lastfm-dynamicpo",
    ...     base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
    ...     loss_type="dynamicpo",
    ...     hyperparameters={"beta": 1.0, "num_negatives": 15, "learning_rate": 1e-5},
    ...     dataset_name="my-user/lastfm-sdpo",
    ...     eval_results={"generation/hr@1": 0.42, "generation/valid_ratio": 0.97},
    ... )
    >>> card.save("outputs/lastfm-dynamicpo/README.md")
    ```
    """
    # A run may combine losses ("sdpo+dynamicpo"): describe, tag and cite each of them.
    loss_names = [name.strip().lower() for name in re.split(r"[+,]", loss_type) if name.strip()]
    is_adapter = library_name == "peft"
    hub_base = base_model if _is_hub_id(base_model) else None
    hub_dataset = dataset_name if _is_hub_id(dataset_name) else None
    model_ref = hub_model_id if _is_hub_id(hub_model_id) else model_name

    all_tags = []
    for tag in ["trl", "trl-dynamicpo", "recommendation", "lora" if is_adapter else None, *loss_names, *(tags or [])]:
        if tag and tag not in all_tags:
            all_tags.append(tag)

    metrics = _metrics(eval_results)
    dataset_label = hub_dataset or (Path(dataset_name).name if dataset_name else None)
    eval_entries = None
    if metrics:
        eval_entries = [
            EvalResult(
                task_type="text-generation",
                task_name="Next-item recommendation",
                dataset_type=hub_dataset or "custom",
                dataset_name=dataset_label or "Evaluation set",
                dataset_split=eval_dataset_split,
                metric_type=metric_type,
                metric_name=name,
                metric_value=value,
            )
            for metric_type, name, value in metrics
        ]
    card_data = ModelCardData(
        base_model=hub_base,
        datasets=[hub_dataset] if hub_dataset else None,
        library_name=library_name,
        license=license,
        model_name=model_name,
        pipeline_tag=pipeline_tag,
        tags=all_tags,
        eval_results=eval_entries,
    )

    lines = [f"# {model_name}", ""]
    base_text = f"[{hub_base}]({HUB_URL}/{hub_base})" if hub_base else "a causal language model"
    kind = "a LoRA adapter for" if is_adapter else "a fine-tuned version of"
    lines.append(
        f"This model is {kind} {base_text} that turns it into a sequential recommender: given the items a user "
        "interacted with (oldest first) and a list of candidate items, it generates the title of the item the user "
        "is most likely to interact with next."
    )
    lines += ["", "## Training procedure", ""]
    specs = [LOSS_SPECS.get(LOSS_ALIASES.get(name, name)) for name in loss_names]
    descriptions = [
        spec.description if spec else f"the `{name}` preference loss" for name, spec in zip(loss_names, specs)
    ]
    lines.append(
        "It was trained with `trl-dynamicpo`, built on [TRL](https://github.com/huggingface/trl), using "
        f'`loss_type="{"+".join(loss_names)}"`: {"; ".join(descriptions)}. Here '
        + ("s(y) is the summed log-probability of an answer under the trained model, " if "napo" in loss_names else "")
        + (
            ""
            if loss_names == ["napo"]
            else "r(y) the log-probability ratio of an answer under the trained model and the reference model, "
        )
        + "y_w the target item and y_j the negative items (other candidates)."
    )
    rows = [
        (key, _format_value(value)) for key, value in (hyperparameters or {}).items() if "token" not in key.lower()
    ]
    rows = [(key, text) for key, text in rows if text is not None]
    if rows:
        lines += ["", "| Hyperparameter | Value |", "|---|---|"]
        lines += [f"| {key} | {text} |" for key, text in rows]

    lines += ["", "## Training data", ""]
    if hub_dataset:
        lines.append(f"[{hub_dataset}]({HUB_URL}/datasets/{hub_dataset}): one row per user and target item.")
    elif dataset_label:
        lines.append(f"The `{dataset_label}` preference dataset: one row per user and target item.")
    else:
        lines.append("A preference dataset with one row per user and target item.")
    lines[-1] += (
        " Each prompt lists the user's recent history and the candidate items; the chosen answer is the target item "
        "and the rejected answers are the other candidates."
    )

    lines += ["", "## Evaluation", ""]
    if metrics:
        lines.append(f"Results on the `{eval_dataset_split}` split.")
        if any(metric_type in ("hr@1", "valid_ratio") for metric_type, _, _ in metrics):
            lines[-1] += (
                " Generated answers use greedy decoding: ValidRatio is the share of prompts whose answer names exactly "
                "one candidate, HR@1 the share of prompts whose valid answer names the target item."
            )
        lines += ["", "| Metric | Value |", "|---|---|"]
        lines += [f"| {name} | {value:.4f} |" for _, name, value in metrics]
    else:
        lines.append("No evaluation results were recorded for this model.")

    lines += ["", "## Usage", "", _usage_snippet(model_ref, hub_base, is_adapter), ""]
    lines += ["## Citations", "", "```bibtex"]
    # This library's method, then what each loss builds on (its `LossSpec.citations`), then TRL.
    cited = dict.fromkeys(["dynamicpo", *(key for spec in specs if spec for key in spec.citations), "trl"])
    lines.append("\n\n".join(CITATIONS[key] for key in cited))
    lines += ["```", ""]

    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------
def _looks_like_path(name: str) -> bool:
    """True for a name that can only be a local path (`./x`, `~/x`, `/x`, `a/b/c`), never a Hub repo id."""
    return name.startswith((".", "~", "/", os.sep)) or name.count("/") > 1


def _check_adapter_files(folder: str, what: str) -> None:
    """Fail naming `what` and the missing files when `folder` holds no saved LoRA adapter (before any model loads)."""
    # A snapshot in which no file matched the download patterns is a path that was never created.
    names = set(os.listdir(folder)) if os.path.isdir(folder) else set()
    missing = []
    if "adapter_config.json" not in names:
        missing.append("adapter_config.json")
    if not names & {"adapter_model.safetensors", "adapter_model.bin"}:
        missing.append("adapter_model.safetensors (or adapter_model.bin)")
    if not missing:
        return
    if "config.json" in names and names & {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"}:
        hint = "it holds a full model, not a LoRA adapter: load it with `AutoModelForCausalLM.from_pretrained`."
    elif any(name.startswith("checkpoint-") for name in names):
        checkpoints = sorted((n for n in names if n.startswith("checkpoint-")), key=lambda n: (len(n), n))
        hint = f"it holds training checkpoints: pass one of them (e.g. {os.path.join(folder, checkpoints[-1])})."
    elif "final" in names:
        hint = f"it looks like a recipe's output_dir: the published adapter is {os.path.join(folder, 'final')}."
    else:
        hint = "pass the folder the adapter was saved to (`save_pretrained`, or `trainer.save_model`)."
    raise FileNotFoundError(f"{what} has no {' and no '.join(missing)}, so it is not a saved LoRA adapter: {hint}")


def _download_adapter(repo_id: str, revision: str | None, token: str | None, local_files_only: bool) -> str:
    """The local snapshot of the adapter and tokenizer files of `repo_id` (from the cache when offline).

    Raises:
        `FileNotFoundError`: naming the repo (and revision) and what is missing: the repo on the Hub, the revision, or
            the cached copy when offline.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f" at revision {revision!r}" if revision else ""
    not_local = f"(and there is no local folder {repo_id} in {os.getcwd()})"
    try:
        # One download of the adapter and tokenizer files; offline, the same call resolves them from the cache.
        return snapshot_download(
            repo_id,
            revision=revision,
            token=token,
            local_files_only=local_files_only,
            allow_patterns=_ADAPTER_FILES + _TOKENIZER_FILES,
        )
    except GatedRepoError as err:
        raise FileNotFoundError(
            f"The model repo {repo_id!r} on {constants.ENDPOINT} is gated: request access on its page, then pass "
            "`token=` (or log in with `hf auth login`)."
        ) from err
    except RepositoryNotFoundError as err:
        raise FileNotFoundError(
            f"No model repo {repo_id!r} on {constants.ENDPOINT} {not_local}, or it is private and the token has no "
            "access to it: check the repo id, pass `token=` for a private repo, or pass a local adapter folder."
        ) from err
    except RevisionNotFoundError as err:
        raise FileNotFoundError(
            f"The model repo {repo_id!r} on {constants.ENDPOINT} has no revision {revision!r}: pass an existing "
            "branch, tag or commit as `revision=`."
        ) from err
    except LocalEntryNotFoundError as err:
        if local_files_only:
            raise FileNotFoundError(
                f"The model repo {repo_id!r}{at} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) "
                f"{not_local}, and downloads are off (HF_HUB_OFFLINE=1 or local_files_only=True): load it once "
                "online, or pass a local adapter folder."
            ) from err
        raise FileNotFoundError(
            f"Could not download the model repo {repo_id!r}{at} from {constants.ENDPOINT} (the Hub did not answer) "
            f"and it is not in the local cache ({constants.HF_HUB_CACHE}): check the connection, or pass a local "
            "adapter folder."
        ) from err


def load_recommender(
    repo_id_or_path: str | os.PathLike,
    base_model: str | None = None,
    *,
    revision: str | None = None,
    token: str | None = None,
    dtype: Any = None,
    device: Any = None,
    **model_kwargs,
):
    """Load a trained LoRA recommender and its tokenizer, ready for generation.

    The adapter comes from a Hub repo id or a local folder; when offline (`HF_HUB_OFFLINE=1`) it comes from the
    local Hugging Face cache filled by an earlier download. The base model is read from the adapter config
    (`base_model_name_or_path`) unless `base_model` is given. The tokenizer is the adapter's own when it was saved
    with it, else the base model's; it pads on the left (batched generation) and always has a pad token.

    Args:
        repo_id_or_path (`str` or `os.PathLike`):
            Hub repo id of the adapter, or a local adapter folder.
        base_model (`str`, *optional*):
            Hub id or local folder of the base model. Defaults to the adapter config's `base_model_name_or_path`.
        revision (`str`, *optional*):
            Branch, tag or commit of the adapter repo.
        token (`str`, *optional*):
            Hub token, for private repos.
        dtype (`torch.dtype` or `str`, *optional*):
            Dtype of the base model (e.g. `torch.bfloat16` or `"auto"`). Defaults to transformers' default.
        device (`str` or `torch.device`, *optional*):
            Device to move the model to.
        **model_kwargs:
            Passed to `AutoModelForCausalLM.from_pretrained` for the base model (e.g. `gguf_file`,
            `attn_implementation`, `device_map`). `gguf_file` is also used for the base model's tokenizer.

    Returns:
        `tuple`: the `PeftModel` in eval mode and the tokenizer.

    Raises:
        `FileNotFoundError`: before any model is loaded, naming the path or repo and what is missing: a local path
            that does not exist, a folder (or repo) without `adapter_config.json` / `adapter_model.safetensors`, a
            repo or revision the Hub does not have, or a repo that is not in the cache when offline.

    Example:

    ```python
    >>> from trl_dynamicpo.hub import load_recommender
    >>> model, tokenizer = load_recommender("my-user/lastfm-dynamicpo")
    >>> inputs = tokenizer(["... Answer:"], return_tensors="pt").to(model.device)
    >>> output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    ```
    """
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local_files_only = bool(model_kwargs.pop("local_files_only", False)) or _is_offline()
    source = os.fspath(repo_id_or_path)
    if os.path.isdir(source):
        adapter_dir = source
        _check_adapter_files(adapter_dir, f"The adapter folder {source}")
    elif os.path.exists(source):
        raise NotADirectoryError(
            f"{source} is a file: load_recommender needs the adapter folder that holds it (the folder with "
            "adapter_config.json and adapter_model.safetensors)."
        )
    elif not _is_hub_id(source) or _looks_like_path(source):
        raise FileNotFoundError(
            f"No adapter folder at {source}: the path does not exist (relative paths start from {os.getcwd()}). "
            "Pass the folder the adapter was saved to (e.g. a recipe's <output_dir>/final), or a Hub repo id "
            "(user/name)."
        )
    else:
        adapter_dir = _download_adapter(source, revision, token, local_files_only)
        _check_adapter_files(
            adapter_dir, f"The model repo {source!r}" + (f" at revision {revision!r}" if revision else "")
        )
    peft_config = PeftConfig.from_pretrained(adapter_dir)
    base_kwargs = {"token": token, "local_files_only": local_files_only}
    if base_model is None:
        base_model = peft_config.base_model_name_or_path
        if peft_config.revision:
            base_kwargs["revision"] = peft_config.revision
    if not base_model:
        raise ValueError(f"The adapter config of {source} names no base model: pass `base_model=`.")
    if not _is_hub_id(base_model) and not os.path.exists(os.path.expanduser(base_model)):
        raise ValueError(
            f"The base model {base_model!r} of {source} is neither a local folder here nor a Hub repo id: pass "
            "`base_model=` (Hub id or folder of the model the adapter was trained on)."
        )
    if dtype is not None:
        model_kwargs["dtype"] = dtype

    base = AutoModelForCausalLM.from_pretrained(base_model, **{**base_kwargs, **model_kwargs})
    model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=False)
    if device is not None:
        model.to(device)
    model.eval()

    if os.path.isfile(os.path.join(adapter_dir, "tokenizer_config.json")):
        tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    else:
        gguf = {"gguf_file": model_kwargs["gguf_file"]} if "gguf_file" in model_kwargs else {}
        tokenizer = AutoTokenizer.from_pretrained(base_model, **{**base_kwargs, **gguf})
    tokenizer.padding_side = "left"  # generation continues after the last prompt token of every row
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    # Causal LMs take no token type ids; some tokenizers return them and `generate` would reject them.
    tokenizer.model_input_names = [name for name in tokenizer.model_input_names if name != "token_type_ids"]
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
