# Copyright 2026 The trl_dynamicpo Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
r"""Pure, vectorized multi-negative preference losses (DPO, S-DPO, DMPO, NAPO, MPPO, DynamicPO).

Every function works on a batch of ``B`` prompts, each with one chosen answer ``w`` and up to ``K`` negatives ``j``,
given as tensors ``[B]`` (chosen) and ``[B, K]`` (negatives) plus a bool mask ``[B, K]`` (``True`` = valid negative;
rows may have different numbers of negatives). Nothing loops over samples or negatives, so the same code runs on CPU
and GPU, in fp32 and bf16, and is differentiable with respect to the log-probabilities.

Notation: ``s`` is the summed policy log-prob of an answer, ``r = s - s_ref`` its log-ratio to the reference model,
``β`` the temperature (a float, or one ``β_j`` per negative), ``σ`` the logistic function, ``S`` the set of negatives
that enter the loss (all valid ones, or the DynamicPO boundary set).

- DPO, averaged over negatives: ``L = (1/|S|) Σ_{j∈S} −log σ(β_j (r_w − r_j))``.
- S-DPO (Chen et al., NeurIPS 2024, arXiv:2406.09215): ``L = −log σ(−log Σ_{j∈S} exp(β_j (r_j − r_w)))``,
  evaluated with a masked logsumexp. With one negative it is DPO.
- DMPO (the form used in the S-DPO / DynamicPO code): ``L = −log σ((1/|S|) Σ_{j∈S} β_j (r_w − r_j))``; with a scalar
  ``β`` this is ``−log σ(β r_w − (β/K) Σ_j r_j)``.
- NAPO (Ding et al., arXiv:2508.09653), reference-free: ``A = −log Σ_{j∈S} exp(β_j (x_j − x_w))``,
  ``L = −log σ(A − γ)`` with ``x = s`` (or ``x = r``), and an adaptive margin ``γ = γ0 (1 − α (M_b − M))`` where
  ``M_b`` is the batch mean of a teacher's scores of the negatives and ``M`` its running mean.
- MPPO (listed in the DynamicPO code), reference-free on raw probabilities ``p = exp(s)``:
  ``L = −log σ(Σ_{j∈S} β_j (p_w − p_j))``; with ``β = 1`` and all ``N`` negatives this is
  ``−log σ(N·p_w − Σ_j p_j)``.
- SFT (TRL's `loss_type="sft"` of `DPOTrainer`): the chosen answer's negative log-likelihood per token,
  ``L = −Σ_b s_w,b / Σ_b n_b`` (``n`` = answer tokens), alone (supervised fine-tuning with the same forward pass and
  trunk cache) or added to a preference loss with `loss_weights` (as RPO does).
- DynamicPO (Hu et al., DASFAA 2026, arXiv:2605.00327) = DMPO over the *boundary set*
  ``B = {j : s_j ≥ s_w}`` (negatives the policy already ranks at or above the target); when ``B`` is empty, ``B`` is
  the highest-mean cluster of a 3-means clustering of the row's ``s_j``. The remaining negatives form the
  discriminative set ``D`` (``D = B`` when every negative is a boundary one), which only shapes a per-negative,
  gradient-free temperature: ``d1 = s_w − s_j``, ``d2 = s_j − mean_{k∈D} s_k``,
  ``β_j = β (1 + 0.5 tanh((d1 − d2 − 2) / (|d1| + |d2| + ε)))`` in ``[0.5 β, 1.5 β]``.

The k-means step is exact: in one dimension the optimal k-means partition is a contiguous split of the sorted values,
found here by a dynamic program over cut points that is vectorized over the batch (see
[`kmeans_1d_top_cluster`]). It is deterministic, unlike Lloyd's algorithm with random restarts, and needs neither
NumPy nor scikit-learn.

Rows without any valid negative get a loss of exactly 0 with finite (zero) gradients, so a batch may mix rows with
different numbers of negatives, including none.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


LOSS_ALIASES = {"sigmoid": "dpo"}

# Non-finite log-probs are clamped to this magnitude inside the (detached) k-means so that sorting and squared sums
# stay finite; real summed log-probs are many orders of magnitude smaller.
_KMEANS_CLAMP = 1e12

__all__ = [
    "LOSS_SPECS",
    "LossSpec",
    "MULTI_NEGATIVE_LOSS_TYPES",
    "loss_spec",
    "sft_loss",
    "LOSS_ALIASES",
    "LOSS_TYPES",
    "MultiNegativeLossOutput",
    "compute_multi_negative_loss",
    "dmpo_loss",
    "dpo_loss",
    "dual_margin_beta",
    "dynamic_boundary_selection",
    "kmeans_1d_top_cluster",
    "mppo_loss",
    "napo_loss",
    "napo_margin",
    "resolve_loss_type",
    "sdpo_loss",
]


# ----------------------------------------------------------------------------------------------------------------------
# Masking helpers
# ----------------------------------------------------------------------------------------------------------------------
def _check_shapes(chosen: torch.Tensor, rejected: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if rejected.dim() != 2:
        raise ValueError(f"Negatives must be a [B, K] tensor, got shape {tuple(rejected.shape)}.")
    if chosen.shape != rejected.shape[:1]:
        raise ValueError(
            f"Chosen values must be a [B] tensor matching negatives of shape {tuple(rejected.shape)}, "
            f"got shape {tuple(chosen.shape)}."
        )
    if mask is None:
        return torch.ones_like(rejected, dtype=torch.bool)
    if mask.shape != rejected.shape:
        raise ValueError(
            f"mask must have the shape of the negatives {tuple(rejected.shape)}, got {tuple(mask.shape)}."
        )
    return mask.to(device=rejected.device, dtype=torch.bool)


def _masked_beta(beta, mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor | float:
    """Returns `beta` as a float or as a `[B, K]` tensor in `like`'s dtype, with 1 at invalid positions.

    Invalid positions are overwritten so that whatever the caller stored there (NaN, inf) cannot leak into the
    gradient of the chosen log-ratio through the products below.
    """
    if not isinstance(beta, torch.Tensor):
        return float(beta)
    beta = beta.to(device=like.device, dtype=like.dtype).expand_as(like)
    return torch.where(mask, beta, torch.ones_like(beta))


def _masked_logsumexp(values: torch.Tensor, mask: torch.Tensor, has_any: torch.Tensor) -> torch.Tensor:
    # Invalid entries become -inf (exp = 0). Rows with no valid entry would give logsumexp(-inf, ...) = -inf whose
    # backward is NaN (exp(-inf - -inf)); those rows are replaced by zeros here and their loss is zeroed by the caller.
    neg_inf = torch.full_like(values, float("-inf"))
    values = torch.where(mask, values, neg_inf)
    values = torch.where(has_any[:, None], values, torch.zeros_like(values))
    return torch.logsumexp(values, dim=-1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    count = mask.sum(dim=-1).clamp(min=1).to(values.dtype)
    return torch.where(mask, values, torch.zeros_like(values)).sum(dim=-1) / count


def _pairwise_margins(chosen, rejected, mask, beta) -> tuple[torch.Tensor, torch.Tensor]:
    """β_j (x_w − x_j) for every negative (0 where invalid) and the row's has-any-valid flag."""
    mask = _check_shapes(chosen, rejected, mask)
    # Invalid entries may hold padding garbage; zero them before any arithmetic so no NaN reaches the graph.
    rejected = torch.where(mask, rejected, torch.zeros_like(rejected))
    beta = _masked_beta(beta, mask, rejected)
    margins = beta * (chosen[:, None] - rejected)
    return margins, mask


