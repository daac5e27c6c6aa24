"""Constrained generation: decoding that can only answer with one of the row's candidate titles.

Free greedy decoding (the papers' protocol, [`generate_answers`]) may answer with no candidate at all, which a deployed
recommender cannot afford. [`generate_candidates`] restricts every decoding step to the tokens that continue some
candidate of the row:

- each row gets a prefix trie over its candidates' token ids *as they follow the prompt and separator*, built with
  the scorer's tokenization (`tokenize(prompt + separator + title)` minus the prompt's tokens, [`score_candidates`]),
  so that the seam between "Answer:" and the title is the one the model was trained on;
- every path of the trie ends with EOS: after a complete title only EOS is allowed, inside a title only the tokens
  that continue one, so "Heat" and "Heat Wave" are both reachable and an answer is always exactly one of them;
- the trie is applied with `prefix_allowed_tokens_fn` of `model.generate`, on left-padded batches; `k=1` decodes
  greedily, `k>1` runs beam search with `k` beams and returns the `k` finished beams (distinct candidates).

Scores are the summed log-probabilities of the answer tokens (EOS included) under the unconstrained model, the same
quantity as [`score_candidates`]'s `score="sum"`: greedy and beam search choose among candidates as the ranking
protocol does, but by decoding left to right (a candidate whose first token is unlikely can be pruned early).

Example:

```python
from trl_dynamicpo.evaluation import generate_candidates

answers = generate_candidates(model, tokenizer, ["Pick one:\\nHeat\\nHeat Wave\\nAnswer:"], [["Heat", "Heat Wave"]])
answers[0]  # [(index, log_prob)], e.g. [(1, -3.2)]
```
"""

from __future__ import annotations

from collections.abc import Sequence

from ..data import truncate_prompt_ids
from .inference import (
    _batches,
    _inference,
    _left_padded_prompts,
    _model_device,
    _pad_token_id,
    _progress,
    _tokenize,
)


_END = -1  # key of a trie node's candidate index: the path to this node is a complete answer (its last token is EOS)


def build_trie(answer_ids: Sequence[Sequence[int]]) -> dict:
    """Prefix trie of token-id sequences: nested `{token_id: child}` dicts, each complete sequence marked by `_END`.

    Raises:
        ValueError: If two sequences are the same tokens (the candidates cannot be told apart) or one is empty.

    Example:

    ```python
    >>> trie = build_trie([[5, 2], [5, 7, 2]])
    >>> sorted(trie[5])
    [2, 7]
    ```
    """
    trie: dict = {}
    for index, ids in enumerate(answer_ids):
        if not ids:
            raise ValueError(f"Candidate {index} has no tokens.")
        node = trie
        for token in ids:
            node = node.setdefault(int(token), {})
        if _END in node:
            raise ValueError(
                f"Candidates {node[_END]} and {index} tokenize to the same token ids ({list(ids)[:12]}): remove the "
                "duplicate."
            )
        node[_END] = index
    return trie


def allowed_tokens(trie: dict, generated: Sequence[int], eos_token_id: int) -> list[int]:
    """The tokens that may follow `generated` in `trie` (EOS once a complete answer has been generated).

    Example:

    ```python
    >>> trie = build_trie([[5, 2], [5, 7, 2]])
    >>> allowed_tokens(trie, [], 2), sorted(allowed_tokens(trie, [5], 2)), allowed_tokens(trie, [5, 2], 2)
    ([5], [2, 7], [2])
    ```
    """
    node = trie
    for token in generated:
        if _END in node or int(token) not in node:
            # A finished answer (the sequence is then only padded) or, never under the constraint, a stray token.
            return [eos_token_id]
        node = node[int(token)]
    if _END in node:
        return [eos_token_id]
    return [token for token in node if token != _END]


def _candidate_of(trie: dict, generated: Sequence[int]) -> int | None:
    """The candidate index that `generated` spells (trailing padding ignored), or None."""
    node = trie
    for token in generated:
        if _END in node:
            break
        node = node.get(int(token))
        if node is None:
            return None
    return node.get(_END)


