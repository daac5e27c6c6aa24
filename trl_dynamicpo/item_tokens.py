"""Hybrid item tokens: a classical recommender's item embeddings, projected into the LLM next to each title.

LLM recommenders of the LLaRA / A-LLMRec / CoLLM line read a title as text *and* as a collaborative embedding: a
sequential recommender (here the dataset builder's SASRec teacher) knows which items co-occur, the LLM knows what the
titles mean. This module adds that to any model the library trains, without new vocabulary:

1. **Marking.** Every prompt line that is exactly an item title (the builders write one title per line) gets an *item
   token* appended: a single token the prompts never use (by default a reserved special token of the tokenizer, e.g.
   `<empty_output>` for SmolLM2). Marking works on the prompt text alone, so it applies after candidate-order
   rotations and before truncation, and the marker always sits right after its title.
2. **Features.** Each marker's vector is the item's teacher embedding `e` (`features="item"`), optionally with its
   interaction with the row's teacher sequence state `s` (`features="item+state"`: `[e, s * e]`, whose sum is the
   teacher's own logit for that item).
3. **Injection.** A small MLP ([`ItemTokenProjector`]) maps the vectors to the LM's hidden size, and the result is
   *added* to the hidden state entering one decoder layer at the marker positions. Two injection points:

   - `layer=0`: at the input embeddings (LLaRA's way; for LoRA on every layer);
   - `layer=first trainable layer`: at the input of the lowest layer the adapter trains. The frozen trunk below never
     sees the vectors, so the frozen-trunk cache ([`~trl_dynamicpo.trunk_cache`]) stays exact and is reused as is.

   The projector's last layer starts at zero, so a model with fresh item tokens computes exactly what it computed
   without them: training starts from the text-only model (e.g. a text SFT adapter) and learns how much to use them.

The markers are found in the token ids at forward time (`input_ids == item_token_id` in the prompt part), so packing,
the concatenated layout, truncation (the oldest markers drop with their titles; the vectors are aligned from the end)
and rotations need no bookkeeping beyond the per-row list of marked titles.

Example:

```python
from trl_dynamicpo.item_tokens import ItemEmbeddingTable, ItemTokenProjector, attach_item_tokens

table = ItemEmbeddingTable.from_folder("data/movielens-100k")  # item_embeddings.parquet of a `--teacher` build
projector = ItemTokenProjector(table.dim, model.config.hidden_size, item_token_id=16, layer=28)
attach_item_tokens(model, projector)
args = DynamicPOConfig("out", item_embeddings="data/movielens-100k")  # the trainer marks rows and injects
```
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .model_utils import decoder_of, unwrap_causal_lm


ITEM_TABLE_FILE = "item_embeddings.parquet"
CONFIG_FILE = "item_tokens.json"
WEIGHTS_FILE = "item_tokens.safetensors"
FEATURES = ("item", "item+state")
_ATTRIBUTE = "item_token_projector"
# Reserved special tokens of common tokenizers that prompts of this library never contain, in order of preference.
_RESERVED_CANDIDATES = ("<empty_output>", "<|reserved_special_token_0|>", "<|item|>", "<item>")


# ----------------------------------------------------------------------------------------------------------------------
# The item table (from a dataset build)
# ----------------------------------------------------------------------------------------------------------------------
class ItemEmbeddingTable:
    """Title -> teacher item embedding, as exported by a `--teacher` dataset build (`item_embeddings.parquet`).

    Args:
        titles (`Sequence[str]`): Item titles, exactly as the prompts write them (unique).
        embeddings (`np.ndarray`): `[num_items, dim]` float32, row `i` for `titles[i]`.
        source (`str`, *optional*): Where the table came from (recorded with adapters that use it).
    """

    def __init__(self, titles: Sequence[str], embeddings: np.ndarray, source: str | None = None):
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(titles):
            raise ValueError(
                f"The item table needs one embedding per title: got {len(titles)} titles and an array of shape "
                f"{tuple(embeddings.shape)}."
            )
        if not np.isfinite(embeddings).all():
            bad = int(np.argwhere(~np.isfinite(embeddings))[0, 0])
            raise ValueError(f"Item table row {bad} ({titles[bad]!r}): the embedding has NaN or inf values.")
        self.titles = list(titles)
        self.index = {title: i for i, title in enumerate(self.titles)}
        if len(self.index) != len(self.titles):
            raise ValueError("The item table's titles must be unique.")
        self.embeddings = embeddings
        self.source = source

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return len(self.titles)

    def __contains__(self, title: str) -> bool:
        return title in self.index

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> ItemEmbeddingTable:
        """Read `item_embeddings.parquet` (columns `title`, `embedding`) from a dataset folder or a file path."""
        import pyarrow.parquet as pq

        path = Path(folder)
        if path.is_dir():
            path = path / ITEM_TABLE_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"No item-embedding table at {path}: build the dataset with a teacher (`--teacher sasrec`), which "
                f"writes {ITEM_TABLE_FILE} next to the splits."
            )
        table = pq.read_table(path, columns=["title", "embedding"])
        titles = table.column("title").to_pylist()
        embeddings = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
        return cls(titles, embeddings, source=str(folder))

    def lookup(self, titles: Sequence[str], row: int | None = None) -> np.ndarray:
        """`[len(titles), dim]` embeddings; a `KeyError` names the row and the unknown title."""
        try:
            return self.embeddings[[self.index[t] for t in titles]]
        except KeyError as error:
            where = f"Row {row}: " if row is not None else ""
            raise KeyError(
                f"{where}item {error.args[0]!r} is not in the item-embedding table ({self.source})."
            ) from None


def default_item_token(tokenizer) -> str:
    """A single token the prompts never use, to mark item positions: a reserved special token of the tokenizer."""
    vocab = tokenizer.get_vocab()
    busy = {tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token, tokenizer.unk_token}
    for token in _RESERVED_CANDIDATES:
        if token in vocab and token not in busy:
            return token
    raise ValueError(
        f"{type(tokenizer).__name__} has none of the reserved tokens {_RESERVED_CANDIDATES}; pass `item_token=` "
        "with a token of its vocabulary that the prompts never contain (or add one with `tokenizer.add_tokens`)."
    )


def item_token_id(tokenizer, item_token: str) -> int:
    """The id of `item_token`, checked to encode as exactly one token after a title and before a newline."""
    ids = tokenizer(f"Heat (1995){item_token}\nAnswer:", add_special_tokens=False).input_ids
    token_id = tokenizer.convert_tokens_to_ids(item_token)
    if token_id is None or token_id == tokenizer.unk_token_id or ids.count(token_id) != 1:
        raise ValueError(
            f"The item token {item_token!r} does not encode as one token of its own in context; use a special or added "
            "token (e.g. `tokenizer.add_special_tokens({'additional_special_tokens': ['<item>']})`)."
        )
    return int(token_id)


def mark_items(prompt: str, table: ItemEmbeddingTable, item_token: str) -> tuple[str, list[str]]:
    """Append `item_token` to every prompt line that is exactly a title of `table`.

    Returns the marked prompt and the marked titles in prompt order (history first, then candidates, for the builders'
    templates). Lines that are not titles (the template's text) are left alone.

    Example:

    ```python
    >>> table = ItemEmbeddingTable(["Heat (1995)", "Fargo (1996)"], np.zeros((2, 4)))
    >>> mark_items("Seen:\\nHeat (1995)\\nPick one:\\nFargo (1996)\\nAnswer:", table, "<item>")
    ('Seen:\\nHeat (1995)<item>\\nPick one:\\nFargo (1996)<item>\\nAnswer:', ['Heat (1995)', 'Fargo (1996)'])
    ```
    """
    if item_token in prompt:
        raise ValueError(
            f"The prompt already contains the item token {item_token!r}: mark each prompt once, or choose another "
            "`item_token`."
        )
    lines = prompt.split("\n")
    titles = []
    for i, line in enumerate(lines):
        if line in table.index:
            titles.append(line)
            lines[i] = line + item_token
    return "\n".join(lines), titles


def item_features(
    table: ItemEmbeddingTable, titles: Sequence[str], user_state: Sequence[float] | None, features: str, row=None
) -> np.ndarray:
    """The projector's input for each marked title of one row, `[len(titles), in_dim]` float32."""
    item = table.lookup(titles, row=row)
    if features == "item":
        return item
    if user_state is None:
        raise ValueError(
            f"Row {row}: `item_features='item+state'` needs the teacher's sequence state of the row (the `embedding` "
            "column of a `--teacher` build)."
        )
    state = np.asarray(user_state, dtype=np.float32)
    if state.shape != (table.dim,):
        raise ValueError(f"Row {row}: the `embedding` has {state.size} values, the item table {table.dim}.")
    return np.concatenate([item, item * state[None, :]], axis=1)


def feature_dim(table_dim: int, features: str) -> int:
    if features not in FEATURES:
        raise ValueError(f"`item_features` must be one of {FEATURES}, got {features!r}.")
    return table_dim * (2 if features == "item+state" else 1)


def pad_features(rows: Sequence[np.ndarray], width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-row `[M_b, F]` arrays into `[B, M, F]` features and a `[B, M]` mask (right-padded)."""
    dim = next((r.shape[1] for r in rows if r.ndim == 2 and r.shape[0]), 1)
    width = max([len(r) for r in rows] + [0]) if width is None else width
    out = torch.zeros(len(rows), width, dim)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for b, r in enumerate(rows):
        if len(r):
            out[b, : len(r)] = torch.from_numpy(np.asarray(r, dtype=np.float32))
            mask[b, : len(r)] = True
    return out, mask


# ----------------------------------------------------------------------------------------------------------------------
# The projector and its injection
# ----------------------------------------------------------------------------------------------------------------------
class ItemTokenProjector(nn.Module):
    """MLP from the teacher's vectors to the LM's hidden size, added at the item-token positions of one layer's input.

    Args:
        in_dim (`int`): Feature size ([`feature_dim`]: the teacher's dim, or twice it for `"item+state"`).
        hidden_size (`int`): The LM's hidden size.
        item_token_id (`int`): Token id of the marker ([`item_token_id`]).
        layer (`int`): Decoder layer whose input receives the vectors (0: the input embeddings).
        item_token (`str`, *optional*): The marker's text (saved with the adapter, for [`mark_items`]).
        features (`str`, defaults to `"item"`): `"item"` or `"item+state"` (see the module docstring).
        projector_hidden (`int`, *optional*): Width of the MLP's hidden layer (default: the LM's hidden size).
        feature_dropout (`float`, defaults to `0.0`): Dropout on the teacher's vectors while training, against trusting
            train-row teacher vectors more than held-out ones.
        table_source (`str`, *optional*): Where the item table came from (recorded in the adapter folder and card).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_size: int,
        item_token_id: int,
        layer: int,
        item_token: str | None = None,
        features: str = "item",
        projector_hidden: int | None = None,
        feature_dropout: float = 0.0,
        table_source: str | None = None,
    ):
        super().__init__()
        if features not in FEATURES:
            raise ValueError(f"`features` must be one of {FEATURES}, got {features!r}.")
        if not 0.0 <= feature_dropout < 1.0:
            raise ValueError(f"`feature_dropout` must lie in [0, 1), got {feature_dropout}.")
        self.config = {
            "in_dim": int(in_dim),
            "hidden_size": int(hidden_size),
            "item_token_id": int(item_token_id),
            "layer": int(layer),
            "item_token": item_token,
            "features": features,
            "projector_hidden": int(projector_hidden or hidden_size),
            "feature_dropout": float(feature_dropout),
            "table_source": table_source,
        }
        width = self.config["projector_hidden"]
        self.dropout = nn.Dropout(feature_dropout)
        self.net = nn.Sequential(nn.Linear(in_dim, width), nn.GELU(), nn.Linear(width, hidden_size))
        # Zero output: fresh item tokens change nothing, so training starts from the text-only model.
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)
        self._pending = None
        self._reference = None  # frozen copy of `net` for the reference forward (see `snapshot_reference`)
        self._use_reference = False

    @property
    def layer(self) -> int:
        return self.config["layer"]

    @property
    def item_token_id(self) -> int:
        return self.config["item_token_id"]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self._use_reference and self._reference is not None:
            return self._reference[0](features)
        return self.net(self.dropout(features))

    def snapshot_reference(self) -> None:
        """Keep a frozen copy of the current weights for the reference forward (the policy's starting point)."""
        import copy

        # A list, so that the copy is neither a submodule (saved, optimized) nor moved by `.to()` separately.
        self._reference = [copy.deepcopy(self.net).requires_grad_(False).eval()]

    @contextlib.contextmanager
    def reference(self):
        """Use the snapshot (if any) inside the block: the reference model's item tokens."""
        previous, self._use_reference = self._use_reference, True
        try:
            yield
        finally:
            self._use_reference = previous

    def _inject(self, module, args, kwargs):
        if self._pending is None:
            return None
        batch_index, positions, features, shape, weights = self._pending
        hidden = args[0] if args else kwargs["hidden_states"]
        if tuple(hidden.shape[:2]) != shape:
            # Generation's decoding steps (one new token): the markers were all in the prompt's prefill.
            return None
        delta = self(features.to(device=hidden.device, dtype=next(self.parameters()).dtype)).to(hidden.dtype)
        if weights is not None:  # the curriculum's text-only rows: markers without vectors
            delta = delta * weights.to(device=hidden.device, dtype=hidden.dtype)[:, None]
        hidden = hidden.index_put((batch_index.to(hidden.device), positions.to(hidden.device)), delta, accumulate=True)
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}