# ----------------------------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------------------------
def sft_loss(chosen_logps: torch.Tensor, chosen_token_counts: torch.Tensor) -> torch.Tensor:
    r"""Negative log-likelihood of the chosen answers, averaged over their tokens (TRL's `"sft"` loss of DPO).

    ``L = −Σ_b s_w,b / Σ_b n_b`` is returned as a per-row tensor ``ℓ_b = −B s_w,b / Σ n`` whose mean is ``L``, so that
    it combines with the per-row preference losses like any other loss type.

    Args:
        chosen_logps (`torch.Tensor` of shape `[B]`):
            Summed log-probs of the chosen answers.
        chosen_token_counts (`torch.Tensor` of shape `[B]`):
            Number of scored tokens of each chosen answer (EOS included).

    Returns:
        `torch.Tensor` of shape `[B]`.

    Example:

    >>> import torch
    >>> from trl_dynamicpo.losses import sft_loss
    >>> sft_loss(torch.tensor([-2.0, -6.0]), torch.tensor([1, 3])).mean()  # (2 + 6) / (1 + 3)
    tensor(2.)
    """
    if chosen_logps.dim() != 1 or chosen_token_counts.shape != chosen_logps.shape:
        raise ValueError(
            f"chosen_logps and chosen_token_counts must be [B] tensors of the same shape, got "
            f"{tuple(chosen_logps.shape)} and {tuple(chosen_token_counts.shape)}."
        )
    total = chosen_token_counts.sum().clamp(min=1).to(chosen_logps.dtype)
    return -chosen_logps * chosen_logps.size(0) / total


def dpo_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    mask: torch.Tensor,
    beta: float | torch.Tensor,
) -> torch.Tensor:
    r"""Pairwise DPO loss averaged over the valid negatives of each row.

    ``L = (1/|S|) Σ_{j∈S} −log σ(β_j (r_w − r_j))`` where ``S`` is the set of valid negatives.

    Args:
        chosen_logratios (`torch.Tensor` of shape `[B]`):
            Log-ratio ``r_w = s_w − s_ref,w`` of the chosen answer.
        rejected_logratios (`torch.Tensor` of shape `[B, K]`):
            Log-ratios ``r_j`` of the negatives; values at invalid positions are ignored.
        mask (`torch.BoolTensor` of shape `[B, K]`):
            `True` where the negative is valid.
        beta (`float` or `torch.Tensor` broadcastable to `[B, K]`):
            Temperature, scalar or one per negative.

    Returns:
        `torch.Tensor` of shape `[B]`: per-row loss, 0 for rows without a valid negative.

    Example:

    >>> import torch
    >>> from trl_dynamicpo.losses import dpo_loss
    >>> chosen = torch.tensor([1.0])
    >>> rejected = torch.tensor([[0.0, 2.0]])
    >>> dpo_loss(chosen, rejected, torch.tensor([[True, True]]), beta=1.0)  # (softplus(-1) + softplus(1)) / 2
    tensor([0.8133])
    """
    margins, mask = _pairwise_margins(chosen_logratios, rejected_logratios, mask, beta)
    # −log σ(m) = softplus(−m). softplus rather than logsigmoid: same stable value, but the CPU logsigmoid kernel
    # parallelizes even tiny tensors, which stalls for milliseconds when the other cores are busy.
    pair_losses = F.softplus(-margins)
    # _masked_mean gives 0 for empty rows (sum 0 / count clamped to 1).
    return _masked_mean(pair_losses, mask)


def sdpo_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    mask: torch.Tensor,
    beta: float | torch.Tensor,
) -> torch.Tensor:
    r"""S-DPO (softmax DPO) loss, arXiv:2406.09215.

    ``L = −log σ(−logsumexp_{j∈S} β_j (r_j − r_w))`` over the valid negatives ``S``; with one negative it equals DPO.

    Args:
        chosen_logratios (`torch.Tensor` of shape `[B]`):
            Log-ratio ``r_w`` of the chosen answer.
        rejected_logratios (`torch.Tensor` of shape `[B, K]`):
            Log-ratios ``r_j`` of the negatives.
        mask (`torch.BoolTensor` of shape `[B, K]`):
            `True` where the negative is valid.
        beta (`float` or `torch.Tensor` broadcastable to `[B, K]`):
            Temperature, scalar or one per negative.

    Returns:
        `torch.Tensor` of shape `[B]`: per-row loss, 0 for rows without a valid negative.

    Example:

    >>> import torch
    >>> from trl_dynamicpo.losses import sdpo_loss
    >>> chosen = torch.tensor([1.0])
    >>> rejected = torch.tensor([[0.0, 2.0, 9.0]])
    >>> mask = torch.tensor([[True, True, False]])
    >>> sdpo_loss(chosen, rejected, mask, beta=1.0)  # log(1 + e^-1 + e^1); the masked 9.0 is ignored
    tensor([1.4076])
    """
    margins, mask = _pairwise_margins(chosen_logratios, rejected_logratios, mask, beta)
    has_any = mask.any(dim=-1)
    # −log σ(−lse) = softplus(lse); logsumexp keeps it stable for large margins.
    lse = _masked_logsumexp(-margins, mask, has_any)
    losses = F.softplus(lse)
    return torch.where(has_any, losses, torch.zeros_like(losses))


def dmpo_loss(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    mask: torch.Tensor,
    beta: float | torch.Tensor,
) -> torch.Tensor:
    r"""DMPO loss as used in the S-DPO and DynamicPO code.

    ``L = −log σ((1/|S|) Σ_{j∈S} β_j (r_w − r_j))``; with a scalar β this is ``−log σ(β r_w − (β/K) Σ_j r_j)``.

    Args:
        chosen_logratios (`torch.Tensor` of shape `[B]`):
            Log-ratio ``r_w`` of the chosen answer.
        rejected_logratios (`torch.Tensor` of shape `[B, K]`):
            Log-ratios ``r_j`` of the negatives.
        mask (`torch.BoolTensor` of shape `[B, K]`):
            `True` where the negative is valid (the set ``S``).
        beta (`float` or `torch.Tensor` broadcastable to `[B, K]`):
            Temperature, scalar or one per negative.

    Returns:
        `torch.Tensor` of shape `[B]`: per-row loss, 0 for rows without a valid negative.

    Example:

    >>> import torch
    >>> from trl_dynamicpo.losses import dmpo_loss
    >>> chosen = torch.tensor([1.0])
    >>> rejected = torch.tensor([[0.0, 2.0, 4.0]])
    >>> dmpo_loss(chosen, rejected, torch.tensor([[True, True, False]]), beta=2.0)  # -log σ(2·1 − 2·(0+2)/2)
    tensor([0.6931])
    """
    margins, mask = _pairwise_margins(chosen_logratios, rejected_logratios, mask, beta)
    has_any = mask.any(dim=-1)
    losses = F.softplus(-_masked_mean(margins, mask))  # = −log σ(mean margin), see dpo_loss
    return torch.where(has_any, losses, torch.zeros_like(losses))


