"""The model side of the evaluation: prompts tokenized as the trainer does, greedy generation, packed scoring.

[`generate_answers`] runs the papers' generation protocol, [`score_candidates`] scores every candidate of a prompt in
one packed forward pass ([`trl_dynamicpo.packing`]); their outputs go to the pure functions of
[`~trl_dynamicpo.evaluation.metrics`]. torch and transformers are imported on first use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np

from ..data import truncate_prompt_ids
from .config import SCORE_MODES, _check_choice


_truncate_prompt = truncate_prompt_ids  # its name before it moved to trl_dynamicpo.data


def _tokenize(tokenizer, prompt, answers: Sequence[str], separator: str = " ", add_eos: bool = True):
    """Prompt ids and answer ids exactly as the trainer builds them, so that scores are the trainer's log-probs.

    Conversational prompts (lists of messages) get each title as an assistant message.
    """
    from ..data import tokenize_prompt_answers

    if not isinstance(prompt, str):
        answers = [[{"role": "assistant", "content": a}] for a in answers]
    prompt_ids, answer_ids = tokenize_prompt_answers(
        tokenizer, prompt, list(answers), separator=separator, add_eos=add_eos
    )
    return list(prompt_ids), [list(a) for a in answer_ids]


def _pad_token_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    raise ValueError("The tokenizer has neither a pad nor an EOS token.")


def _model_device(model):
    device = getattr(model, "device", None)
    if device is not None:
        return device
    return next(model.parameters()).device


@contextlib.contextmanager
def _inference(model, tokenizer):
    """`model.eval()` + `torch.no_grad()`; restores the model's training mode and the tokenizer's padding side."""
    import torch

    was_training = getattr(model, "training", False)
    padding_side = getattr(tokenizer, "padding_side", None)
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            model.train()
        if padding_side is not None:
            tokenizer.padding_side = padding_side


def _batches(order: Sequence[int], batch_size: int) -> list[list[int]]:
    return [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]


def _progress(iterable, total: int, desc: str, show: bool):
    if not show:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc)


def _left_padded_prompts(prompt_ids, batch, pad_id: int, item_tokens=None, item_titles=None, user_states=None) -> dict:
    """`input_ids` / `attention_mask` of the prompts `batch` (indices into `prompt_ids`), left-padded so that every
    prompt ends where generation starts; with hybrid item tokens also the rows' `item_features` / `item_mask`, and
    `labels` all -100 (every position is prompt, as `injecting` reads it)."""
    import torch

    width = max(len(prompt_ids[i]) for i in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, i in enumerate(batch):
        ids = prompt_ids[i]
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if item_titles is not None:
        rows = [
            {
                "prompt_ids": prompt_ids[i],
                "item_titles": item_titles[i],
                "embedding": None if user_states is None else user_states[i],
                "row_index": i,
            }
            for i in batch
        ]
        inputs["item_features"], inputs["item_mask"] = item_tokens.batch_features(rows)
        inputs["labels"] = torch.full_like(input_ids, -100)
    return inputs


def generate_answers(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 20,
    batch_size: int = 8,
    max_prompt_length: int = 1024,
    show_progress: bool = True,
    item_tokens=None,
    user_states: Sequence[Sequence[float]] | None = None,
) -> list[str]:
    """Greedy answers of a causal LM to plain-text prompts (the papers' generation protocol).

    Prompts are tokenized like the trainer does, truncated to their last `max_prompt_length` tokens (the papers
    truncate to 1024 tokens; keeping the end keeps "Answer:"; a leading BOS is kept), sorted by length so that a batch
    wastes little padding, left-padded and passed to `model.generate(do_sample=False, num_beams=1)`. Settings of
    `model.generation_config` that do not conflict (e.g. `repetition_penalty`) still apply, as in the papers' script.
    Generation stops at the tokenizer's or the model's EOS. Only the new tokens are decoded, special tokens skipped.

    Args:
        model: A causal LM (`PreTrainedModel` or `PeftModel`).
        tokenizer: Its tokenizer (needs a pad or EOS token). It is not modified.
        prompts (`Sequence`): Plain-text prompts (or lists of chat messages, rendered with the chat template).
        max_new_tokens (`int`, defaults to `20`): Maximum number of generated tokens.
        batch_size (`int`, defaults to `8`): Prompts per `generate` call.
        max_prompt_length (`int`, defaults to `1024`): Prompt token budget.
        show_progress (`bool`, defaults to `True`): Show a tqdm bar.
        item_tokens ([`~trl_dynamicpo.item_tokens.ItemTokens`], *optional*): Hybrid item tokens, as for
            [`score_candidates`]: the vectors are added during the prompt's forward pass (the prefill).
        user_states (`Sequence`, *optional*): Each prompt's teacher state, for `item_features="item+state"`.

    Returns:
        `list[str]`: The decoded new text of each prompt, in input order.

    Example:

    ```python
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
    model = AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
    generate_answers(model, tokenizer, ["Choose one of: Heat, Fargo. Answer:"], max_new_tokens=5)
    ```
    """
    from transformers import GenerationConfig

    from ..item_tokens import injecting

    pad_id = _pad_token_id(tokenizer)
    item_titles = None
    if item_tokens is not None:
        prompts, item_titles = item_tokens.mark(prompts)
    prompt_ids = [
        truncate_prompt_ids(_tokenize(tokenizer, p, [])[0], max_prompt_length, tokenizer.bos_token_id) for p in prompts
    ]
    eos_ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    model_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos_ids |= set(model_eos if isinstance(model_eos, list) else [model_eos]) - {None}
    generation_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=pad_id,
        eos_token_id=sorted(eos_ids) or None,
    )
    device = _model_device(model)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompt_ids[i]))  # longest first: OOM shows up at once
    answers: list[str] = [""] * len(prompts)
    batches = _batches(order, batch_size)
    with _inference(model, tokenizer):
        for batch in _progress(batches, len(batches), "generation", show_progress):
            inputs = _left_padded_prompts(prompt_ids, batch, pad_id, item_tokens, item_titles, user_states)
            width = inputs["input_ids"].size(1)
            inputs = {k: v.to(device) for k, v in inputs.items()}
            with injecting(model, inputs):
                output = model.generate(
                    input_ids=inputs["input_ids"],
                    attention_mask=inputs["attention_mask"],
                    generation_config=generation_config,
                )
            texts = tokenizer.batch_decode(output[:, width:].tolist(), skip_special_tokens=True)
            for i, text in zip(batch, texts):
                answers[i] = text
    return answers


def score_candidates(
    model,
    tokenizer,
    prompts: Sequence[str],
    candidates: Sequence[Sequence[str]],
    *,
    batch_size: int = 8,
    score: str = "sum",
    max_prompt_length: int = 1024,
    separator: str = " ",
    add_eos: bool = True,
    show_progress: bool = True,
    trunk_cache=None,
    item_tokens=None,
    user_states: Sequence[Sequence[float]] | None = None,
) -> np.ndarray:
    """Log-probability of every candidate title after its prompt, one packed forward per batch of prompts.

    Each prompt is encoded once and all its candidates are attached as answers ([`trl_dynamicpo.packing`]), with the
    trainer's tokenization (answer = separator + title + EOS), so the scores are the trainer's `s(y)`.

    Args:
        model: A causal LM (`PreTrainedModel` or `PeftModel`); the fused LM head of TRL is added if missing.
        tokenizer: Its tokenizer.
        prompts (`Sequence`): Plain-text prompts (or lists of chat messages; titles then become assistant messages).
        candidates (`Sequence[Sequence[str]]`): Candidate titles per prompt.
        batch_size (`int`, defaults to `8`): Prompts per forward pass.
        score (`str`, defaults to `"sum"`): `"sum"` of the answer's token log-probs, or `"mean"` (divided by the
            number of answer tokens, EOS included).
        max_prompt_length (`int`, defaults to `1024`): Prompt token budget (the end of the prompt is kept).
        separator (`str`, defaults to `" "`): Text between prompt and answer.
        add_eos (`bool`, defaults to `True`): Score the EOS token after the title.
        show_progress (`bool`, defaults to `True`): Show a tqdm bar.
        trunk_cache ([`~trl_dynamicpo.trunk_cache.TrunkCache`], *optional*): Cached trunk states of these rows (row
            `i` of the cache = prompt `i`, built with the same tokenization): only the layers above the trunk run.
            Every prompt and candidate is checked against the cache first.
        item_tokens ([`~trl_dynamicpo.item_tokens.ItemTokens`], *optional*): Hybrid item tokens (for a model with an
            attached item projector): the prompts are marked and each item token gets its title's vector.
        user_states (`Sequence`, *optional*): The teacher's sequence state of each prompt's user (the `embedding`
            column), for `item_features="item+state"`.

    Returns:
        `np.ndarray`: float64 [N, A_max] scores in candidate order; NaN where a prompt has fewer candidates.

    Example:

    ```python
    scores = score_candidates(model, tokenizer, ["Choose one of: Heat, Fargo. Answer:"], [["Heat", "Fargo"]])
    ranking_metrics(scores, [1])
    ```
    """
    _check_choice("score", score, SCORE_MODES)
    import torch

    from ..packing import answer_logps, ensure_fused_lm_head, pack_answers

    if len(prompts) != len(candidates):
        raise ValueError("`prompts` and `candidates` must have the same length.")
    ensure_fused_lm_head(model)
    pad_id = _pad_token_id(tokenizer)
    item_titles = None
    if item_tokens is not None:
        prompts, item_titles = item_tokens.mark(prompts)
    prompt_ids, answer_ids = [], []
    for prompt, cands in zip(prompts, candidates):
        ids, answers = _tokenize(tokenizer, prompt, cands, separator=separator, add_eos=add_eos)
        prompt_ids.append(truncate_prompt_ids(list(ids), max_prompt_length, tokenizer.bos_token_id))
        answer_ids.append([list(a) for a in answers])
    item_rows = None
    if item_tokens is not None:
        # Every row's vectors before the first forward: an unknown title or a missing state fails at once.
        item_rows = [
            {
                "prompt_ids": prompt_ids[i],
                "item_titles": item_titles[i],
                "embedding": None if user_states is None else user_states[i],
                "row_index": i,
            }
            for i in range(len(prompt_ids))
        ]
        for row in item_rows:
            item_tokens.batch_features([row])
    width = max((len(c) for c in candidates), default=0)
    scores = np.full((len(prompts), width), np.nan)
    device = _model_device(model)
    cached = None
    if trunk_cache is not None:
        trunk_cache.check_model(model)
        cached = [
            trunk_cache.locate(
                i, prompt_ids[i], answer_ids[i], [f"candidates[{k}]" for k in range(len(answer_ids[i]))]
            )
            for i in range(len(prompts))
        ]
    cost = [len(p) + sum(len(a) for a in answers) for p, answers in zip(prompt_ids, answer_ids)]
    batches = _batches(sorted(range(len(prompts)), key=lambda i: -cost[i]), batch_size)
    with _inference(model, tokenizer):
        for batch in _progress(batches, len(batches), "ranking", show_progress):
            if cached is not None:
                packed = trunk_cache.batch(batch, [cached[i] for i in batch], pad_token_id=pad_id)
            else:
                packed = pack_answers(
                    [prompt_ids[i] for i in batch], [answer_ids[i] for i in batch], pad_token_id=pad_id
                )
            if item_rows is not None:
                packed["item_features"], packed["item_mask"] = item_tokens.batch_features(
                    [item_rows[i] for i in batch]
                )
            packed = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in packed.items()}
            logps = answer_logps(model, packed).double().cpu().numpy()
            for row, i in enumerate(batch):
                n = len(answer_ids[i])
                values = logps[row, :n]
                if score == "mean":
                    values = values / np.array([len(a) for a in answer_ids[i]], dtype=np.float64)
                scores[i, :n] = values
    return scores


def score_over_orders(
    model,
    tokenizer,
    prompts: Sequence[str],
    candidates: Sequence[Sequence[str]],
    num_orders: int = 1,
    *,
    trunk_caches: Sequence | None = None,
    **kwargs,
) -> np.ndarray:
    """[`score_candidates`] under each of `num_orders` rotations of every prompt's candidate list
    ([`~trl_dynamicpo.evaluation.orders`]), every order's scores put back in the rows' own candidate order.

    Averaging over the first axis gives the order-ensembled scores; each slice is a single order's scores (order 0 =
    the prompts as built).

    Args:
        model: A causal LM, as for [`score_candidates`].
        tokenizer: Its tokenizer.
        prompts (`Sequence[str]`): Plain-text prompts, each listing its candidates once (see
            [`~trl_dynamicpo.evaluation.orders.reorder_prompt`]).
        candidates (`Sequence[Sequence[str]]`): Candidate titles per prompt, in the order the prompt lists them.
        num_orders (`int`, defaults to `1`): Rotations to score (1 = the prompts as built only).
        trunk_caches (`Sequence`, *optional*): One entry per order: the [`~trl_dynamicpo.trunk_cache.TrunkCache`] of
            that order's rotated rows (`reorder_rows(prompts, candidates, o, num_orders)`), or None to run that order
            in full.
        **kwargs: The other keyword arguments of [`score_candidates`] (`batch_size`, `score`, ...).

    Returns:
        `np.ndarray`: float64 `[num_orders, N, A_max]`, NaN where a prompt has fewer candidates.

    Raises:
        ValueError: If a prompt does not list its candidates in a way that can be rotated (the error names the row),
            before any model runs; or if `trunk_caches` does not have one entry per order.

    Example:

    ```python
    per_order = score_over_orders(model, tokenizer, rows["prompt"], rows["candidates"], num_orders=4)
    scores = per_order.mean(axis=0)  # [N, A_max], in the rows' own candidate order
    ```
    """
    from .orders import in_original_order, reorder_rows

    trunk_caches = [None] * num_orders if trunk_caches is None else list(trunk_caches)
    if len(trunk_caches) != num_orders:
        raise ValueError(f"`trunk_caches` has {len(trunk_caches)} entries for {num_orders} orders.")
    # Every rotation is built before the first forward pass, so that a prompt that cannot be reordered fails at once.
    rotations = [(prompts, candidates)]
    rotations += [reorder_rows(prompts, candidates, o, num_orders) for o in range(1, num_orders)]
    per_order = [
        score_candidates(model, tokenizer, rotated_prompts, rotated_candidates, trunk_cache=cache, **kwargs)
        for (rotated_prompts, rotated_candidates), cache in zip(rotations, trunk_caches)
    ]
    return in_original_order(per_order, [len(c) for c in candidates])