def attach_item_tokens(model, projector: ItemTokenProjector) -> ItemTokenProjector:
    """Register `projector` on `model` (a causal LM or a `PeftModel`) and hook it onto its decoder layer's input.

    The projector becomes a submodule of the causal LM (so it moves with `.to()` and its parameters reach the
    optimizer), trainable, and is returned. Attaching a second projector replaces the first.
    """
    causal_lm = unwrap_causal_lm(model)
    decoder = decoder_of(causal_lm)
    if not 0 <= projector.layer < len(decoder.layers):
        raise ValueError(f"Item-token layer {projector.layer} is outside the model's {len(decoder.layers)} layers.")
    previous = getattr(causal_lm, _ATTRIBUTE, None)
    if previous is not None:
        previous._handle.remove()
    param = next(causal_lm.parameters())
    projector.to(device=param.device)
    projector.requires_grad_(True)
    setattr(causal_lm, _ATTRIBUTE, projector)
    projector._handle = decoder.layers[projector.layer].register_forward_pre_hook(projector._inject, with_kwargs=True)
    return projector


def get_item_tokens(model) -> ItemTokenProjector | None:
    """The [`ItemTokenProjector`] attached to `model`, or None."""
    return getattr(unwrap_causal_lm(model), _ATTRIBUTE, None)