def mppo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    mask: torch.Tensor,
    beta: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    r"""MPPO loss on raw probabilities (reference-free), as listed in the DynamicPO code.

    ``L = −log σ(Σ_{j∈S} β_j (p_w − p_j))`` with ``p = exp(s)``: the chosen answer's probability must exceed each
    negative's. With ``β = 1`` and all ``N`` valid negatives this is the published ``−log σ(N·p_w − Σ_j p_j)``; a
    per-negative ``β_j`` (DynamicPO's dynamic β) weights each difference, and boundary selection restricts ``S``.
    Probabilities of whole answers are small (a 5-token title at −2 nats per token has ``p ≈ 5e−5``), so this loss's
    gradients are much smaller than those of the log-ratio losses: it usually needs a larger learning rate or ``β``.

    Args:
        chosen_logps (`torch.Tensor` of shape `[B]`):
            Summed policy log-prob ``s_w`` of the chosen answer.
        rejected_logps (`torch.Tensor` of shape `[B, K]`):
            Summed policy log-probs ``s_j`` of the negatives; values at invalid positions are ignored.
        mask (`torch.BoolTensor` of shape `[B, K]`):
            `True` where the negative is valid (the set ``S``).
        beta (`float` or `torch.Tensor` broadcastable to `[B, K]`, defaults to `1.0`):
            Weight of each difference, scalar or one per negative.

    Returns:
        `torch.Tensor` of shape `[B]`: per-row loss, 0 for rows without a valid negative.

    Example:

    >>> import math, torch
    >>> from trl_dynamicpo.losses import mppo_loss
    >>> chosen = torch.tensor([math.log(0.5)])
    >>> rejected = torch.log(torch.tensor([[0.25, 0.125]]))
    >>> mppo_loss(chosen, rejected, torch.ones(1, 2, dtype=torch.bool))  # -log σ(2·0.5 − (0.25 + 0.125))
    tensor([0.4287])
    """
    mask = _check_shapes(chosen_logps, rejected_logps, mask)
    # Invalid slots may hold garbage (NaN, +inf): zero their probability before exp so nothing leaks into the graph.
    rejected_probs = torch.exp(torch.where(mask, rejected_logps, torch.full_like(rejected_logps, float("-inf"))))
    margins, mask = _pairwise_margins(torch.exp(chosen_logps), rejected_probs, mask, beta)
    has_any = mask.any(dim=-1)
    losses = F.softplus(-torch.where(mask, margins, torch.zeros_like(margins)).sum(dim=-1))
    return torch.where(has_any, losses, torch.zeros_like(losses))


def napo_loss(
    chosen_scores: torch.Tensor,
    rejected_scores: torch.Tensor,
    mask: torch.Tensor,
    beta: float | torch.Tensor,
    gamma: float | torch.Tensor,
) -> torch.Tensor:
    r"""NAPO loss, arXiv:2508.09653: an S-DPO-style softmax loss with an additive margin.

    ``A = −logsumexp_{j∈S} β_j (x_j − x_w)``, ``L = −log σ(A − γ)``. NAPO is reference-free (``x`` = policy log-probs);
    log-ratios work as well.

    Args:
        chosen_scores (`torch.Tensor` of shape `[B]`):
            Score ``x_w`` of the chosen answer (policy log-prob, or log-ratio).
        rejected_scores (`torch.Tensor` of shape `[B, K]`):
            Scores ``x_j`` of the negatives.
        mask (`torch.BoolTensor` of shape `[B, K]`):
            `True` where the negative is valid.
        beta (`float` or `torch.Tensor` broadcastable to `[B, K]`):
            Temperature, scalar or one per negative.
        gamma (`float` or `torch.Tensor` of shape `[]` or `[B]`):
            Margin γ (see [`napo_margin`]); a larger γ asks for a larger gap between the target and the negatives.

    Returns:
        `torch.Tensor` of shape `[B]`: per-row loss, 0 for rows without a valid negative.

    Example:

    >>> import torch
    >>> from trl_dynamicpo.losses import napo_loss
    >>> chosen = torch.tensor([-2.0])
    >>> rejected = torch.tensor([[-3.0, -1.0]])
    >>> napo_loss(chosen, rejected, torch.tensor([[True, True]]), beta=1.0, gamma=0.5)  # softplus(log(e^-1 + e) + 0.5)
    tensor([1.8064])
    """
    margins, mask = _pairwise_margins(chosen_scores, rejected_scores, mask, beta)
    has_any = mask.any(dim=-1)
    lse = _masked_logsumexp(-margins, mask, has_any)
    if isinstance(gamma, torch.Tensor):
        gamma = gamma.to(device=lse.device, dtype=lse.dtype)
    # −log σ(A − γ) = softplus(γ − A) = softplus(lse + γ).
    losses = F.softplus(lse + gamma)
    return torch.where(has_any, losses, torch.zeros_like(losses))


def napo_margin(
    gamma0: float,
    alpha: float,
    batch_mean: torch.Tensor | float,
    running_mean: torch.Tensor | float,
) -> torch.Tensor:
    r"""NAPO's adaptive margin ``γ = γ0 · (1 − α · (M_b − M))``.

    ``M_b`` is the batch mean of a teacher's confidence scores of the negatives and ``M`` their running mean (NAPO
    updates ``M ← 0.9 M + 0.1 M_b`` before computing the loss). Batches whose negatives the teacher finds harder than
    usual (``M_b > M``) get a smaller margin.

    Args:
        gamma0 (`float`):
            Base margin γ0 (1.0 in the paper).
        alpha (`float`):
            Sensitivity α (0.3 in the paper).
        batch_mean (`torch.Tensor` or `float`):
            ``M_b``.
        running_mean (`torch.Tensor` or `float`):
            ``M``.

    Returns:
        `torch.Tensor`: the margin γ (0-dim unless the means are batched).

    Example:

    >>> from trl_dynamicpo.losses import napo_margin
    >>> napo_margin(1.0, 0.3, batch_mean=0.6, running_mean=0.4)  # 1 − 0.3·0.2
    tensor(0.9400)
    """
    tensors = [t for t in (batch_mean, running_mean) if isinstance(t, torch.Tensor)]
    like = tensors[0] if tensors else None
    dtype = like.dtype if like is not None and like.is_floating_point() else torch.get_default_dtype()
    device = like.device if like is not None else None
    batch_mean = torch.as_tensor(batch_mean, dtype=dtype, device=device)
    running_mean = torch.as_tensor(running_mean, dtype=dtype, device=device)
    return gamma0 * (1.0 - alpha * (batch_mean - running_mean))


