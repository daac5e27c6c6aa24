"""NAPO (Ding et al., arXiv 2508.09653): in-batch negative sharing and the running state of its dynamic margin.

In-batch sharing gives every row the negatives (and optionally the chosen answers) of other rows of the global batch,
scored under the row's *own* prompt. With the packed layout a shared answer costs only its own tokens, since the
prompt is not repeated; the official code instead reuses log-probs computed under the other users' prompts, which
scores a title for the wrong user.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


SELECTIONS = ("random", "similarity")


def share_in_batch_negatives(
    answers: Sequence[Sequence[Sequence[int]]],
    local_positions: Sequence[int],
    *,
    fraction: float = 0.7,
    selection: str = "random",
    embeddings: np.ndarray | None = None,
    include_chosen: bool = False,
    max_negatives: int | None = None,
    seed: int = 0,
    step: int = 0,
    row_ids: Sequence[int] | None = None,
) -> list[list[list[int]]]:
    """Extend rows' answers with answers of other rows of the (global) batch.

    Args:
        answers (`Sequence`):
            For every row of the global batch, its answers as token-id lists: the chosen answer first, then its
            negatives.
        local_positions (`Sequence[int]`):
            Positions in `answers` of the rows to extend (this process's rows).
        fraction (`float`, *optional*, defaults to `0.7`):
            Share of the other rows whose answers are used (NAPO uses 0.7).
        selection (`str`, *optional*, defaults to `"random"`):
            `"random"` (seeded by `seed`, `step` and the row id) or `"similarity"` (the most cosine-similar rows by
            `embeddings`, e.g. a sequential recommender's user states).
        embeddings (`np.ndarray`, *optional*):
            `[num_rows, dim]` per-row embeddings for `"similarity"`.
        include_chosen (`bool`, *optional*, defaults to `False`):
            Also share the other rows' chosen answers.
        max_negatives (`int`, *optional*):
            Cap on a row's negatives after sharing (its own negatives are always kept first).
        seed (`int`), step (`int`), row_ids (`Sequence[int]`, *optional*):
            Seed the random selection so that it is reproducible and identical on every process.

    Returns:
        For each local row, its answers followed by the shared ones. A shared answer equal to the row's own chosen
        answer or to one of its negatives, or shared twice, is skipped.

    Example:
    ```python
    >>> rows = [[[1], [2], [3]], [[2], [1], [4]]]  # row 1's chosen answer [2] is a negative of row 0
    >>> share_in_batch_negatives(rows, [0, 1], fraction=1.0)
    [[[1], [2], [3], [4]], [[2], [1], [4], [3]]]
    ```
    """
    if selection not in SELECTIONS:
        raise ValueError(f"Unknown in-batch selection {selection!r}; expected one of {SELECTIONS}.")
    if selection == "similarity" and embeddings is None:
        raise ValueError("`in_batch_selection='similarity'` needs an `embedding` column (one vector per row).")
    num_rows = len(answers)
    row_ids = list(range(num_rows)) if row_ids is None else list(row_ids)
    if selection == "similarity":
        unit = embeddings / np.clip(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12, None)
        similarity = unit @ unit.T
    extended = []
    for position in local_positions:
        others = np.array([h for h in range(num_rows) if h != position], dtype=np.int64)
        count = int(round(fraction * len(others)))
        if selection == "similarity":
            # Most similar first; stable sort so that ties keep batch order on every process.
            order = np.argsort(-similarity[position, others], kind="stable")
            picked = others[order[:count]]
        else:
            rng = np.random.default_rng((seed, step, row_ids[position]))
            picked = np.sort(rng.choice(others, size=count, replace=False)) if count else others[:0]
        own = [list(a) for a in answers[position]]
        seen = {tuple(a) for a in own}
        shared = []
        for h in picked.tolist():
            for answer in answers[h][0 if include_chosen else 1 :]:
                key = tuple(answer)
                if key not in seen:
                    seen.add(key)
                    shared.append(list(answer))
        if max_negatives is not None:
            shared = shared[: max(0, max_negatives - (len(own) - 1))]
        extended.append(own + shared)
    return extended


@dataclass
class NapoMarginState:
    """Running mean `M` of the negatives' confidence, for NAPO's margin γ = γ0·(1 − α·(M_b − M)).

    `M` starts at the first batch mean (so the first margin is γ0) and is updated before the loss, as in NAPO:
    `M ← decay·M + (1 − decay)·M_b`. The trainer feeds it batch means already reduced over all processes, so every
    process holds the same `M`; it is saved in checkpoints (`state_dict` / `load_state_dict`).
    """

    decay: float = 0.9
    running_mean: float | None = None
    num_updates: int = 0

    def update(self, batch_mean: float) -> float:
        if self.running_mean is None:
            self.running_mean = float(batch_mean)
        else:
            self.running_mean = self.decay * self.running_mean + (1.0 - self.decay) * float(batch_mean)
        self.num_updates += 1
        return self.running_mean

    def state_dict(self) -> dict:
        return {"decay": self.decay, "running_mean": self.running_mean, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        self.running_mean = state["running_mean"]
        self.num_updates = state["num_updates"]
