"""Frozen-trunk cache: the hidden states that enter the lowest trainable layer, computed once per row.

With LoRA on the top `L` decoder layers only (PEFT's `layers_to_transform`), everything below the lowest adapted layer
is frozen: the embedding and the first `N - L` layers (the *trunk*) compute the same hidden states for every model
that shares the base weights — the SFT model, every preference-optimized model trained from it, and their reference.
In the packed layout (`trl_dynamicpo.packing`) each answer token's state depends only on the prompt and on its own
answer. So one forward of `prompt + all 20 candidates` through the trunk serves:

- SFT (the prompt and the chosen answer's segment),
- preference optimization with any K-subset of the negatives (the prompt and the chosen and selected segments),
- reference log-probs, and
- the ranking evaluation of every trained model (the prompt and all candidate segments).

This is exact, not an approximation: selecting segments of the cached packed row gives the same states the trunk
would compute for the packed row of the selected answers alone (`tests/test_trunk_cache.py` checks it against the
full forward to 1e-4 in fp32). Only the top `L` layers, the final norm and the LM head run per step, which on a CPU
makes a study of many configurations several times cheaper.

Layout on disk (`cache_dir/`): `trunk_cache.json` (settings, fingerprints, written last when complete),
`rows.jsonl` (one line per row: prompt and answer token ids, offset into the states) and `states.bin` (the hidden
states, `[total_tokens, hidden]`, float32 or bfloat16). An interrupted build resumes from its last complete chunk.
The completed build records the size and SHA-256 of `rows.jsonl` and `states.bin` in `trunk_cache.json`, and opening
the cache checks them: a truncated or overwritten file raises [`TrunkCacheDamagedError`] naming it, and
[`TrunkCache.build`] sets a damaged cache aside (moved to `damaged-<folder>-<time>/` next to it, never deleted) and
builds it again. Only the cache's own three files are ever moved or removed ([`remove_cache_files`]): other files in
its folder stay where they are.

Example:

```python
from peft import LoraConfig
from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer
from trl_dynamicpo.trunk_cache import TrunkCache

cache = TrunkCache.build(model, tokenizer, dataset["train"], "cache/train", num_trainable_layers=2)
trainer = DynamicPOTrainer(
    model,
    args=DynamicPOConfig("out", trunk_cache="cache/train", num_negatives=15),
    train_dataset=dataset["train"],
    processing_class=tokenizer,
    peft_config=LoraConfig(r=8, target_modules="all-linear", layers_to_transform=cache.trainable_layers),
)
```
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .device import fast_bf16, warn_if_slow_bf16
from .io_utils import write_json
from .model_utils import (
    decoder_of,
    first_trainable_layer,
    num_decoder_layers,
    unwrap_causal_lm,
)


FORMAT_VERSION = 1
META_FILE = "trunk_cache.json"
ROWS_FILE = "rows.jsonl"
STATES_FILE = "states.bin"
STORAGE_DTYPES = ("float32", "bfloat16")
# Every file a cache writes, the metadata last: the only files a rebuild moves or removes.
CACHE_FILES = (ROWS_FILE, STATES_FILE, META_FILE)
DAMAGED_PREFIX = "damaged-"
_LAYER_NAME = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class TrunkCacheMismatchError(ValueError):
    """The model, a row or a setting does not match the one the trunk cache was built from."""


class TrunkCacheDamagedError(ValueError):
    """A complete trunk cache whose files no longer match what its build recorded (truncated, zeroed, overwritten)."""


# (path, size, mtime) -> SHA-256 of the files already checked by this process: a cache opened by every stage and
# DataLoader worker is hashed once.
_CHECKED: dict[tuple[str, int, int], str] = {}


def _file_record(path: Path) -> dict[str, Any]:
    """The size and SHA-256 of a file, as `trunk_cache.json` records them."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _CHECKED:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
        _CHECKED[key] = digest.hexdigest()
    return {"bytes": stat.st_size, "sha256": _CHECKED[key]}


