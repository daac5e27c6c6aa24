"""Publish trained LoRA recommenders to the Hugging Face Hub, and load them back.

- [`push_adapter_folder`] pushes a saved adapter folder (adapter weights and config, tokenizer, model card written
  by [`~trl_dynamicpo.model_card.build_model_card`], re-exported here).
- [`load_recommender`] returns a `PeftModel` and its tokenizer ready for generation, from a Hub repo id, a local
  folder, or the local Hugging Face cache when offline.

Dataset folders are read and pushed by `dataset_builders.folder`, which owns their format.

A push that fails midway raises [`HubPushError`]; nothing in the local folder is modified, and calling the same
function again finishes the push (files already on the Hub are skipped by the Hub client).

Example:

```python
from trl_dynamicpo.hub import load_recommender, push_adapter_folder

push_adapter_folder("outputs/lastfm-dynamicpo", "my-user/lastfm-dynamicpo")
model, tokenizer = load_recommender("my-user/lastfm-dynamicpo")
```
"""

import logging
import os
from pathlib import Path
from typing import Any

from huggingface_hub.utils import validate_repo_id

from .model_card import _is_hub_id, build_model_card
from .model_utils import check_safetensors, looks_like_path


logger = logging.getLogger(__name__)

__all__ = ["HubPushError", "build_model_card", "load_recommender", "push_adapter_folder"]


# Files of an adapter repo that `load_recommender` needs: adapter weights/config and every tokenizer file that
# `save_pretrained` writes. Checkpoints, optimizer states and training arguments are never downloaded.
# The item projector of hybrid item tokens (`trl_dynamicpo.item_tokens`) and its item-embedding table travel with the
# adapter, as does what `Recommender` needs to prompt it as training did (`trl_dynamicpo.recommend`).
_ADAPTER_FILES = [
    "adapter_config.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
    "item_tokens.json",
    "item_tokens.safetensors",
    "item_embeddings.parquet",
    "recommender.json",
    "item_titles.json",
]
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
# that loading the adapter needs, so it never leaves the machine, at any depth (`last/training_args.bin` too: the
# patterns match with fnmatch, whose `*` also matches `/`).
_ADAPTER_IGNORE_PATTERNS = [
    "checkpoint-*",
    "runs/*",
    "wandb/*",
    ".git/*",
    "*.lock",
    "training_args.bin",
    "*/training_args.bin",
]


class HubPushError(RuntimeError):
    """A push to the Hub failed midway. The local folder is untouched; running the same call again finishes it."""

    @classmethod
    def after(
        cls, err: Exception, *, kind: str, folder: Path, repo_id: str, stage: str, call: str, token: str | None
    ) -> "HubPushError":
        """The error of a push of the `kind` folder `folder` that `err` stopped while `stage`, without any token.

        `call` is the call that finishes the push when run again; every token that could have been used (`token`,
        the environment's, the logged-in one) is removed from the message.
        """
        cause = _redact(f"{type(err).__name__}: {err}".strip(), token)
        return cls(
            f"Pushing the {kind} folder '{folder}' to the Hub repo '{repo_id}' failed while {stage}: {cause}\n"
            f"The local folder was not modified. Run `{call}` again to finish the push; files that already reached "
            "the Hub are not uploaded twice."
        )


# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------
def _redact(text: str, token: str | None) -> str:
    """Remove every token that could have been used (explicit or from the environment/login) from `text`."""
    from huggingface_hub import get_token

    for secret in {token, get_token(), os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")}:
        if isinstance(secret, str) and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _is_offline() -> bool:
    """Offline mode, also when `HF_HUB_OFFLINE` is set after `huggingface_hub` was imported."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


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
        raise HubPushError.after(
            err, kind="adapter", folder=folder, repo_id=repo_id, stage=stage, call=call, token=token
        ) from err
    logger.info("Pushed adapter folder %s to %s", folder, repo_url)
    return str(repo_url)


# ---------------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------------
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


def resolve_adapter_folder(
    repo_id_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    token: str | None = None,
    local_files_only: bool = False,
) -> str:
    """The local folder of a saved adapter: the folder itself, or the snapshot of a Hub repo's adapter files.

    Only the files `load_recommender` and [`~trl_dynamicpo.recommend.Recommender`] read are downloaded (adapter,
    item projector and table, `recommender.json`, tokenizer); offline, they come from the local cache.

    Raises:
        `FileNotFoundError` / `NotADirectoryError`: naming the path or repo and what is missing (see
            [`load_recommender`]).
    """
    source = os.fspath(repo_id_or_path)
    local_files_only = local_files_only or _is_offline()
    if os.path.isdir(source):
        _check_adapter_files(source, f"The adapter folder {source}")
        return _checked_weights(source)
    if os.path.exists(source):
        raise NotADirectoryError(
            f"{source} is a file: load_recommender needs the adapter folder that holds it (the folder with "
            "adapter_config.json and adapter_model.safetensors)."
        )
    if not _is_hub_id(source) or looks_like_path(source):
        raise FileNotFoundError(
            f"No adapter folder at {source}: the path does not exist (relative paths start from {os.getcwd()}). "
            "Pass the folder the adapter was saved to (e.g. a recipe's <output_dir>/final), or a Hub repo id "
            "(user/name)."
        )
    adapter_dir = _download_adapter(source, revision, token, local_files_only)
    _check_adapter_files(
        adapter_dir, f"The model repo {source!r}" + (f" at revision {revision!r}" if revision else "")
    )
    return _checked_weights(adapter_dir)


def _checked_weights(adapter_dir: str) -> str:
    """`adapter_dir`, after checking that its safetensors weights are readable (a truncated file is named here,
    before any load)."""
    if os.path.isfile(os.path.join(adapter_dir, "adapter_model.safetensors")):
        check_safetensors(os.path.join(adapter_dir, "adapter_model.safetensors"))
    return adapter_dir


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
        `tuple`: the `PeftModel` in eval mode and the tokenizer. A model trained with hybrid item tokens has its item
        projector attached ([`~trl_dynamicpo.item_tokens.get_item_tokens`]); score it with the item table it names.

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

    from .item_tokens import load_item_tokens

    local_files_only = bool(model_kwargs.pop("local_files_only", False)) or _is_offline()
    source = os.fspath(repo_id_or_path)
    adapter_dir = resolve_adapter_folder(source, revision=revision, token=token, local_files_only=local_files_only)
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
    # Hybrid item tokens: the projector saved next to the adapter (`item_tokens.json`), if the model has one.
    load_item_tokens(model, adapter_dir)
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