# ----------------------------------------------------------------------------------------------------------------------
# The loss registry: one place that the config, the trainer, the model cards, the recipes and docs/training.md read
# ----------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossSpec:
    r"""What the library knows about one `loss_type`.

    Args:
        name (`str`): The `loss_type` value.
        display_name (`str`): Name in tables and cards ("S-DPO").
        description (`str`): The objective in one sentence (model cards, the loss table of docs/training.md).
        citations (`tuple[str, ...]`): BibTeX keys of [`trl_dynamicpo.model_card.CITATIONS`] a model trained with it cites.
        form (`str`): The objective computed (`"dynamicpo"` is DMPO with both plug-ins).
        function (`Callable` or `None`): The pure loss function of `form` (`None` for `"sft"`, which has its own
            signature: [`sft_loss`]).
        uses_negatives (`bool`): Computed from the negatives (all but `"sft"`).
        plugins (`bool`): DynamicPO's boundary selection and dynamic β apply (set-wise losses; pairwise DPO scores each
            negative on its own, so there is no set to select from and no shared temperature to adapt).
        reference_free (`bool`): Never needs the reference model (NAPO may, with `napo_use_reference`).
    """

    name: str
    display_name: str
    description: str
    citations: tuple[str, ...] = ()
    form: str = ""
    function: Callable | None = None
    uses_negatives: bool = True
    plugins: bool = False
    reference_free: bool = False


LOSS_SPECS: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec(
            "dpo",
            "DPO",
            "DPO averaged over the negatives: mean_j −log σ(β (r_w − r_j)) (TRL's sigmoid loss for K = 1)",
            form="dpo",
            function=dpo_loss,
        ),
        LossSpec(
            "sdpo",
            "S-DPO",
            "S-DPO (softmax DPO, Chen et al., 2024): −log σ(−log Σ_j exp(β (r_j − r_w))) over K negatives; it reduces "
            "to DPO for K = 1",
            citations=("sdpo",),
            form="sdpo",
            function=sdpo_loss,
            plugins=True,
        ),
        LossSpec(
            "dmpo",
            "DMPO",
            "DMPO: −log σ(β r_w − (β / K) Σ_j r_j), the positive against the mean of the K negatives",
            citations=("sdpo",),
            form="dmpo",
            function=dmpo_loss,
            plugins=True,
        ),
        LossSpec(
            "dynamicpo",
            "DynamicPO",
            "DynamicPO (Hu et al., 2026): the loss of each row is restricted to its boundary negatives (those the "
            "policy scores at least as high as the target, else the highest-scoring cluster of negatives), each "
            "weighted by its own β_j in [0.5 β, 1.5 β] set by a dual margin; this prevents the preference optimization "
            "collapse of multi-negative losses, where easy negatives dominate the gradient",
            citations=("dynamicpo", "sdpo"),
            form="dmpo",
            function=dmpo_loss,
            plugins=True,
        ),
        LossSpec(
            "napo",
            "NAPO",
            "NAPO (Ding et al., 2025): reference-free softmax preference loss with in-batch negative sharing and a "
            "reward margin that adapts to a teacher's confidence in the negatives",
            citations=("napo",),
            form="napo",
            function=napo_loss,
            plugins=True,
        ),
        LossSpec(
            "mppo",
            "MPPO",
            "MPPO: −log σ(Σ_j β (π(y_w|x) − π(y_j|x))) on raw sequence probabilities, reference-free; with β = 1 it is "
            "−log σ(N π(y_w|x) − Σ_j π(y_j|x))",
            citations=("dynamicpo",),
            form="mppo",
            function=mppo_loss,
            plugins=True,
            reference_free=True,
        ),
        LossSpec(
            "sft",
            "SFT",
            "supervised fine-tuning: the chosen answer's negative log-likelihood per token (TRL's `sft` loss)",
            form="sft",
            uses_negatives=False,
            reference_free=True,
        ),
    )
}
LOSS_TYPES = tuple(LOSS_SPECS)
# Losses computed from the negatives (all but "sft", the chosen answer's negative log-likelihood).
MULTI_NEGATIVE_LOSS_TYPES = tuple(name for name, spec in LOSS_SPECS.items() if spec.uses_negatives)
# Loss types on which DynamicPO's boundary selection and dynamic beta can be switched on ("dynamicpo" has them built in).
_FLAG_LOSS_TYPES = tuple(name for name, spec in LOSS_SPECS.items() if spec.plugins and name != "dynamicpo")


def loss_spec(loss_type: str) -> LossSpec:
    """The [`LossSpec`] of `loss_type` (aliases such as `"sigmoid"` resolved), or a `ValueError` listing the known ones.

    Example:

    >>> from trl_dynamicpo.losses import loss_spec
    >>> loss_spec("sigmoid").display_name
    'DPO'
    """
    spec = LOSS_SPECS.get(LOSS_ALIASES.get(loss_type, loss_type))
    if spec is None:
        aliases = ", ".join(f"{alias!r} (= {target!r})" for alias, target in LOSS_ALIASES.items())
        raise ValueError(
            f"Unknown loss_type {loss_type!r}. Supported loss types: {', '.join(map(repr, LOSS_TYPES))}; "
            f"aliases: {aliases}."
        )
    return spec