def marker_positions(
    input_ids: torch.Tensor, prompt_mask: torch.Tensor, token_id: int, feature_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, position) of every item token in the prompt part of each sequence, checked against the features.

    `feature_mask[b]` has one True per marked title of row `b`, in prompt order; the markers found in the token ids
    must be as many (the collator aligns the features from the end after truncation).
    """
    found = (input_ids == token_id) & prompt_mask
    counts, expected = found.sum(dim=1), feature_mask.sum(dim=1).to(found.device)
    if not torch.equal(counts, expected):
        b = int((counts != expected).nonzero()[0, 0])
        raise ValueError(
            f"Batch row {b}: the prompt holds {int(counts[b])} item tokens but {int(expected[b])} item vectors were "
            "given (mark the prompts with `mark_items` and build the features from the same titles)."
        )
    return found.nonzero(as_tuple=True)


@contextlib.contextmanager
def injecting(model, batch: dict[str, Any], sequence_rows: torch.Tensor | None = None):
    """Inside the block, `model`'s forward adds the batch's projected item vectors at its item tokens.

    Args:
        model: A model with an attached [`ItemTokenProjector`] (else a no-op).
        batch (`dict`): `input_ids`, `item_features` (`[B, M, F]`), `item_mask` (`[B, M]`) and either `segment_ids`
            (packed: the prompt is segment 0) or `labels` + `attention_mask` (one sequence per answer); optionally
            `item_weight` (`[B]`, each row's factor on its vectors: 0 for the curriculum's text-only rows).
        sequence_rows (`torch.Tensor`, *optional*): For one-sequence-per-answer batches, the row of each sequence.
    """
    projector = get_item_tokens(model)
    if projector is None or "item_features" not in batch:
        if projector is None and "item_features" in batch:
            raise ValueError("The batch carries item vectors but the model has no item-token projector attached.")
        yield
        return
    input_ids = batch["input_ids"]
    features, feature_mask = batch["item_features"], batch["item_mask"]
    if sequence_rows is not None:
        features, feature_mask = features[sequence_rows], feature_mask[sequence_rows]
    if "segment_ids" in batch:
        prompt_mask = batch["segment_ids"] == 0
    else:
        prompt_mask = (batch["labels"] == -100) & batch["attention_mask"].bool()
    rows, positions = marker_positions(input_ids, prompt_mask, projector.item_token_id, feature_mask)
    flat = features[feature_mask.to(features.device)]  # row-major: the markers' order within each row
    weights = batch.get("item_weight")
    if weights is not None:
        weights = (weights[sequence_rows] if sequence_rows is not None else weights)[rows.to(weights.device)]
    projector._pending = (rows, positions, flat, tuple(input_ids.shape[:2]), weights)
    # Under gradient checkpointing the layer runs again during backward and must add the same vectors: the trainer
    # clears them after its backward pass instead.
    keep = torch.is_grad_enabled() and getattr(decoder_of(model), "gradient_checkpointing", False)
    try:
        yield
    finally:
        if not keep:
            projector._pending = None


def lowest_trainable_layer(model, peft_config=None) -> int:
    """The lowest decoder layer an adapter trains: `peft_config.layers_to_transform`, else the lowest layer with a
    trainable parameter, else 0 (full fine-tuning)."""
    import re

    layers = getattr(peft_config, "layers_to_transform", None)
    if layers is not None:
        return min([layers] if isinstance(layers, int) else layers)
    pattern = re.compile(r"(?:^|\.)layers\.(\d+)\.")
    found = [
        int(m.group(1)) for name, p in model.named_parameters() if p.requires_grad and (m := pattern.search(name))
    ]
    if peft_config is None and found:
        return min(found)
    return 0


# ----------------------------------------------------------------------------------------------------------------------
# Save / load with an adapter
# ----------------------------------------------------------------------------------------------------------------------
def save_item_tokens(model, folder: str | os.PathLike, table: str | os.PathLike | None = None) -> bool:
    """Write the attached projector (`item_tokens.json` + `item_tokens.safetensors`) to `folder`; False if none.

    With `table` (a dataset folder or the `item_embeddings.parquet` file the projector was trained with), the table is
    copied next to it, so that the adapter folder alone can score new users (`trl_dynamicpo.recommend.Recommender`).
    """
    import shutil

    from safetensors.torch import save_file

    projector = get_item_tokens(model)
    if projector is None:
        return False
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if table is not None:
        source = Path(table) / ITEM_TABLE_FILE if Path(table).is_dir() else Path(table)
        if source.resolve() != (folder / ITEM_TABLE_FILE).resolve():
            shutil.copyfile(source, folder / ITEM_TABLE_FILE)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in projector.net.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(projector.config, indent=2) + "\n")
    return True


def load_item_tokens(model, folder: str | os.PathLike) -> ItemTokenProjector | None:
    """Attach the projector saved in `folder` (by [`save_item_tokens`]) to `model`; None if the folder has none."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        return None
    config = json.loads((folder / CONFIG_FILE).read_text())
    projector = ItemTokenProjector(**config)
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
    except (OSError, SafetensorError) as error:
        raise ValueError(
            f"{folder / WEIGHTS_FILE}: the item-token projector's weights cannot be read ({error})."
        ) from None
    projector.net.load_state_dict(state)
    return attach_item_tokens(model, projector)


