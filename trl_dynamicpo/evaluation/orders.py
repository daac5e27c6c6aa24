"""Candidate-order ensembling for the ranking protocol: score every prompt under several orders of its candidate list.

An LLM ranker's scores depend on where a candidate sits in the listed candidates (position bias, see Hou et al.,
"Large Language Models are Zero-Shot Rankers for Recommender Systems", ECIR 2024, who shuffle the candidates and
aggregate). In this project's study the SFT model of SmolLM2-135M gave its top score to the *first* listed candidate
on 35% of the validation prompts, where the target sits 7% of the time. Scoring the same prompt with its candidate
list rotated and averaging each candidate's log-probs over the orders cancels that bias; the candidates, the history
and the template stay those of the protocol, only their order in the prompt changes.

The orders are evenly spaced cyclic shifts: order `o` of a row with `n` candidates lists candidate
`(j + o * n // num_orders) % n` at place `j`, so order 0 is the row as built and, with 4 orders of 20 candidates,
every candidate is seen at 4 places 5 apart. Everything here is pure (strings and arrays); running a model per order
is `score_over_orders`' (`trl_dynamicpo.evaluation.inference`), which rotates, scores (over a trunk cache per order
if given) and maps the scores back with these functions.

Example (the scores of every candidate averaged over 4 orders, in the rows' own candidate order):

```python
from trl_dynamicpo.evaluation import score_over_orders

per_order = score_over_orders(model, tokenizer, rows["prompt"], rows["candidates"], num_orders=4)  # [4, P, N]
scores = per_order.mean(axis=0)
```

By hand, with the pure functions of this module:

```python
from trl_dynamicpo.evaluation.orders import average_over_orders, reorder_rows

orders = []
for o in range(4):
    prompts, candidates = reorder_rows(rows["prompt"], rows["candidates"], order=o, num_orders=4)
    orders.append(score_candidates(model, tokenizer, prompts, candidates))
scores = average_over_orders(orders, [len(c) for c in rows["candidates"]])
```
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np


def order_shift(order: int, num_orders: int, num_candidates: int) -> int:
    """Places by which order `order` of `num_orders` rotates a list of `num_candidates` candidates."""
    if num_orders < 1 or not 0 <= order < num_orders:
        raise ValueError(f"`order` must be in [0, {num_orders}) with `num_orders` >= 1, got {order} of {num_orders}.")
    return (order * num_candidates) // num_orders


def order_key(order: int, num_orders: int) -> str | None:
    """A name of the rotation that is the same for equal fractions (order 1 of 2 = order 2 of 4), None for order 0:
    a trunk cache of a rotated prompt set can be shared by ensembles of different sizes."""
    fraction = Fraction(order, num_orders)
    return None if fraction == 0 else f"{fraction.numerator}/{fraction.denominator}"


def _candidate_block(prompt: str, candidates: Sequence[str], row: int) -> tuple[int, int, str]:
    """Start, end and separator of the one place where the prompt lists `candidates` in their order."""
    where = f"Row {row}: " if row is not None else ""
    found = []  # called with >= 2 candidates only: a single one has nothing to rotate
    start = prompt.find(candidates[0])
    while start >= 0:
        after = start + len(candidates[0])
        second = prompt.find(candidates[1], after)
        if second >= 0:
            separator = prompt[after:second]
            block = separator.join(candidates)
            if separator and separator.strip(" \n,;|-") == "" and prompt.startswith(block, start):
                found.append((start, start + len(block), separator))
        start = prompt.find(candidates[0], start + 1)
    if len(found) != 1:
        raise ValueError(
            f"{where}the `prompt` must list its `candidates` once, in their order, joined by one separator (a newline, "
            f"comma, ...), to be reordered; found {len(found)} such lists."
        )
    return found[0]


def reorder_prompt(
    prompt: str, candidates: Sequence[str], shift: int, row: int | None = None
) -> tuple[str, list[str]]:
    """The prompt with its candidate list rotated left by `shift` places, and the candidates in that new order.

    Args:
        prompt (`str`): A plain-text prompt that lists `candidates` once, in their order, joined by one separator.
        candidates (`Sequence[str]`): The row's candidate titles, in the order the prompt lists them.
        shift (`int`): Places to rotate: the new list starts with `candidates[shift % n]`.
        row (`int`, *optional*): Row number for the error message.

    Returns:
        `tuple[str, list[str]]`: The new prompt and the new candidate order.

    Example:

    ```python
    reorder_prompt("Pick one:\\nHeat\\nFargo\\nAlien\\nAnswer:", ["Heat", "Fargo", "Alien"], 1)
    # ('Pick one:\\nFargo\\nAlien\\nHeat\\nAnswer:', ['Fargo', 'Alien', 'Heat'])
    ```
    """
    if not isinstance(prompt, str):
        raise TypeError(f"Row {row}: candidate orders need plain-text prompts, got {type(prompt).__name__}.")
    n = len(candidates)
    if n == 0 or shift % n == 0:
        return prompt, list(candidates)
    start, end, separator = _candidate_block(prompt, candidates, row)
    rotated = [candidates[(j + shift) % n] for j in range(n)]
    return prompt[:start] + separator.join(rotated) + prompt[end:], rotated


def reorder_rows(
    prompts: Sequence[str], candidates: Sequence[Sequence[str]], order: int, num_orders: int
) -> tuple[list[str], list[list[str]]]:
    """Order `order` of `num_orders` of every row (see the module docstring): the prompts and candidate lists."""
    if len(prompts) != len(candidates):
        raise ValueError("`prompts` and `candidates` must have the same length.")
    out_prompts, out_candidates = [], []
    for i, (prompt, cands) in enumerate(zip(prompts, candidates)):
        new_prompt, new_cands = reorder_prompt(prompt, cands, order_shift(order, num_orders, len(cands)), row=i)
        out_prompts.append(new_prompt)
        out_candidates.append(new_cands)
    return out_prompts, out_candidates


def to_original_order(scores: np.ndarray, num_candidates: Sequence[int], order: int, num_orders: int) -> np.ndarray:
    """Scores of order `order` (`[N, A_max]`, in that order's candidate order, NaN-padded) put back in each row's own
    candidate order."""
    scores = np.asarray(scores, dtype=np.float64)
    counts = np.asarray(num_candidates, dtype=np.int64)
    if scores.ndim != 2 or scores.shape[0] != len(counts) or (counts > scores.shape[1]).any():
        raise ValueError(f"`scores` {scores.shape} do not match {len(counts)} rows of up to {counts.max(initial=0)}.")
    shifts = (order * counts) // num_orders
    places = np.arange(scores.shape[1])[None, :]
    # Original candidate i sits at place (i - shift) % n of the rotated list.
    source = np.where(places < counts[:, None], (places - shifts[:, None]) % np.maximum(counts, 1)[:, None], places)
    return np.take_along_axis(scores, source, axis=1)


def in_original_order(scores_per_order: Sequence[np.ndarray], num_candidates: Sequence[int]) -> np.ndarray:
    """`[P, N, A_max]`: the scores of every order `0 .. P-1` (P = the length of `scores_per_order`), each put back in
    the rows' own candidate order ([`to_original_order`])."""
    if not scores_per_order:
        raise ValueError("`scores_per_order` is empty.")
    num_orders = len(scores_per_order)
    return np.stack([to_original_order(s, num_candidates, o, num_orders) for o, s in enumerate(scores_per_order)])


def average_over_orders(scores_per_order: Sequence[np.ndarray], num_candidates: Sequence[int]) -> np.ndarray:
    """Mean score of every candidate over the orders, in each row's own candidate order.

    Args:
        scores_per_order (`Sequence[np.ndarray]`): One `[N, A_max]` array per order `0 .. P-1` (P = its length), each
            in that order's candidate order, as `score_candidates` returns them for [`reorder_rows`]' output.
        num_candidates (`Sequence[int]`): Candidates per row.

    Returns:
        `np.ndarray`: `[N, A_max]` float64, NaN where a row has fewer candidates.
    """
    return in_original_order(scores_per_order, num_candidates).mean(axis=0)
