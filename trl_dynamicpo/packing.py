"""Shared-prefix ("packed") batches and per-answer log-probabilities.

A multi-negative row has one prompt and 1 + K answers. TRL's layout repeats the prompt for every answer
(`concatenated`): 1 + K sequences of `prompt + answer`. Recommendation prompts are long (history + 20 candidate
titles) and answers are short titles, so almost all of that compute is the same prompt again. The `packed` layout
puts the prompt once and all answers after it in one sequence:

    prompt[:-1] | prompt[-1] answer_0 | prompt[-1] answer_1 | ... | prompt[-1] answer_K

A 4D additive float mask lets each answer segment see the shared prefix and its own earlier tokens only, and the
position ids of every segment restart at `len(prompt) - 1`, so each answer is scored exactly as if it followed the
prompt alone. The last prompt token opens every segment because its hidden state is what predicts the first answer
token; repeating it costs one token per answer.

Float masks (0 / dtype min) are used on purpose: with transformers 5.23, boolean 4D masks are silently wrong under
eager attention.
"""

import functools
import types
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers.data.data_collator import DataCollatorMixin


LAYOUTS = ("packed", "concatenated")
_FUSED_MARKER = "_trl_dynamicpo_answer_lm_head"
_VOCAB_CHUNK = 32768
# On devices without Triton TRL's kernel falls back to torch ops on [tokens, chunk] tiles; with 32k-wide tiles every
# temporary is hundreds of MB (fresh pages from the OS each time), which made the LM head 2x slower forward and 4.5x
# slower forward + backward than 1k-wide tiles on a CPU (benchmarks/lm_head.py).
_CPU_VOCAB_CHUNK = 1024
# Seed stream of the item-token curriculum's per-row draws (apart from the negatives' (seed, epoch, row) stream).
_CURRICULUM_STREAM = 0x17E4