def remove_cache_files(cache_dir: str | os.PathLike) -> list[str]:
    """Remove the files a trunk cache writes ([`CACHE_FILES`]) from `cache_dir`, and the folder only when that left it
    empty; anything else there (a user's notes) stays. Returns the names removed."""
    cache_dir, removed = Path(cache_dir), []
    for name in CACHE_FILES:
        if (cache_dir / name).is_file():
            (cache_dir / name).unlink()
            removed.append(name)
    if cache_dir.is_dir() and not any(cache_dir.iterdir()):
        cache_dir.rmdir()
    return removed


def set_aside_damaged(cache_dir: str | os.PathLike) -> Path:
    """Move the files of the damaged cache in `cache_dir` to a new folder `damaged-<name>-<time>` next to it (never
    deleted: the user decides); other files in `cache_dir` stay. Returns the new folder."""
    from .checkpoints import aside_path

    cache_dir = Path(cache_dir)
    target = aside_path(cache_dir, DAMAGED_PREFIX)
    target.mkdir()
    for name in CACHE_FILES:
        if (cache_dir / name).is_file():
            os.replace(cache_dir / name, target / name)
    return target


class _StopForward(Exception):
    """Raised by the capture hook: nothing above the trunk needs to run while building the cache."""


def trunk_fingerprint(model, first_layer: int) -> str:
    """SHA-256 of the trunk's weights (embedding and layers below `first_layer`) and of the model config.

    Two models with the same fingerprint compute the same trunk states, whatever adapters sit above the trunk.
    """
    decoder = decoder_of(model)
    causal_lm = unwrap_causal_lm(model)
    digest = hashlib.sha256()
    config = causal_lm.config.get_text_config().to_dict()
    for key in ("_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype", "use_cache"):
        config.pop(key, None)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    modules = [decoder.get_input_embeddings(), *list(decoder.layers)[:first_layer]]
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            data = tensor.detach().to("cpu").contiguous()
            digest.update(f"{name}:{tuple(data.shape)}:{data.dtype}".encode())
            digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def check_trainable_parameters(model, first_layer: int) -> None:
    """Raise unless every trainable parameter lives in a decoder layer at or above `first_layer` (or the final norm).

    A trainable parameter in the trunk (or in the embedding, which a tied LM head shares) would change the states the
    cache holds, so the cached forward would silently train a different model than the one evaluated.
    """
    bad = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        match = _LAYER_NAME.search(name)
        if match is not None and int(match.group(1)) >= first_layer:
            continue
        if match is None and re.search(r"(?:^|\.)norm\.weight$", name):
            continue  # the final norm sits above the trunk
        if match is None and "item_token_projector." in name:
            continue  # hybrid item tokens: added at the first trainable layer's input, above the trunk
        bad.append(name)
    if bad:
        raise TrunkCacheMismatchError(
            f"{len(bad)} trainable parameters lie below the trunk cache's first trainable layer {first_layer} (e.g. "
            f"{bad[0]!r}). Put the adapter on the top layers only, e.g. `LoraConfig(layers_to_transform="
            f"{list(range(first_layer, num_decoder_layers(model)))})`, and train no embeddings."
        )


# ----------------------------------------------------------------------------------------------------------------------
# The two halves of the forward pass
# ----------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def compute_trunk_states(model, batch: dict[str, torch.Tensor], first_layer: int) -> torch.Tensor:
    """Hidden states entering decoder layer `first_layer` for a packed batch, `[B, L, hidden]`.

    The decoder runs as usual (embedding, rotary embeddings, the packed 4D mask) and is stopped at the input of
    `first_layer` by a forward pre-hook, so the captured state is exactly what that layer would receive.
    """
    from .packing import _model_dtype, packed_attention_mask

    decoder = decoder_of(model)
    captured = {}

    def capture(module, args, kwargs):
        captured["states"] = args[0] if args else kwargs["hidden_states"]
        raise _StopForward

    handle = decoder.layers[first_layer].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        decoder(
            input_ids=batch["input_ids"],
            attention_mask=packed_attention_mask(batch["segment_ids"], _model_dtype(model)),
            position_ids=batch["position_ids"],
            use_cache=False,
        )
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured["states"]


# ----------------------------------------------------------------------------------------------------------------------
# The cache
# ----------------------------------------------------------------------------------------------------------------------
def _row_answers(row: dict[str, Any], answers_column: str | None) -> list:
    if answers_column is not None:
        return list(row[answers_column])
    if row.get("candidates") is not None:
        return list(row["candidates"])
    rejected = row["rejected"]
    return [row["chosen"], *([rejected] if isinstance(rejected, str) else rejected)]