def _answer_ids(tokenizer, prompt, candidates, separator: str, eos_ids: set[int]):
    """The scorer's prompt ids and each candidate's ids cut after their first EOS-like token (a chat template's end
    of turn, e.g. `<|im_end|>`, stops `generate` there) or with the tokenizer's EOS appended."""
    prompt_ids, answer_ids = _tokenize(tokenizer, prompt, candidates, separator=separator, add_eos=True)
    cut = []
    for ids in answer_ids:
        end = next((i for i, token in enumerate(ids) if token in eos_ids), None)
        cut.append(ids[: end + 1] if end is not None else [*ids, tokenizer.eos_token_id])
    return prompt_ids, cut


def generate_candidates(
    model,
    tokenizer,
    prompts: Sequence,
    candidates: Sequence[Sequence[str]],
    *,
    k: int = 1,
    batch_size: int = 8,
    max_prompt_length: int = 1024,
    separator: str = " ",
    show_progress: bool = True,
    item_tokens=None,
    user_states: Sequence[Sequence[float]] | None = None,
) -> list[list[tuple[int, float]]]:
    """Decode an answer restricted to each prompt's candidate titles: greedy (`k=1`) or the top `k` by beam search.

    Prompts are tokenized as [`score_candidates`] does (truncated to their last `max_prompt_length` tokens, a leading
    BOS kept), sorted by length, left-padded and decoded with `prefix_allowed_tokens_fn` walking a prefix trie of the
    row's candidates (see the module docstring). Every answer is a complete candidate followed by EOS, so the
    ValidRatio of constrained generation is 1 by construction.

    Args:
        model: A causal LM (`PreTrainedModel` or `PeftModel`).
        tokenizer: Its tokenizer (needs an EOS token). It is not modified.
        prompts (`Sequence`): Plain-text prompts (or lists of chat messages; titles then become assistant messages).
        candidates (`Sequence[Sequence[str]]`): Candidate titles per prompt (no two with the same tokens).
        k (`int`, defaults to `1`): Answers per prompt: 1 = greedy decoding, more = beam search with `k` beams (at most
            the row's number of candidates).
        batch_size (`int`, defaults to `8`): Prompts per `generate` call.
        max_prompt_length (`int`, defaults to `1024`): Prompt token budget (the end of the prompt is kept).
        separator (`str`, defaults to `" "`): Text between prompt and answer (the trainer's).
        show_progress (`bool`, defaults to `True`): Show a tqdm bar.
        item_tokens ([`~trl_dynamicpo.item_tokens.ItemTokens`], *optional*): Hybrid item tokens, as for
            [`generate_answers`]: the prompts are marked and the vectors added during the prefill.
        user_states (`Sequence`, *optional*): Each prompt's teacher state, for `item_features="item+state"`.

    Returns:
        `list[list[tuple[int, float]]]`: Per prompt, `(candidate index, log-probability)` of its answers, best first:
        one for greedy decoding, `min(k, len(candidates))` distinct candidates for beam search.

    Raises:
        ValueError: If `prompts` and `candidates` differ in length, a row has no candidate or two candidates with the
            same tokens, `k < 1`, or the tokenizer has no EOS token.

    Example:

    ```python
    answers = generate_candidates(model, tokenizer, rows["prompt"], rows["candidates"], k=5)
    top_titles = [[cands[i] for i, _ in row] for row, cands in zip(answers, rows["candidates"])]
    ```
    """
    import torch
    from transformers import GenerationConfig

    from ..item_tokens import injecting

    if len(prompts) != len(candidates):
        raise ValueError("`prompts` and `candidates` must have the same length.")
    if k < 1:
        raise ValueError(f"`k` must be at least 1, got {k}.")
    if tokenizer.eos_token_id is None:
        raise ValueError("Constrained generation ends every answer with EOS: the tokenizer has no EOS token.")
    for row, cands in enumerate(candidates):
        if not cands:
            raise ValueError(f"Row {row} has no candidates.")
    pad_id = _pad_token_id(tokenizer)
    eos_id = tokenizer.eos_token_id
    eos_ids = {eos_id}
    model_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos_ids |= set(model_eos if isinstance(model_eos, list) else [model_eos]) - {None}
    item_titles = None
    if item_tokens is not None:
        prompts, item_titles = item_tokens.mark(prompts)
    prompt_ids, tries, lengths = [], [], []
    for row, (prompt, cands) in enumerate(zip(prompts, candidates)):
        ids, answers = _answer_ids(tokenizer, prompt, list(cands), separator, eos_ids)
        try:
            tries.append(build_trie(answers))
        except ValueError as error:
            raise ValueError(f"Row {row}: {error}") from None
        prompt_ids.append(truncate_prompt_ids(list(ids), max_prompt_length, tokenizer.bos_token_id))
        lengths.append(max(len(a) for a in answers))
    beams = [min(k, len(c)) for c in candidates]
    # Rows of a batch share the number of beams; longest prompts first, so that running out of memory shows at once.
    order = sorted(range(len(prompts)), key=lambda i: (beams[i], -len(prompt_ids[i])))
    batches = [b for beam in sorted(set(beams)) for b in _batches([i for i in order if beams[i] == beam], batch_size)]
    device = _model_device(model)
    results: list[list[tuple[int, float]]] = [[] for _ in prompts]
    with _inference(model, tokenizer):
        for batch in _progress(batches, len(batches), "constrained generation", show_progress):
            num_beams = beams[batch[0]]
            inputs = _left_padded_prompts(prompt_ids, batch, pad_id, item_tokens, item_titles, user_states)
            width = inputs["input_ids"].size(1)
            if item_titles is not None:
                # Beam search expands every row to its beams before the prefill: the vectors follow the same rows.
                for key in ("item_features", "item_mask", "labels"):
                    inputs[key] = inputs[key].repeat_interleave(num_beams, dim=0)
            inputs = {key: value.to(device) for key, value in inputs.items()}
            prefill = {**inputs}
            if item_titles is not None:
                prefill["input_ids"] = inputs["input_ids"].repeat_interleave(num_beams, dim=0)
                prefill["attention_mask"] = inputs["attention_mask"].repeat_interleave(num_beams, dim=0)

            def allowed(batch_id: int, sequence, batch=batch, width=width) -> list[int]:
                return allowed_tokens(tries[batch[batch_id]], sequence[width:].tolist(), eos_id)

            config = GenerationConfig(
                max_new_tokens=max(lengths[i] for i in batch),  # every trie path fits: each beam finishes a title
                do_sample=False,
                num_beams=num_beams,
                num_return_sequences=num_beams,
                length_penalty=0.0,  # beam scores = summed log-probs, as `score_candidates(score="sum")`
                early_stopping=True,
                pad_token_id=pad_id,
                eos_token_id=sorted(eos_ids),
                return_dict_in_generate=True,
                output_scores=num_beams > 1,
                output_logits=num_beams == 1,
            )
            with injecting(model, prefill):
                output = model.generate(
                    input_ids=inputs["input_ids"],
                    attention_mask=inputs["attention_mask"],
                    generation_config=config,
                    prefix_allowed_tokens_fn=allowed,
                )
            generated = output.sequences[:, width:]
            if num_beams == 1:
                # Greedy: the answer's log-probs under the unconstrained model, from the raw logits of each step.
                logps = torch.stack(output.logits, dim=1).float().log_softmax(-1)
                token_logps = logps.gather(-1, generated[:, : logps.shape[1], None]).squeeze(-1)
                scores = [_answer_sum(token_logps[row], generated[row], eos_ids) for row in range(len(batch))]
            else:
                scores = output.sequences_scores.float().tolist()
            for position, (ids, score) in enumerate(zip(generated.tolist(), scores)):
                i = batch[position // num_beams]
                index = _candidate_of(tries[i], ids)
                if index is None:  # the constraint makes this impossible; fail loudly rather than answer wrongly
                    raise RuntimeError(
                        f"Row {i}: constrained generation produced tokens outside its candidates: {ids}"
                    )
                results[i].append((index, float(score)))
    for row in results:
        row.sort(key=lambda pair: -pair[1])
    return results


def _answer_sum(token_logps, generated, eos_ids: set[int]) -> float:
    """Sum of a greedy answer's token log-probs up to and including its first EOS (the padding after it excluded)."""
    total = 0.0
    for logp, token in zip(token_logps.tolist(), generated.tolist()):
        total += logp
        if token in eos_ids:
            break
    return total