class ItemTokens:
    """The data side of hybrid item tokens: the table, the marker and the feature mode, for marking rows.

    Args:
        table ([`ItemEmbeddingTable`]): The teacher's item embeddings.
        item_token (`str`): The marker text.
        features (`str`, defaults to `"item"`): See [`ItemTokenProjector`].
    """

    def __init__(
        self, table: ItemEmbeddingTable, item_token: str, features: str = "item", token_id: int | None = None
    ):
        feature_dim(table.dim, features)  # validates `features`
        self.table, self.item_token, self.features, self.token_id = table, item_token, features, token_id

    @classmethod
    def for_model(cls, model, table: ItemEmbeddingTable) -> ItemTokens:
        projector = get_item_tokens(model)
        if projector is None:
            raise ValueError("The model has no item-token projector attached (see `attach_item_tokens`).")
        config = projector.config
        return cls(table, config["item_token"], config["features"], config["item_token_id"])

    def mark(self, prompts: Sequence[str]) -> tuple[list[str], list[list[str]]]:
        """Marked prompts and each prompt's marked titles."""
        marked, titles = [], []
        for prompt in prompts:
            text, names = mark_items(prompt, self.table, self.item_token)
            marked.append(text)
            titles.append(names)
        return marked, titles

    def batch_features(self, examples: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """`item_features` / `item_mask` of tokenized rows (`prompt_ids`, `item_titles`, optional `embedding`)."""
        rows = []
        for position, ex in enumerate(examples):
            count = sum(1 for t in ex["prompt_ids"] if t == self.token_id)
            row = ex.get("row_index", position)
            rows.append(self.features_for(ex["item_titles"], ex.get("embedding"), num_markers=count, row=row))
        return pad_features(rows)

    def features_for(
        self, titles: Sequence[str], user_state=None, num_markers: int | None = None, row=None
    ) -> np.ndarray:
        """Features of a row's marked titles; with `num_markers` (after truncation), only the last ones."""
        if num_markers is not None:
            titles = titles[len(titles) - num_markers :] if num_markers else []
        return item_features(self.table, titles, user_state, self.features, row=row)