def _pad_to(length: int, multiple: int | None) -> int:
    if multiple:
        return ((length + multiple - 1) // multiple) * multiple
    return length


def pack_answers(
    prompt_ids: list[list[int]],
    answer_ids: list[list[list[int]]],
    pad_token_id: int,
    layout: str = "packed",
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Build a batch that scores every answer of every row in one forward pass.

    Args:
        prompt_ids (`list[list[int]]`):
            Token ids of each row's prompt (at least one token).
        answer_ids (`list[list[list[int]]]`):
            For each row, the token ids of each of its answers (at least one token each). Rows may have different
            numbers of answers; missing ones are masked in `answer_mask`.
        pad_token_id (`int`):
            Padding token id.
        layout (`str`, *optional*, defaults to `"packed"`):
            `"packed"` (prompt once, answers after it, 4D mask built at forward time) or `"concatenated"` (TRL's
            layout: one `prompt + answer` sequence per answer).
        pad_to_multiple_of (`int`, *optional*):
            Pad the sequence length to a multiple of this value.

    Returns:
        `dict[str, torch.Tensor]`: always `input_ids`, `labels` (answer tokens, `-100` elsewhere) and `answer_mask`
        (`[B, A]` bool). Packed adds `position_ids` and `segment_ids` (`-1` padding, `0` shared prefix, `a + 1` for
        answer `a`); concatenated adds `attention_mask` and `sequence_index` (flat index `b * A + a` of each sequence).

    Example:
    ```python
    >>> from trl_dynamicpo.packing import pack_answers
    >>> batch = pack_answers([[5, 6, 7]], [[[8, 2], [9, 2]]], pad_token_id=0)
    >>> batch["input_ids"].tolist(), batch["position_ids"].tolist()
    ([[5, 6, 7, 8, 2, 7, 9, 2]], [[0, 1, 2, 3, 4, 2, 3, 4]])
    ```
    """
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown layout {layout!r}; expected one of {LAYOUTS}.")
    if len(prompt_ids) != len(answer_ids):
        raise ValueError(f"Got {len(prompt_ids)} prompts but answers for {len(answer_ids)} rows.")
    for b, (prompt, answers) in enumerate(zip(prompt_ids, answer_ids)):
        if len(prompt) == 0:
            raise ValueError(f"Row {b}: the prompt has no tokens; the first answer token needs a context token.")
        if len(answers) == 0 or any(len(a) == 0 for a in answers):
            raise ValueError(f"Row {b}: every row needs at least one answer and every answer at least one token.")
    num_rows = len(prompt_ids)
    num_answers = max(len(answers) for answers in answer_ids)
    answer_mask = torch.zeros(num_rows, num_answers, dtype=torch.bool)
    for b, answers in enumerate(answer_ids):
        answer_mask[b, : len(answers)] = True
    if layout == "packed":
        batch = _pack(prompt_ids, answer_ids, pad_token_id, pad_to_multiple_of)
    else:
        batch = _concatenate(prompt_ids, answer_ids, pad_token_id, pad_to_multiple_of, num_answers)
    batch["answer_mask"] = answer_mask
    return batch


def _pack(prompt_ids, answer_ids, pad_token_id, pad_to_multiple_of):
    lengths = [len(p) + sum(len(a) + 1 for a in answers) - 1 for p, answers in zip(prompt_ids, answer_ids)]
    length = _pad_to(max(lengths), pad_to_multiple_of)
    num_rows = len(prompt_ids)
    input_ids = np.full((num_rows, length), pad_token_id, dtype=np.int64)
    labels = np.full((num_rows, length), -100, dtype=np.int64)
    position_ids = np.zeros((num_rows, length), dtype=np.int64)
    segment_ids = np.full((num_rows, length), -1, dtype=np.int64)
    for b, (prompt, answers) in enumerate(zip(prompt_ids, answer_ids)):
        prefix = len(prompt) - 1
        input_ids[b, :prefix] = prompt[:-1]
        position_ids[b, :prefix] = np.arange(prefix)
        segment_ids[b, :prefix] = 0
        start = prefix
        for a, answer in enumerate(answers):
            end = start + 1 + len(answer)
            input_ids[b, start] = prompt[-1]
            input_ids[b, start + 1 : end] = answer
            labels[b, start + 1 : end] = answer
            position_ids[b, start:end] = np.arange(prefix, prefix + 1 + len(answer))
            segment_ids[b, start:end] = a + 1
            start = end
        # Padding positions continue counting so that rotary embeddings never see odd values; they are masked anyway.
        position_ids[b, start:] = np.arange(prefix + 1, prefix + 1 + length - start)
    return {
        "input_ids": torch.from_numpy(input_ids),
        "labels": torch.from_numpy(labels),
        "position_ids": torch.from_numpy(position_ids),
        "segment_ids": torch.from_numpy(segment_ids),
    }


def _concatenate(prompt_ids, answer_ids, pad_token_id, pad_to_multiple_of, num_answers):
    sequences, label_rows, index = [], [], []
    for b, (prompt, answers) in enumerate(zip(prompt_ids, answer_ids)):
        for a, answer in enumerate(answers):
            sequences.append(list(prompt) + list(answer))
            label_rows.append([-100] * len(prompt) + list(answer))
            index.append(b * num_answers + a)
    length = _pad_to(max(len(s) for s in sequences), pad_to_multiple_of)
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(sequences), length), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, (seq, lab) in enumerate(zip(sequences, label_rows)):
        input_ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, : len(seq)] = torch.tensor(lab)
        attention_mask[i, : len(seq)] = 1
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "sequence_index": torch.tensor(index, dtype=torch.long),
    }


def packed_attention_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The `[B, 1, L, L]` additive float mask of a packed batch.

    Query `i` may attend key `k <= i` when `k` is in the shared prefix or in the same answer segment as `i`. A padding
    query attends only itself, so that no row of the mask is fully masked (which would give NaN under sdpa).
    """
    length = segment_ids.size(1)
    seg_q = segment_ids.unsqueeze(2)
    seg_k = segment_ids.unsqueeze(1)
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = causal & (seg_q >= 0) & (seg_k >= 0) & ((seg_k == 0) | (seg_k == seg_q))
    allowed = allowed | torch.eye(length, dtype=torch.bool, device=segment_ids.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask.unsqueeze(1)


def packed_block_mask(segment_ids: torch.Tensor):
    """The packed mask of [`packed_attention_mask`] as a FlexAttention `BlockMask`, for `attn_implementation=
    "flex_attention"`.

    SDPA takes the dense float mask only through its memory-efficient or math kernels; FlexAttention reads the same
    rule from `segment_ids` and skips the fully masked blocks (most of the answer-by-answer blocks), so the mask is
    never materialized as `[B, 1, L, L]` floats.

    Args:
        segment_ids (`torch.Tensor`):
            `[B, L]` segment ids of a packed batch (`-1` padding, `0` shared prefix, `a + 1` for answer `a`).
    """
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q, k):
        seg_q, seg_k = segment_ids[b, q], segment_ids[b, k]
        allowed = (k <= q) & (seg_q >= 0) & (seg_k >= 0) & ((seg_k == 0) | (seg_k == seg_q))
        return allowed | (q == k)  # a padding query attends itself, as in the dense mask

    num_rows, length = segment_ids.shape
    return create_block_mask(mask_mod, num_rows, None, length, length, device=segment_ids.device)


def _install_answer_head(target) -> None:
    """Patch `target.forward` so that `forward(..., labels=..., answer_lm_head=True)` returns answer log-probs only.

    The backbone runs as usual; the LM head is applied only at positions whose next-token label is not `-100`, with
    TRL's chunked log-prob kernel (no `[N, vocab]` logits kept for backward). TRL's own fused head scores every position
    on devices without Triton (CPU), which for a 49k vocabulary costs more than a small model's layers. The patched
    forward is reached through PEFT and DDP/FSDP wrappers, which call the wrapped module's `forward`.
    """
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import maybe_gather_lm_head_ctx

    from .model_utils import run_top_layers

    previous = target.forward
    text_config = target.config.get_text_config()
    softcap = getattr(text_config, "final_logit_softcapping", None)
    scale = getattr(text_config, "logit_scale", None) or 1.0

    @functools.wraps(type(target).forward)
    def forward(self, *args, answer_lm_head=False, labels=None, trunk_first_layer=None, **kwargs):
        if not answer_lm_head:
            if labels is not None:
                kwargs["labels"] = labels
            return previous(*args, **kwargs)
        kwargs["use_cache"] = False
        if trunk_first_layer is not None:
            # Cached trunk states (`trl_dynamicpo.trunk_cache`): only the layers above the trunk run.
            hidden = run_top_layers(
                self,
                kwargs["inputs_embeds"],
                kwargs["attention_mask"],
                kwargs["position_ids"],
                int(trunk_first_layer),
            )[:, :-1]
        else:
            hidden = self.base_model(*args, **kwargs).last_hidden_state[:, :-1]
        targets = labels[:, 1:].to(hidden.device)
        mask = targets != -100
        head = self.get_output_embeddings()
        chunk = _CPU_VOCAB_CHUNK if hidden.device.type == "cpu" else _VOCAB_CHUNK
        with maybe_gather_lm_head_ctx(head.weight, head.bias):
            log_probs = ChunkedLogProbFunction.apply(
                hidden[mask], head.weight, head.bias, targets[mask], 1.0, chunk, softcap, scale, ("log_probs",)
            )[0]
        # masked_scatter keeps the result connected to the graph even when no position is scored.
        return log_probs.new_zeros(mask.shape).masked_scatter(mask, log_probs)

    target.forward = types.MethodType(forward, target)


def ensure_fused_lm_head(model) -> None:
    """Patch the answer-positions-only LM head onto `model` (idempotent; for a `PeftModel`, onto its base model).

    Needed by [`answer_logps`]: log-probs are computed at answer positions only, without materializing the
    `[B, L, vocab]` logits, which for a 49k vocabulary and packed 20-answer rows would be gigabytes.
    """
    target = model
    while hasattr(target, "module") and isinstance(target.module, torch.nn.Module):  # DDP / DeepSpeed wrappers
        target = target.module
    if hasattr(target, "get_base_model"):  # PEFT
        target = target.get_base_model()
    if getattr(target, _FUSED_MARKER, False):
        return
    _install_answer_head(target)
    setattr(target, _FUSED_MARKER, True)


def _model_dtype(model) -> torch.dtype:
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def answer_logps(model, batch: dict[str, Any], return_token_counts: bool = False):
    """Summed log-probabilities of every answer given its prompt, `[B, A]` (0.0 where `answer_mask` is False).

    Args:
        model ([`~transformers.PreTrainedModel`] or [`~peft.PeftModel`]):
            A causal LM (the answer LM head of [`ensure_fused_lm_head`] is added on first use).
        batch (`dict`):
            Output of [`pack_answers`] (or of the collator), on the model's device.
        return_token_counts (`bool`, *optional*, defaults to `False`):
            Also return the number of scored tokens of each answer, `[B, A]`.

    Example:
    ```python
    >>> logps = answer_logps(model, pack_answers(prompt_ids, answer_ids, tokenizer.pad_token_id))  # doctest: +SKIP
    ```
    """
    from .item_tokens import injecting

    ensure_fused_lm_head(model)
    answer_mask = batch["answer_mask"]
    num_rows, num_answers = answer_mask.shape
    labels = batch["labels"]
    if "segment_ids" in batch:
        attn_impl = getattr(getattr(model, "config", None), "_attn_implementation", None) or ""
        if "flash" in attn_impl:
            raise ValueError(
                f"The packed layout needs a custom 4D attention mask, which `{attn_impl}` does not take. Use "
                "`attn_implementation='sdpa'`, `'flex_attention'` or `'eager'`, or `layout='concatenated'`."
            )
        segment_ids = batch["segment_ids"]
        if attn_impl == "flex_attention":
            mask = packed_block_mask(segment_ids)
        else:
            mask = packed_attention_mask(segment_ids, _model_dtype(model))
        if "inputs_embeds" in batch:  # a batch of `TrunkCache.batch`: trunk states instead of token ids
            inputs = {"inputs_embeds": batch["inputs_embeds"], "trunk_first_layer": batch["trunk_first_layer"]}
        else:
            inputs = {"input_ids": batch["input_ids"]}
        with injecting(model, batch):  # hybrid item tokens, when the batch carries item vectors
            outputs = model(
                **inputs,
                attention_mask=mask,
                position_ids=batch["position_ids"],
                labels=labels,
                answer_lm_head=True,
            )
        per_token = outputs[:, -(labels.size(1) - 1) :]
        scored = labels[:, 1:] != -100
        # Answer index of each scored token (its segment id minus one), into a flat [B * A] index.
        answer_index = (segment_ids[:, 1:] - 1).clamp(min=0)
        flat = answer_index + torch.arange(num_rows, device=labels.device).unsqueeze(1) * num_answers
        flat = torch.where(scored, flat, torch.zeros_like(flat))
        values = torch.where(scored, per_token, torch.zeros_like(per_token))
        logps = values.new_zeros(num_rows * num_answers).index_add(0, flat.reshape(-1), values.reshape(-1))
        counts = scored.new_zeros(num_rows * num_answers, dtype=torch.long).index_add(
            0, flat.reshape(-1), scored.reshape(-1).long()
        )
    else:
        with injecting(model, batch, sequence_rows=batch["sequence_index"] // num_answers):
            outputs = model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                labels=labels,
                answer_lm_head=True,
            )
        per_token = outputs[:, -(labels.size(1) - 1) :]
        scored = labels[:, 1:] != -100
        per_sequence = torch.where(scored, per_token, torch.zeros_like(per_token)).sum(dim=1)
        index = batch["sequence_index"]
        logps = per_sequence.new_zeros(num_rows * num_answers).index_add(0, index, per_sequence)
        counts = scored.new_zeros(num_rows * num_answers, dtype=torch.long).index_add(
            0, index, scored.sum(dim=1).long()
        )
    logps = logps.view(num_rows, num_answers)
    if return_token_counts:
        return logps, counts.view(num_rows, num_answers)
    return logps


def _token_tensors(prompts: list[list[int]], answers: list[list[list[int]]]) -> dict[str, torch.Tensor]:
    num_answers = max(len(a) for a in answers)
    longest = max(len(ids) for row in answers for ids in row)
    prompt_tokens = torch.full((len(prompts), max(len(p) for p in prompts)), -1, dtype=torch.long)
    answer_tokens = torch.full((len(prompts), num_answers, longest), -1, dtype=torch.long)
    answer_mask = torch.zeros(len(prompts), num_answers, dtype=torch.bool)
    for b, (prompt, row) in enumerate(zip(prompts, answers)):
        prompt_tokens[b, : len(prompt)] = torch.tensor(prompt)
        for a, ids in enumerate(row):
            answer_tokens[b, a, : len(ids)] = torch.tensor(ids)
            answer_mask[b, a] = True
    return {"prompt_tokens": prompt_tokens, "answer_tokens": answer_tokens, "answer_mask": answer_mask}


def unpack_token_tensors(batch: dict[str, torch.Tensor]) -> tuple[list[list[int]], list[list[list[int]]]]:
    """Inverse of the collator's `defer_packing` output: (prompt ids, answers ids) as lists."""
    prompts = [row[row >= 0].tolist() for row in batch["prompt_tokens"].cpu()]
    answers = [
        [ids[ids >= 0].tolist() for ids, valid in zip(row, mask) if valid]
        for row, mask in zip(batch["answer_tokens"].cpu(), batch["answer_mask"].cpu())
    ]
    return prompts, answers


def _select(values: list, index: list[int]) -> list:
    return [values[i] for i in index]


@dataclass
class DataCollatorForMultiNegativePreference(DataCollatorMixin):
    """Collator for multi-negative preference rows (`prompt_ids`, `chosen_ids`, `rejected_ids` list).

    Answer 0 of every row is the chosen answer, answers 1..K its negatives. When a row has more negatives than
    `num_negatives`, a subset is drawn with a generator seeded by `(seed, epoch, row_index)`: reproducible, the same on
    every process, and re-drawn each epoch (the trainer updates `epoch`). Rows with fewer negatives are masked.

    Args:
        pad_token_id (`int`):
            Padding token id.
        layout (`str`, *optional*, defaults to `"packed"`):
            `"packed"` or `"concatenated"`, see [`pack_answers`].
        num_negatives (`int`, *optional*):
            Negatives per row and step; `None` uses all of them.
        seed (`int`, *optional*, defaults to `42`):
            Seed of the negative sampling.
        pad_to_multiple_of (`int`, *optional*):
            Pad sequence lengths to a multiple of this value.
        defer_packing (`bool`, *optional*, defaults to `False`):
            Return the token ids (`prompt_tokens` `[B, P]`, `answer_tokens` `[B, A, T]`, padded with -1) instead of a
            packed batch, for the trainer to add in-batch negatives across processes before packing.
        trunk_cache ([`~trl_dynamicpo.trunk_cache.TrunkCache`], *optional*):
            Build batches from cached trunk states ([`TrunkCache.batch`]); rows then carry `trunk_row` and
            `trunk_answers` (cached answer index of the chosen answer, then of each negative).
        item_tokens ([`~trl_dynamicpo.item_tokens.ItemTokens`], *optional*):
            Hybrid item tokens: rows carry `item_titles` (their marked titles) and the batch gets `item_features`
            `[B, M, F]` and `item_mask` `[B, M]`, aligned with the item tokens left in `prompt_ids`.
        item_share (`float`, *optional*, defaults to `1.0`):
            Share of rows whose item tokens get their vectors (the curriculum of `item_token_curriculum`): a row gets
            them when its seeded uniform draw is below the share, so that a rising share only adds rows.

    Returns a batch from [`pack_answers`] plus `negative_mask` (`[B, K]`), `row_index`, and when present in the rows
    `ref_logps` (`[B, 1 + K]`, from precomputed `ref_chosen_logps`/`ref_rejected_logps`), `rejected_scores` (`[B, K]`)
    and `embedding` (`[B, D]`).

    Example:
    ```python
    >>> from trl_dynamicpo import DataCollatorForMultiNegativePreference
    >>> collator = DataCollatorForMultiNegativePreference(pad_token_id=0, num_negatives=1)
    >>> batch = collator([{"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [[4], [5]], "row_index": 0}])
    >>> batch["answer_mask"].shape
    torch.Size([1, 2])
    ```
    """

    pad_token_id: int
    layout: str = "packed"
    num_negatives: int | None = None
    seed: int = 42
    pad_to_multiple_of: int | None = None
    defer_packing: bool = False
    trunk_cache: Any = None
    item_tokens: Any = None
    item_share: float = 1.0
    return_tensors: str = "pt"
    epoch: int = field(default=0, repr=False)

    def sample_negatives(self, row_index: int, pool_size: int) -> list[int]:
        """Indices of the negatives this row uses in the current epoch."""
        if self.num_negatives is None or pool_size <= self.num_negatives:
            return list(range(pool_size))
        rng = np.random.default_rng((self.seed, self.epoch, row_index))
        return sorted(rng.choice(pool_size, size=self.num_negatives, replace=False).tolist())

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        chosen_pool = []
        for position, example in enumerate(examples):
            index = self.sample_negatives(int(example.get("row_index", position)), len(example["rejected_ids"]))
            chosen_pool.append(index)
        answers = [[ex["chosen_ids"], *_select(ex["rejected_ids"], index)] for ex, index in zip(examples, chosen_pool)]
        prompts = [ex["prompt_ids"] for ex in examples]
        if self.trunk_cache is not None:
            selected = [
                [ex["trunk_answers"][0], *(ex["trunk_answers"][1 + i] for i in index)]
                for ex, index in zip(examples, chosen_pool)
            ]
            batch = self.trunk_cache.batch(
                [int(ex["trunk_row"]) for ex in examples], selected, self.pad_token_id, self.pad_to_multiple_of
            )
        elif self.defer_packing:
            batch = _token_tensors(prompts, answers)
        else:
            batch = pack_answers(
                prompts, answers, self.pad_token_id, layout=self.layout, pad_to_multiple_of=self.pad_to_multiple_of
            )
        batch["negative_mask"] = batch["answer_mask"][:, 1:]
        batch["row_index"] = torch.tensor([int(ex.get("row_index", i)) for i, ex in enumerate(examples)])
        num_answers = batch["answer_mask"].size(1)
        if "ref_chosen_logps" in examples[0]:
            ref = torch.zeros(len(examples), num_answers)
            for b, (ex, index) in enumerate(zip(examples, chosen_pool)):
                values = [ex["ref_chosen_logps"], *_select(ex["ref_rejected_logps"], index)]
                ref[b, : len(values)] = torch.tensor(values, dtype=torch.float32)
            batch["ref_logps"] = ref
        if examples[0].get("rejected_scores") is not None:
            scores = torch.zeros(len(examples), num_answers - 1)
            for b, (ex, index) in enumerate(zip(examples, chosen_pool)):
                values = _select(ex["rejected_scores"], index)
                scores[b, : len(values)] = torch.tensor(values, dtype=torch.float32)
            batch["rejected_scores"] = scores
        if examples[0].get("embedding") is not None:
            batch["embedding"] = torch.tensor([ex["embedding"] for ex in examples], dtype=torch.float32)
        if self.item_tokens is not None:
            batch["item_features"], batch["item_mask"] = self.item_tokens.batch_features(examples)
            if self.item_share < 1.0:
                keep = [self.row_draw(int(i)) < self.item_share for i in batch["row_index"].tolist()]
                batch["item_weight"] = torch.tensor(keep, dtype=torch.float32)
        return batch

    def row_draw(self, row_index: int) -> float:
        """The row's fixed uniform draw of the item-token curriculum (the same in every epoch)."""
        return float(np.random.default_rng((self.seed, row_index, _CURRICULUM_STREAM)).random())