def _ids_digest(rows: Sequence[tuple[list[int], list[list[int]]]]) -> str:
    digest = hashlib.sha256()
    for prompt_ids, answer_ids in rows:
        digest.update(json.dumps([prompt_ids, answer_ids]).encode())
    return digest.hexdigest()


class TrunkCache:
    """Read access to a built trunk cache (see the module docstring); build one with [`TrunkCache.build`].

    Args:
        cache_dir (`str` or `os.PathLike`): A folder written by [`TrunkCache.build`].

    Raises:
        [`TrunkCacheDamagedError`]: a file of the cache does not have the size or checksum its build recorded.

    Attributes:
        first_layer (`int`): Index of the lowest trainable decoder layer; the cache holds the states entering it.
        trainable_layers (`list[int]`): The layers above the trunk, for `LoraConfig(layers_to_transform=...)`.
        fingerprint (`str`): [`trunk_fingerprint`] of the model the cache was built with.
    """

    def __init__(self, cache_dir: str | os.PathLike):
        self.cache_dir = Path(cache_dir)
        meta_path = self.cache_dir / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(
                f"{self.cache_dir} is not a complete trunk cache (no {META_FILE}); build it first."
            )
        self.meta = json.loads(meta_path.read_text())
        if not self.meta.get("complete"):
            raise FileNotFoundError(
                f"The trunk cache in {self.cache_dir} is incomplete; run `TrunkCache.build` again."
            )
        self.first_layer = int(self.meta["first_layer"])
        self.num_layers = int(self.meta["num_layers"])
        self.trainable_layers = list(range(self.first_layer, self.num_layers))
        self.hidden_size = int(self.meta["hidden_size"])
        self.fingerprint = self.meta["fingerprint"]
        self._check_files()
        self._rows = [json.loads(line) for line in (self.cache_dir / ROWS_FILE).read_text().splitlines() if line]
        if len(self._rows) != self.meta["num_rows"]:
            raise TrunkCacheDamagedError(
                f"{self.cache_dir / ROWS_FILE} has {len(self._rows)} rows, expected {self.meta['num_rows']}; rebuild "
                "the cache."
            )
        self._states = None

    def _check_files(self) -> None:
        """Raise [`TrunkCacheDamagedError`] naming the first file whose size (from the index: `total_tokens` x hidden
        size x item size) or checksum (recorded when the build completed; older caches have none) differs."""
        itemsize = 4 if self.meta["storage_dtype"] == "float32" else 2
        expected = {STATES_FILE: {"bytes": int(self.meta["total_tokens"]) * self.hidden_size * itemsize}}
        for name, record in (self.meta.get("files") or {}).items():
            expected.setdefault(name, {}).update(record)
        for name, record in expected.items():
            path = self.cache_dir / name
            if not path.is_file():
                raise TrunkCacheDamagedError(f"The trunk cache in {self.cache_dir} is damaged: {path} is missing.")
            size = path.stat().st_size
            if size != record["bytes"]:
                raise TrunkCacheDamagedError(
                    f"The trunk cache in {self.cache_dir} is damaged: {path} has {size:,} bytes, its build wrote "
                    f"{record['bytes']:,} (truncated or overwritten)."
                )
            if "sha256" in record and _file_record(path)["sha256"] != record["sha256"]:
                raise TrunkCacheDamagedError(
                    f"The trunk cache in {self.cache_dir} is damaged: the content of {path} differs from what its "
                    "build wrote (checksum mismatch: overwritten or corrupted)."
                )

    # -- reading --------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        return (
            f"TrunkCache({str(self.cache_dir)!r}, rows={len(self)}, trunk=layers 0-{self.first_layer - 1}, "
            f"trainable={self.trainable_layers}, storage={self.meta['storage_dtype']})"
        )

    # The memmap is opened lazily and dropped when pickled, so that DataLoader workers reopen it themselves.
    def __getstate__(self):
        state = dict(self.__dict__)
        state["_states"] = None
        return state

    @property
    def states(self) -> np.ndarray:
        if self._states is None:
            dtype = np.float32 if self.meta["storage_dtype"] == "float32" else np.uint16
            total = self.meta["total_tokens"]
            self._states = np.memmap(
                self.cache_dir / STATES_FILE, dtype=dtype, mode="r", shape=(total, self.hidden_size)
            )
        return self._states

    def prompt_ids(self, row: int) -> list[int]:
        return self._rows[row]["prompt_ids"]

    def answer_ids(self, row: int) -> list[list[int]]:
        return self._rows[row]["answer_ids"]

    def check_model(self, model) -> None:
        """Raise [`TrunkCacheMismatchError`] unless `model`'s trunk is the one this cache was built with."""
        if num_decoder_layers(model) != self.num_layers:
            raise TrunkCacheMismatchError(
                f"The model has {num_decoder_layers(model)} decoder layers; the trunk cache in {self.cache_dir} was "
                f"built for {self.num_layers}."
            )
        if trunk_fingerprint(model, self.first_layer) != self.fingerprint:
            raise TrunkCacheMismatchError(
                f"The model's trunk (embedding and layers 0-{self.first_layer - 1}) differs from the one the cache in "
                f"{self.cache_dir} was built with: rebuild the cache for this model, or load the same base weights."
            )

    def locate(
        self, row: int, prompt_ids: Sequence[int], answers: Sequence[Sequence[int]], fields: Sequence[str]
    ) -> list[int]:
        """Index into cached row `row`'s answers of each of `answers` (token ids), after checking the prompt.

        `fields` names each answer in errors (e.g. `"chosen"`, `"rejected[3]"`). Raises a `TrunkCacheMismatchError`
        naming the row and the field when the prompt or an answer is not the one
        the cache holds for that row (the dataset must be the one the cache was built from, in the same order).
        """
        if not 0 <= row < len(self):
            raise TrunkCacheMismatchError(
                f"Row {row}: the trunk cache in {self.cache_dir} has only {len(self)} rows; build it from this dataset."
            )
        cached = self._rows[row]
        if list(prompt_ids) != cached["prompt_ids"]:
            raise TrunkCacheMismatchError(
                f"Row {row}, field `prompt`: its tokens differ from the trunk cache's row {row}. Build the cache from "
                "this dataset (same rows, same order, same tokenizer and separator)."
            )
        index = {tuple(ids): a for a, ids in enumerate(cached["answer_ids"])}
        out = []
        for ids, name in zip(answers, fields, strict=True):
            a = index.get(tuple(ids))
            if a is None:
                raise TrunkCacheMismatchError(
                    f"Row {row}, field `{name}`: this answer is not among the {len(cached['answer_ids'])} answers the "
                    "trunk cache holds for the row (build the cache with every answer the row can use, e.g. its "
                    "`candidates`)."
                )
            out.append(a)
        return out

    def _positions(self, row: int, selected: Sequence[int]) -> np.ndarray:
        """Cached positions of the packed row made of the prompt and the `selected` answers, in packing order."""
        cached = self._rows[row]
        prefix = len(cached["prompt_ids"]) - 1
        starts = cached["segment_starts"]
        lengths = [len(ids) + 1 for ids in cached["answer_ids"]]
        parts = [np.arange(prefix)] + [np.arange(starts[a], starts[a] + lengths[a]) for a in selected]
        return np.concatenate(parts) + cached["offset"]

    def batch(
        self,
        rows: Sequence[int],
        selected: Sequence[Sequence[int]] | None = None,
        pad_token_id: int = 0,
        pad_to_multiple_of: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """A packed batch of cached rows with their trunk states, for [`~trl_dynamicpo.packing.answer_logps`].

        Args:
            rows (`Sequence[int]`): Cached row indices.
            selected (`Sequence[Sequence[int]]`, *optional*): For each row, the indices of the answers to score, in
                order (answer 0 of the batch row is `selected[b][0]`). `None` scores every cached answer.
            pad_token_id (`int`, defaults to `0`): Padding id of `input_ids`.
            pad_to_multiple_of (`int`, *optional*): Pad the sequence length to a multiple of this value.

        Returns:
            `dict`: [`~trl_dynamicpo.packing.pack_answers`]'s packed batch plus `inputs_embeds` (`[B, L, hidden]`,
            float32; zeros on padding) and `trunk_first_layer` (0-dim).
        """
        from .packing import pack_answers

        if selected is None:
            selected = [list(range(len(self._rows[r]["answer_ids"]))) for r in rows]
        prompts = [self._rows[r]["prompt_ids"] for r in rows]
        answers = [[self._rows[r]["answer_ids"][a] for a in sel] for r, sel in zip(rows, selected)]
        batch = pack_answers(prompts, answers, pad_token_id, layout="packed", pad_to_multiple_of=pad_to_multiple_of)
        embeds = np.zeros((len(rows), batch["input_ids"].size(1), self.hidden_size), dtype=np.float32)
        states = self.states
        for b, (r, sel) in enumerate(zip(rows, selected)):
            positions = self._positions(r, sel)
            values = states[positions]
            if values.dtype == np.uint16:  # bfloat16 bits -> float32
                values = (values.astype(np.uint32) << 16).view(np.float32)
            embeds[b, : len(positions)] = values
        batch["inputs_embeds"] = torch.from_numpy(embeds)
        batch["trunk_first_layer"] = torch.tensor(self.first_layer)
        return batch

    # -- building -------------------------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        model,
        tokenizer,
        dataset,
        cache_dir: str | os.PathLike,
        *,
        num_trainable_layers: int,
        answers_column: str | None = None,
        batch_size: int = 4,
        separator: str = " ",
        max_prompt_length: int | None = None,
        autocast_dtype: str | None = None,
        storage_dtype: str = "float32",
        chunk_rows: int = 64,
        verify: bool = True,
        show_progress: bool = True,
        item_tokens=None,
    ) -> TrunkCache:
        """Run the trunk once over every row (prompt + all its answers, packed) and store the states on disk.

        Reuses a complete cache with the same settings; resumes a partial one; refuses a folder that holds a cache
        with other settings (use another folder: a cache is tied to its model, rows and settings).

        Args:
            model: The base causal LM (`PreTrainedModel`, or a `PeftModel` whose adapters sit above the trunk).
            tokenizer: Its tokenizer; rows are tokenized as the trainer and the evaluation do (EOS appended).
            dataset: Rows with `prompt` and `candidates` (or `chosen` + `rejected`): a `datasets.Dataset` or dicts.
            cache_dir (`str` or `os.PathLike`): Output folder.
            num_trainable_layers (`int`): The top layers that will be trained (and run per step); the trunk is
                everything below them.
            answers_column (`str`, *optional*): Column of answers to cache per row. Defaults to `candidates` when
                present (every answer training and ranking evaluation can use), else `[chosen, *rejected]`.
            batch_size (`int`, defaults to `4`): Rows per trunk forward.
            separator (`str`, defaults to `" "`): Between prompt and answer, as `DynamicPOConfig.completion_separator`.
            max_prompt_length (`int`, *optional*): Keep the end of longer prompts, as the evaluation does.
            autocast_dtype (`str`, *optional*): `"bfloat16"` runs the trunk under CPU/GPU autocast (about 1.7x faster
                on a CPU with AVX512-BF16; far slower on one without native bf16, where it warns); `"auto"`:
                bfloat16 where it is fast (`trl_dynamicpo.device.fast_bf16`), else fp32. The states stay float32 (the residual stream); every model of a study sees
                the same states, so policy and reference share any rounding.
            storage_dtype (`str`, defaults to `"float32"`): `"bfloat16"` halves the disk size (rounds the states).
            chunk_rows (`int`, defaults to `64`): Rows written per chunk (the unit of resumption).
            verify (`bool`, defaults to `True`): Check the first row against the full forward pass.
            show_progress (`bool`, defaults to `True`): Show a tqdm bar.
            item_tokens ([`~trl_dynamicpo.item_tokens.ItemTokens`], *optional*): Hybrid item tokens: the prompts are
                cached with their item tokens (marked as the trainer and the evaluation mark them). The vectors are
                added above the trunk, so the cached states do not depend on them.

        Returns:
            [`TrunkCache`].
        """
        from .data import tokenize_prompt_answers, truncate_prompt_ids
        from .packing import pack_answers

        if storage_dtype not in STORAGE_DTYPES:
            raise ValueError(f"`storage_dtype` must be one of {STORAGE_DTYPES}, got {storage_dtype!r}.")
        if autocast_dtype == "auto":  # resolved before the settings are recorded: the cache names what ran
            autocast_dtype = "bfloat16" if fast_bf16() else None
        if autocast_dtype not in (None, "float32", "bfloat16", "float16"):
            raise ValueError(
                f"`autocast_dtype` must be None, 'bfloat16', 'float16' or 'auto', got {autocast_dtype!r}."
            )
        first_layer = first_trainable_layer(model, num_trainable_layers)
        rows = _as_rows(dataset)
        tokenized = []
        for index, row in enumerate(rows):
            if row.get("prompt") is None or not isinstance(row["prompt"], str):
                raise ValueError(f"Row {index}, field `prompt`: the trunk cache needs a plain-text prompt.")
            if item_tokens is not None:
                row = {**row, "prompt": item_tokens.mark([row["prompt"]])[0][0]}
            answers = _row_answers(row, answers_column)
            if not answers or any(not isinstance(a, str) or not a for a in answers):
                raise ValueError(f"Row {index}, field `{answers_column or 'candidates'}`: needs non-empty titles.")
            prompt_ids, answer_ids = tokenize_prompt_answers(tokenizer, row["prompt"], answers, separator=separator)
            if max_prompt_length is not None:
                prompt_ids = truncate_prompt_ids(list(prompt_ids), max_prompt_length, tokenizer.bos_token_id)
            tokenized.append((list(prompt_ids), [list(a) for a in answer_ids]))

        decoder = decoder_of(model)
        settings = {
            "format_version": FORMAT_VERSION,
            "fingerprint": trunk_fingerprint(model, first_layer),
            "rows_fingerprint": _ids_digest(tokenized),
            "first_layer": first_layer,
            "num_layers": len(decoder.layers),
            "hidden_size": int(decoder.get_input_embeddings().weight.shape[1]),
            "autocast_dtype": autocast_dtype,
            "storage_dtype": storage_dtype,
            "num_rows": len(tokenized),
            "separator": separator,
            "max_prompt_length": max_prompt_length,
        }
        cache_dir = Path(cache_dir)
        meta_path = cache_dir / META_FILE
        if meta_path.is_file():
            existing = json.loads(meta_path.read_text())
            differing = sorted(k for k in settings if existing.get(k) != settings[k])
            if not differing and existing.get("complete"):
                try:
                    return cls(cache_dir)
                except TrunkCacheDamagedError as err:
                    aside = set_aside_damaged(cache_dir)
                    print(f"    {err} Its files were moved to {aside} (not deleted); building it again.", flush=True)
                    existing = None
            if existing is not None and differing:
                raise TrunkCacheMismatchError(
                    f"{cache_dir} holds a trunk cache built with other settings ({', '.join(differing)}); use another "
                    "folder or delete it."
                )
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_json(meta_path, {**settings, "complete": False})

        # Resume: keep the rows whose line was written (a line is written only after its states are flushed).
        rows_path, states_path = cache_dir / ROWS_FILE, cache_dir / STATES_FILE
        done = []
        if rows_path.is_file():
            for line in rows_path.read_text().splitlines():
                try:
                    done.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a torn last line
        itemsize = 4 if storage_dtype == "float32" else 2
        offset = done[-1]["offset"] + done[-1]["length"] if done else 0
        with open(rows_path, "w") as f:  # rewrite without a torn line
            f.writelines(json.dumps(r) + "\n" for r in done)
        with open(states_path, "ab") as f:
            f.truncate(offset * settings["hidden_size"] * itemsize)

        start = len(done)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        if autocast_dtype == "bfloat16" and device.type == "cpu" and start < len(tokenized):
            warn_if_slow_bf16("TrunkCache.build(autocast_dtype='bfloat16')")
        autocast = (
            torch.autocast(device.type, dtype=getattr(torch, autocast_dtype))
            if autocast_dtype in ("bfloat16", "float16")
            else _null()
        )
        order = list(range(start, len(tokenized)))
        progress = _progress(len(tokenized), start, f"trunk cache (layers 0-{first_layer - 1})", show_progress)
        try:
            with open(states_path, "ab") as states_file, open(rows_path, "a") as rows_file:
                for chunk_start in range(0, len(order), chunk_rows):
                    chunk = order[chunk_start : chunk_start + chunk_rows]
                    lines = []
                    for b0 in range(0, len(chunk), batch_size):
                        batch_rows = chunk[b0 : b0 + batch_size]
                        packed = pack_answers(
                            [tokenized[i][0] for i in batch_rows], [tokenized[i][1] for i in batch_rows], pad_id
                        )
                        packed = {k: v.to(device) for k, v in packed.items()}
                        with torch.no_grad(), autocast:
                            states = compute_trunk_states(model, packed, first_layer).float().cpu()
                        for b, i in enumerate(batch_rows):
                            prompt_ids, answer_ids = tokenized[i]
                            length = len(prompt_ids) - 1 + sum(len(a) + 1 for a in answer_ids)
                            values = states[b, :length].contiguous()
                            if storage_dtype == "bfloat16":
                                data = values.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
                            else:
                                data = values.numpy().tobytes()
                            states_file.write(data)
                            starts = np.cumsum([len(prompt_ids) - 1] + [len(a) + 1 for a in answer_ids[:-1]])
                            lines.append(
                                {
                                    "prompt_ids": prompt_ids,
                                    "answer_ids": answer_ids,
                                    "offset": offset,
                                    "length": length,
                                    "segment_starts": [int(s) for s in starts],
                                }
                            )
                            offset += length
                        progress.update(len(batch_rows))
                    states_file.flush()
                    os.fsync(states_file.fileno())
                    rows_file.writelines(json.dumps(line) + "\n" for line in lines)
                    rows_file.flush()
        finally:
            progress.close()
            model.train(was_training)
        # Recorded once complete, checked on every open: a truncated or zeroed file is found before it is read.
        files = {name: _file_record(cache_dir / name) for name in (ROWS_FILE, STATES_FILE)}
        write_json(meta_path, {**settings, "complete": True, "total_tokens": offset, "files": files})
        cache = cls(cache_dir)
        if verify and len(cache):
            cache.verify(model, row=0, autocast_dtype=autocast_dtype)
        return cache

    def verify(self, model, row: int = 0, autocast_dtype: str | None = None, atol: float | None = None) -> float:
        """Compare the cached forward of `row` with the full forward; raise if they differ. Returns max |Δ logp|.

        The default tolerance is 1e-3 nats in fp32 and 0.5 under autocast, where bf16 GEMMs round differently for
        different batch shapes (the full forward here is one unpadded row): a wrong layer index or an architecture
        that transforms its inputs outside the decoder layers shows up as differences of whole nats.
        """
        from .packing import answer_logps, pack_answers

        pad_id = 0
        cached = self.batch([row], pad_token_id=pad_id)
        full = pack_answers([self.prompt_ids(row)], [self.answer_ids(row)], pad_id)
        device = next(model.parameters()).device
        autocast = (
            torch.autocast(device.type, dtype=getattr(torch, autocast_dtype))
            if autocast_dtype in ("bfloat16", "float16")
            else _null()
        )
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), autocast:
                a = answer_logps(model, {k: v.to(device) for k, v in cached.items()}).float()
                b = answer_logps(model, {k: v.to(device) for k, v in full.items()}).float()
        finally:
            model.train(was_training)
        diff = float((a - b).abs().max())
        tolerance = atol if atol is not None else (1e-3 if autocast_dtype in (None, "float32") else 0.5)
        if not diff <= tolerance:
            raise TrunkCacheMismatchError(
                f"The cached forward of row {row} differs from the full forward by {diff:.3g} nats (tolerance "
                f"{tolerance}); this architecture is not supported by the trunk cache."
            )
        return diff


def _as_rows(dataset) -> list[dict[str, Any]]:
    if hasattr(dataset, "column_names"):
        names = [c for c in ("prompt", "candidates", "chosen", "rejected") if c in dataset.column_names]
        columns = dataset.select_columns(names).to_dict()
        return [dict(zip(columns, values)) for values in zip(*columns.values())]
    return [dict(row) for row in dataset]


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _NoProgress:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, initial: int, desc: str, show: bool):
    if not show or os.environ.get("TQDM_DISABLE"):
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="row")