# ----------------------------------------------------------------------------------------------------------------------
# DynamicPO: boundary selection and dual-margin beta
# ----------------------------------------------------------------------------------------------------------------------
def _selection_dtype(device: torch.device) -> torch.dtype:
    # Selection runs on detached values in float64 so bf16/fp16 inputs cluster exactly like their fp32 counterparts
    # (the casts are exact) and the SSE differences of the DP do not cancel. MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def kmeans_1d_top_cluster(values: torch.Tensor, mask: torch.Tensor, num_clusters: int = 3) -> torch.Tensor:
    r"""Exact 1-D k-means per row; returns the members of the cluster with the highest mean.

    For each row, the valid values are clustered into ``k = min(num_clusters, n_valid)`` clusters minimizing the sum of
    squared errors (SSE). In one dimension an optimal partition is contiguous in sorted order, so the optimum is found
    exactly by a dynamic program over cut points: ``D_m[j] = min_i D_{m-1}[i] + SSE(x_i..x_{j-1})``, vectorized over the
    batch with ``O(k · K²)`` work per row; the only Python loop is over the ``k`` clusters. The highest-mean cluster is
    the last segment of the sorted values.

    Tie rules (deterministic): among partitions with equal SSE, the one with the *largest* top cluster wins (the
    earliest last cut); values equal to the smallest member of the top cluster are always members too, so duplicates
    are never split (an optimal partition only splits equal values when there are fewer distinct values than
    clusters). The result does not depend on the order of the values in the row. Values are detached and clustered in
    float64; non-finite values are clamped to ±1e12.

    Args:
        values (`torch.Tensor` of shape `[B, K]`):
            Values to cluster, e.g. the policy log-probs of the negatives.
        mask (`torch.BoolTensor` of shape `[B, K]`):
            `True` where the value takes part; invalid positions are never selected.
        num_clusters (`int`, defaults to `3`):
            Number of clusters (capped per row at the number of valid values).

    Returns:
        `torch.BoolTensor` of shape `[B, K]`: membership of the highest-mean cluster (all `False` for empty rows).

    Example:

    >>> import torch
    >>> from trl_dynamicpo.losses import kmeans_1d_top_cluster
    >>> values = torch.tensor([[-9.0, -1.0, -5.0, -1.2, -5.3, 0.0]])
    >>> mask = torch.tensor([[True, True, True, True, True, False]])
    >>> kmeans_1d_top_cluster(values, mask)
    tensor([[False,  True, False,  True, False, False]])
    """
    if values.dim() != 2:
        raise ValueError(f"values must be a [B, K] tensor, got shape {tuple(values.shape)}.")
    if num_clusters < 1:
        raise ValueError(f"num_clusters must be >= 1, got {num_clusters}.")
    mask = mask.to(device=values.device, dtype=torch.bool)
    batch_size, num_values = values.shape
    if num_values == 0:
        return mask.clone()
    device = values.device
    work = values.detach().to(_selection_dtype(device))
    work = torch.nan_to_num(work, nan=-_KMEANS_CLAMP, posinf=_KMEANS_CLAMP, neginf=-_KMEANS_CLAMP)
    work = work.clamp(-_KMEANS_CLAMP, _KMEANS_CLAMP)

    num_valid = mask.sum(dim=-1)  # [B]
    positions = torch.arange(num_values, device=device)
    # Sort valid values ascending; invalid ones go to the end (+inf), so the first n_valid sorted slots are the data.
    sorted_values, _ = torch.sort(torch.where(mask, work, torch.full_like(work, float("inf"))), dim=-1)
    sorted_valid = positions[None, :] < num_valid[:, None]
    x = torch.where(sorted_valid, sorted_values, torch.zeros_like(sorted_values))
    # Center each row: prefix sums of squares of raw log-probs (e.g. −80 ± 1) would cancel catastrophically.
    center = x.sum(dim=-1, keepdim=True) / num_valid.clamp(min=1)[:, None]
    x = torch.where(sorted_valid, x - center, torch.zeros_like(x))

    zero = x.new_zeros(batch_size, 1)
    prefix = torch.cat([zero, x.cumsum(dim=-1)], dim=-1)  # [B, K+1]
    prefix_sq = torch.cat([zero, (x * x).cumsum(dim=-1)], dim=-1)
    cut = torch.arange(num_values + 1, device=device)
    length = (cut[None, :] - cut[:, None]).to(x.dtype)  # [i, j] = j − i
    # cost[b, i, j] = SSE of sorted values i..j-1 (half-open); +inf for empty or reversed segments. Segments that run
    # past a row's valid values are never read: only cost[:, :, n_valid] and DP entries below it are used.
    seg_sum = prefix[:, None, :] - prefix[:, :, None]
    seg_sq = prefix_sq[:, None, :] - prefix_sq[:, :, None]
    cost = (seg_sq - seg_sum * seg_sum / length.clamp(min=1)).clamp(min=0)
    cost = torch.where(length > 0, cost, torch.full_like(cost, float("inf")))

    # best[m-1][b, j] = minimal SSE of splitting the first j sorted values into m non-empty clusters.
    best = [cost[:, 0, :]]
    for _ in range(2, num_clusters):
        best.append((best[-1][:, :, None] + cost).amin(dim=1))

    k = num_valid.clamp(max=num_clusters)  # clusters actually used per row
    # Cost of the last segment [i, n_valid) for every start i, and the best cost of the k−1 clusters before it.
    last_cost = cost.gather(2, num_valid.view(batch_size, 1, 1).expand(batch_size, num_values + 1, 1)).squeeze(-1)
    stacked = torch.stack(best, dim=1)  # [B, num_clusters - 1 (or 1), K+1]
    prefix_index = (k - 2).clamp(min=0, max=stacked.shape[1] - 1)
    prev = stacked.gather(1, prefix_index.view(batch_size, 1, 1).expand(batch_size, 1, num_values + 1)).squeeze(1)
    # argmin returns the first minimum: the earliest last cut, i.e. the largest top cluster among ties.
    last_start = torch.argmin(prev + last_cost, dim=-1)
    last_start = torch.where(k >= 2, last_start, torch.zeros_like(last_start))
    threshold = sorted_values.gather(1, last_start.clamp(max=num_values - 1)[:, None])
    return mask & (work >= threshold)


def dynamic_boundary_selection(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    mask: torch.Tensor,
    num_clusters: int = 3,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""DynamicPO's boundary set ``B = {valid j : s_j ≥ s_w}``, with a k-means fallback for rows where it is empty.

    Selection uses policy log-probs, not log-ratios: the boundary negatives are those the current policy would rank at
    or above the target (what greedy decoding would actually confuse), regardless of how far the policy moved from
    the reference. If the policy already ranks the target first (``B`` empty), the hardest negatives are taken as the
    highest-mean cluster of a ``num_clusters``-means clustering of the row's ``s_j`` ([`kmeans_1d_top_cluster`]).
    Selection is detached (a set choice carries no gradient).

    Args:
        chosen_logps (`torch.Tensor` of shape `[B]`):
            Policy log-prob ``s_w`` of the chosen answer.
        rejected_logps (`torch.Tensor` of shape `[B, K]`):
            Policy log-probs ``s_j`` of the negatives.
        mask (`torch.BoolTensor` of shape `[B, K]`):
            `True` where the negative is valid.
        num_clusters (`int`, defaults to `3`):
            Number of k-means clusters of the fallback.

    Returns:
        `tuple[torch.BoolTensor, torch.BoolTensor]`: the boundary mask `[B, K]` (a subset of `mask`, non-empty for every
        row with a valid negative) and `fallback` `[B]`, `True` where the k-means cluster was used.

    Example:

    >>> import torch
    >>> from trl_dynamicpo.losses import dynamic_boundary_selection
    >>> chosen = torch.tensor([-2.0, -1.0])
    >>> rejected = torch.tensor([[-1.5, -3.0, -2.0, -9.0], [-9.0, -2.0, -2.1, -8.0]])
    >>> boundary, fallback = dynamic_boundary_selection(chosen, rejected, torch.ones(2, 4, dtype=torch.bool))
    >>> boundary
    tensor([[ True, False,  True, False],
            [False,  True,  True, False]])
    >>> fallback
    tensor([False,  True])
    """
    mask = _check_shapes(chosen_logps, rejected_logps, mask)
    chosen_logps = chosen_logps.detach()
    rejected_logps = rejected_logps.detach()
    boundary = mask & (rejected_logps >= chosen_logps[:, None])
    fallback = mask.any(dim=-1) & ~boundary.any(dim=-1)
    # On CPU, checking whether any row needs the fallback is free; on accelerators it would force a device sync, so
    # there the clustering simply runs for every row (cheap, O(k·K²)) and `where` picks the fallback rows.
    if boundary.device.type == "cpu" and not bool(fallback.any()):
        return boundary, fallback
    top_cluster = kmeans_1d_top_cluster(rejected_logps, mask, num_clusters)
    boundary = torch.where(fallback[:, None], top_cluster, boundary)
    return boundary, fallback


# Floor of the log-probs `dual_margin_beta` works with (see there): far below the summed log-prob of any real answer
# (titles have tens of tokens, each above about -100 nats), and small enough that fp32 keeps the differences exact
# to ~0.1.
_LOGP_FLOOR = -1.0e6


def dual_margin_beta(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    mask: torch.Tensor,
    boundary_mask: torch.Tensor,
    beta: float | torch.Tensor,
    scale: float = 0.5,
    margin: float = 2.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    r"""DynamicPO's dual-margin per-negative temperature ``β_j`` (detached).

    With ``D`` the valid negatives outside the boundary set (``D = B`` when every valid negative is a boundary one),
    ``d1 = s_w − s_j`` (gap to the target) and ``d2 = s_j − mean_{k∈D} s_k`` (lead over the easy negatives),

    ``β_j = β · (1 + scale · tanh((d1 − d2 − margin) / (|d1| + |d2| + eps)))``  ∈ ``[(1 − scale) β, (1 + scale) β]``.

    Negatives close to or above the target relative to their lead over the easy ones get a smaller β (a softer, wider
    sigmoid that keeps their gradient alive); the ``eps`` avoids the 0/0 of the original code when
    ``s_j = s_w = mean_D``. β is detached: it is a weighting of the loss terms computed from the current state, and
    letting gradients flow into it would make the optimizer push log-probs to change the temperature instead of the
    ranking.

    Args:
        chosen_logps (`torch.Tensor` of shape `[B]`):
            Policy log-prob ``s_w`` of the chosen answer.
        rejected_logps (`torch.Tensor` of shape `[B, K]`):
            Policy log-probs ``s_j`` of the negatives.
        mask (`torch.BoolTensor` of shape `[B, K]`):
            `True` where the negative is valid.
        boundary_mask (`torch.BoolTensor` of shape `[B, K]`):
            Boundary set, e.g. from [`dynamic_boundary_selection`].
        beta (`float` or `torch.Tensor` broadcastable to `[B, K]`):
            Base temperature β.
        scale (`float`, defaults to `0.5`):
            Maximal relative change of β.
        margin (`float`, defaults to `2.0`):
            Margin subtracted from ``d1 − d2``.
        eps (`float`, defaults to `1e-6`):
            Added to the denominator.

    Returns:
        `torch.Tensor` of shape `[B, K]`: ``β_j`` for every valid negative, ``β`` at invalid positions, detached, in the
        dtype of `rejected_logps`.

    Example:

    >>> import torch
    >>> from trl_dynamicpo.losses import dual_margin_beta
    >>> chosen = torch.tensor([-2.0])
    >>> rejected = torch.tensor([[-1.0, -4.0, -6.0]])
    >>> mask = torch.ones(1, 3, dtype=torch.bool)
    >>> boundary = torch.tensor([[True, False, False]])  # D = {-4, -6}, mean -5
    >>> dual_margin_beta(chosen, rejected, mask, boundary, beta=1.0)  # first: 1 + 0.5·tanh((-1 - 4 - 2) / (1 + 4))
    tensor([[0.5573, 0.8392, 1.2685]])
    """
    mask = _check_shapes(chosen_logps, rejected_logps, mask)
    boundary_mask = boundary_mask.to(device=mask.device, dtype=torch.bool) & mask
    out_dtype = rejected_logps.dtype
    # Computed in at least fp32: β is a detached weight, and bf16 differences of log-probs around −50 are coarse.
    work_dtype = torch.promote_types(out_dtype, torch.float32)
    # A log-prob of -inf (an answer the model gives zero probability, e.g. through a masked token) would make the
    # mean over D and every ratio inf/inf = NaN, i.e. NaN for the whole row. Flooring it at a finite value far below any
    # real answer's log-prob gives the limit of the formula instead (its β tends to β(1 + scale·tanh(1)) and the β of
    # the row's other negatives of D to β(1 + scale·tanh(-1))). NaN stays NaN so that the trainer's guard names it.
    s_w = chosen_logps.detach().to(work_dtype)[:, None].clamp_min(_LOGP_FLOOR)
    s_j = rejected_logps.detach().to(work_dtype).clamp_min(_LOGP_FLOOR)
    s_j = torch.where(mask, s_j, torch.zeros_like(s_j))

    discriminative = mask & ~boundary_mask
    discriminative = torch.where(discriminative.any(dim=-1, keepdim=True), discriminative, boundary_mask)
    disc_mean = _masked_mean(s_j, discriminative)[:, None]

    d1 = s_w - s_j
    d2 = s_j - disc_mean
    ratio = (d1 - d2 - margin) / (d1.abs() + d2.abs() + eps)
    base = beta.detach().to(device=s_j.device, dtype=work_dtype) if isinstance(beta, torch.Tensor) else beta
    dynamic = base * (1.0 + scale * torch.tanh(ratio))
    base_full = torch.as_tensor(base, dtype=work_dtype, device=s_j.device).expand_as(dynamic)
    return torch.where(mask, dynamic, base_full).to(out_dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Configuration resolution and the all-in-one entry point
# ----------------------------------------------------------------------------------------------------------------------
def resolve_loss_type(
    loss_type: str,
    boundary_selection: bool | None = None,
    dynamic_beta: bool | None = None,
) -> tuple[str, bool, bool]:
    r"""Validates a loss configuration and returns its canonical name and effective DynamicPO flags.

    `None` means "the default for this loss": `True` for `"dynamicpo"`, `False` otherwise. The DynamicPO components
    (boundary selection, dynamic β) apply to the set-wise losses `"sdpo"`, `"dmpo"`, `"napo"` and `"mppo"`;
    `"dynamicpo"` is DMPO with both components on.

    Args:
        loss_type (`str`):
            One of `LOSS_TYPES` or an alias in `LOSS_ALIASES` (`"sigmoid"`, TRL's default, means `"dpo"`).
        boundary_selection (`bool` or `None`, *optional*):
            Whether the loss runs over the boundary set only.
        dynamic_beta (`bool` or `None`, *optional*):
            Whether the per-negative dual-margin β replaces the scalar β.

    Returns:
        `tuple[str, bool, bool]`: `(canonical_loss_type, boundary_selection, dynamic_beta)`.

    Raises:
        `ValueError`: for an unknown loss type, a DynamicPO flag set on `"dpo"`, or a flag set to `False` with
        `"dynamicpo"`.

    Example:

    >>> from trl_dynamicpo.losses import resolve_loss_type
    >>> resolve_loss_type("dynamicpo")
    ('dynamicpo', True, True)
    >>> resolve_loss_type("sigmoid")
    ('dpo', False, False)
    >>> resolve_loss_type("sdpo", boundary_selection=True)
    ('sdpo', True, False)
    """
    if not isinstance(loss_type, str):
        raise ValueError(f"loss_type must be a string, got {type(loss_type).__name__}.")
    canonical = loss_spec(loss_type).name
    flags = {"boundary_selection": boundary_selection, "dynamic_beta": dynamic_beta}
    for name, value in flags.items():
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"{name} must be True, False or None, got {value!r}.")

    if canonical == "dynamicpo":
        for name, value in flags.items():
            if value is False:
                raise ValueError(
                    f"loss_type='dynamicpo' is DMPO with boundary selection and dynamic beta, so {name}=False "
                    "contradicts it. To ablate a component, use loss_type='dmpo' with boundary_selection=... and "
                    "dynamic_beta=... set explicitly."
                )
        return canonical, True, True

    if canonical not in _FLAG_LOSS_TYPES:
        for name, value in flags.items():
            if value:
                raise ValueError(
                    f"{name}=True does not apply to loss_type={canonical!r}: DynamicPO's boundary selection and "
                    f"dynamic beta are defined for the multi-negative losses {', '.join(map(repr, _FLAG_LOSS_TYPES))} "
                    "(and built into 'dynamicpo'), not for pairwise DPO which scores each negative on its own. "
                    f"Use one of those loss types or leave {name} unset."
                )
    return canonical, bool(boundary_selection), bool(dynamic_beta)


@dataclass
class MultiNegativeLossOutput:
    r"""Output of [`compute_multi_negative_loss`].

    Args:
        losses (`torch.Tensor` of shape `[B]`):
            Per-row loss; 0 (with zero, finite gradients) for rows without a valid negative.
        selected_mask (`torch.BoolTensor` of shape `[B, K]`):
            Negatives that entered the loss (the boundary set with boundary selection, else all valid negatives).
        boundary_mask (`torch.BoolTensor` of shape `[B, K]`):
            DynamicPO boundary set, always computed so that it can be logged for every loss type.
        fallback (`torch.BoolTensor` of shape `[B]`):
            Rows whose boundary set was empty and came from the k-means fallback.
        beta (`torch.Tensor` of shape `[B, K]`):
            Per-negative β actually used (detached).
        nonboundary_grad_share (`torch.Tensor`, 0-dim):
            Share of ``Σ |∂L/∂r_j|`` over the batch carried by valid non-boundary negatives under the configured loss
            *without* boundary selection: how much of the plain multi-negative gradient goes to easy negatives (the
            "preference optimization collapse" signal of DynamicPO). 0 when there is no valid negative.
    """

    losses: torch.Tensor
    selected_mask: torch.Tensor
    boundary_mask: torch.Tensor
    fallback: torch.Tensor
    beta: torch.Tensor
    nonboundary_grad_share: torch.Tensor


def _negative_grad_magnitudes(form, chosen, rejected, mask, beta, gamma) -> torch.Tensor:
    """Analytic |∂L_b/∂x_bj| of the per-row loss for every negative (0 where invalid), computed without autograd.

    Closed forms, with m_j = β_j (x_w − x_j) and n = |S|:
      dpo:        β_j σ(−m_j) / n
      dmpo:       β_j σ(−mean_j m_j) / n
      sdpo, napo: β_j σ(lse + γ) softmax_j(−m),  lse = logsumexp_j(−m_j), γ = 0 for sdpo
      mppo:       β_j p_j σ(−Σ_j β_j (p_w − p_j)),  p = exp(x)
    Analytic rather than autograd so that it works under `torch.no_grad()` / `torch.inference_mode()` and never touches
    the training graph.
    """
    work_dtype = torch.promote_types(rejected.dtype, torch.float32)
    chosen = chosen.detach().to(work_dtype)
    rejected = rejected.detach().to(work_dtype)
    beta = beta.detach().to(work_dtype)
    margins, mask = _pairwise_margins(chosen, rejected, mask, beta)
    beta = torch.where(mask, beta, torch.zeros_like(beta)).abs()
    has_any = mask.any(dim=-1)
    count = mask.sum(dim=-1).clamp(min=1).to(work_dtype)[:, None]
    if form == "mppo":
        # Margins of probabilities, not of log-probs: ∂/∂x_j of −log σ(M) with M = Σ β_j (e^{x_w} − e^{x_j}).
        probs = torch.exp(torch.where(mask, rejected, torch.full_like(rejected, float("-inf"))))
        prob_margins = torch.where(mask, beta * (torch.exp(chosen)[:, None] - probs), torch.zeros_like(probs))
        grads = beta * probs * torch.sigmoid(-prob_margins.sum(dim=-1))[:, None]
    elif form == "dpo":
        grads = beta * torch.sigmoid(-margins) / count
    elif form == "dmpo":
        grads = beta * torch.sigmoid(-_masked_mean(margins, mask))[:, None] / count
    else:
        lse = _masked_logsumexp(-margins, mask, has_any)
        if isinstance(gamma, torch.Tensor):
            gamma = gamma.detach().to(device=lse.device, dtype=work_dtype)
        weights = torch.exp(torch.where(mask, -margins - lse[:, None], torch.full_like(margins, float("-inf"))))
        grads = beta * torch.sigmoid(lse + (gamma if form == "napo" else 0.0))[:, None] * weights
    return torch.where(mask & has_any[:, None], grads, torch.zeros_like(grads))


def compute_multi_negative_loss(
    loss_type: str,
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    mask: torch.Tensor | None,
    beta: float | torch.Tensor,
    *,
    boundary_selection: bool | None = None,
    dynamic_beta: bool | None = None,
    boundary_clusters: int = 3,
    beta_scale: float = 0.5,
    beta_margin: float = 2.0,
    eps: float = 1e-6,
    gamma: float | torch.Tensor = 0.0,
    napo_use_reference: bool = False,
) -> MultiNegativeLossOutput:
    r"""Computes a multi-negative preference loss with optional DynamicPO boundary selection and dynamic β.

    - `"dpo"`: [`dpo_loss`] over all valid negatives.
    - `"sdpo"` / `"dmpo"`: [`sdpo_loss`] / [`dmpo_loss`] over the valid negatives, or over the boundary set with
      `boundary_selection`.
    - `"dynamicpo"`: DMPO over the boundary set with dual-margin β (arXiv:2605.00327).
    - `"napo"`: [`napo_loss`] with margin `gamma`, on policy log-probs (reference-free) or on log-ratios with
      `napo_use_reference`.
    - `"mppo"`: [`mppo_loss`] on the policy's raw probabilities (reference-free; the reference log-probs may be
      `None` and are ignored). Boundary selection / dynamic β apply to whatever negatives are passed (including negatives
      shared from other rows of the batch).

    Boundary selection and the dual-margin β always use policy log-probs ([`dynamic_boundary_selection`],
    [`dual_margin_beta`]); the loss itself uses log-ratios ``r = s − s_ref`` (except reference-free NAPO).

    Args:
        loss_type (`str`):
            One of `LOSS_TYPES` (or `"sigmoid"` for `"dpo"`).
        policy_chosen_logps (`torch.Tensor` of shape `[B]`):
            Summed policy log-probs of the chosen answers.
        policy_rejected_logps (`torch.Tensor` of shape `[B, K]`):
            Summed policy log-probs of the negatives.
        ref_chosen_logps (`torch.Tensor` of shape `[B]` or `None`):
            Reference log-probs of the chosen answers; may be `None` only for reference-free NAPO.
        ref_rejected_logps (`torch.Tensor` of shape `[B, K]` or `None`):
            Reference log-probs of the negatives; may be `None` only for reference-free NAPO.
        mask (`torch.BoolTensor` of shape `[B, K]` or `None`):
            `True` where the negative is valid; `None` means all are valid.
        beta (`float` or `torch.Tensor` broadcastable to `[B, K]`):
            Temperature β (the base β with `dynamic_beta`).
        boundary_selection (`bool` or `None`, *optional*):
            Restrict the loss to the boundary set; see [`resolve_loss_type`] for defaults and allowed combinations.
        dynamic_beta (`bool` or `None`, *optional*):
            Use the dual-margin per-negative β.
        boundary_clusters (`int`, defaults to `3`):
            Number of k-means clusters of the boundary fallback.
        beta_scale (`float`, defaults to `0.5`):
            `scale` of [`dual_margin_beta`].
        beta_margin (`float`, defaults to `2.0`):
            `margin` of [`dual_margin_beta`].
        eps (`float`, defaults to `1e-6`):
            `eps` of [`dual_margin_beta`].
        gamma (`float` or `torch.Tensor` of shape `[]` or `[B]`, defaults to `0.0`):
            NAPO margin (see [`napo_margin`]); ignored by the other losses.
        napo_use_reference (`bool`, defaults to `False`):
            NAPO on log-ratios instead of policy log-probs.

    Returns:
        [`MultiNegativeLossOutput`].

    Example:

    >>> import torch
    >>> from trl_dynamicpo.losses import compute_multi_negative_loss
    >>> policy_chosen = torch.tensor([-2.0], requires_grad=True)
    >>> policy_rejected = torch.tensor([[-1.0, -4.0, -6.0]], requires_grad=True)
    >>> ref_chosen, ref_rejected = torch.tensor([-2.5]), torch.tensor([[-1.5, -4.0, -5.0]])
    >>> out = compute_multi_negative_loss(
    ...     "dynamicpo", policy_chosen, policy_rejected, ref_chosen, ref_rejected, None, beta=1.0
    ... )
    >>> out.selected_mask  # only -1.0 >= -2.0 is a boundary negative
    tensor([[ True, False, False]])
    >>> out.losses  # -log σ(β_1 (r_w - r_1)) with r_w = r_1 = 0.5
    tensor([0.6931], grad_fn=<WhereBackward0>)
    >>> out.beta  # dual-margin β, see `dual_margin_beta`
    tensor([[0.5573, 0.8392, 1.2685]])
    >>> out.nonboundary_grad_share  # DMPO over all three would give (0.8392 + 1.2685) / 2.6650 to the easy ones
    tensor(0.7909)
    >>> out.losses.sum().backward()
    """
    loss_type, boundary_selection, dynamic_beta = resolve_loss_type(loss_type, boundary_selection, dynamic_beta)
    if loss_type not in MULTI_NEGATIVE_LOSS_TYPES:
        raise ValueError(f"loss_type={loss_type!r} does not use negatives; compute it with `sft_loss`.")
    spec = LOSS_SPECS[loss_type]
    form = spec.form
    mask = _check_shapes(policy_chosen_logps, policy_rejected_logps, mask)

    reference_free = spec.reference_free or (loss_type == "napo" and not napo_use_reference)
    if reference_free:
        chosen_scores, rejected_scores = policy_chosen_logps, policy_rejected_logps
    else:
        if ref_chosen_logps is None or ref_rejected_logps is None:
            raise ValueError(
                f"loss_type={loss_type!r} needs reference log-probs (ref_chosen_logps and ref_rejected_logps); only "
                "'mppo' and reference-free NAPO (loss_type='napo', napo_use_reference=False) accept None."
            )
        _check_shapes(ref_chosen_logps, ref_rejected_logps, mask)
        chosen_scores = policy_chosen_logps - ref_chosen_logps
        rejected_scores = policy_rejected_logps - ref_rejected_logps

    boundary_mask, fallback = dynamic_boundary_selection(
        policy_chosen_logps, policy_rejected_logps, mask, boundary_clusters
    )
    if dynamic_beta:
        beta_used = dual_margin_beta(
            policy_chosen_logps,
            policy_rejected_logps,
            mask,
            boundary_mask,
            beta,
            scale=beta_scale,
            margin=beta_margin,
            eps=eps,
        ).to(rejected_scores.dtype)
    elif isinstance(beta, torch.Tensor):
        beta_used = beta.detach().to(device=rejected_scores.device, dtype=rejected_scores.dtype)
        beta_used = beta_used.expand_as(rejected_scores).clone()
    else:
        beta_used = torch.full_like(rejected_scores, float(beta)).detach()

    selected_mask = boundary_mask if boundary_selection else mask
    extra = (gamma,) if form == "napo" else ()
    losses = spec.function(chosen_scores, rejected_scores, selected_mask, beta_used, *extra)

    # Collapse signal: how the *unselected* loss would split its gradient between boundary and easy negatives.
    grads = _negative_grad_magnitudes(form, chosen_scores, rejected_scores, mask, beta_used, gamma)
    total = grads.sum()
    nonboundary = torch.where(boundary_mask, torch.zeros_like(grads), grads).sum()
    share = torch.where(total > 0, nonboundary / torch.where(total > 0, total, torch.ones_like(total)), total)

    return MultiNegativeLossOutput(
        losses=losses,
        selected_mask=selected_mask,
        boundary_mask=boundary_mask,
        fallback=fallback,
        beta=beta_used,
        nonboundary_grad_share=share,
    )
