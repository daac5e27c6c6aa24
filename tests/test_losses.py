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
"""Tests of `trl_dynamicpo.losses`: hand-computed values, naive per-row references and brute-force k-means."""

import doctest
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from trl_dynamicpo import losses as losses_module
from trl_dynamicpo.losses import (
    LOSS_ALIASES,
    LOSS_TYPES,
    compute_multi_negative_loss,
    dmpo_loss,
    dpo_loss,
    dual_margin_beta,
    dynamic_boundary_selection,
    kmeans_1d_top_cluster,
    mppo_loss,
    napo_loss,
    napo_margin,
    resolve_loss_type,
    sdpo_loss,
)


def softplus(x: float) -> float:
    """−log σ(−x) = log(1 + e^x), in plain Python."""
    return math.log1p(math.exp(x))


def neg_logsigmoid(x: float) -> float:
    return softplus(-x)


# Every valid (loss_type, boundary_selection, dynamic_beta) combination.
CONFIGS = [
    ("dpo", False, False),
    ("sdpo", False, False),
    ("sdpo", True, False),
    ("sdpo", False, True),
    ("sdpo", True, True),
    ("dmpo", False, False),
    ("dmpo", True, False),
    ("dmpo", False, True),
    ("dmpo", True, True),
    ("dynamicpo", None, None),
    ("napo", False, False),
    ("napo", True, True),
    ("mppo", False, False),
    ("mppo", True, True),
]


# ----------------------------------------------------------------------------------------------------------------------
# Hand-computed losses
# ----------------------------------------------------------------------------------------------------------------------
CHOSEN = [0.5, -1.0]
REJECTED = [[0.0, 1.0, 3.0], [-2.0, 0.0, 0.5]]
MASK = [[True, True, False], [True, True, True]]


def _tensors(dtype=torch.float32):
    return torch.tensor(CHOSEN, dtype=dtype), torch.tensor(REJECTED, dtype=dtype), torch.tensor(MASK)


def test_dpo_loss_hand_computed():
    chosen, rejected, mask = _tensors()
    beta = 2.0
    row0 = (neg_logsigmoid(2.0 * (0.5 - 0.0)) + neg_logsigmoid(2.0 * (0.5 - 1.0))) / 2
    row1 = (neg_logsigmoid(2.0 * (-1.0 + 2.0)) + neg_logsigmoid(2.0 * (-1.0)) + neg_logsigmoid(2.0 * (-1.5))) / 3
    torch.testing.assert_close(dpo_loss(chosen, rejected, mask, beta), torch.tensor([row0, row1]))


def test_sdpo_loss_hand_computed():
    chosen, rejected, mask = _tensors()
    beta = 2.0
    row0 = softplus(math.log(math.exp(2.0 * (0.0 - 0.5)) + math.exp(2.0 * (1.0 - 0.5))))
    row1 = softplus(math.log(math.exp(2.0 * (-2.0 + 1.0)) + math.exp(2.0 * 1.0) + math.exp(2.0 * 1.5)))
    torch.testing.assert_close(sdpo_loss(chosen, rejected, mask, beta), torch.tensor([row0, row1]))


def test_dmpo_loss_hand_computed():
    chosen, rejected, mask = _tensors()
    beta = 2.0
    # −log σ(β r_w − (β/K) Σ_j r_j) over the valid negatives.
    row0 = neg_logsigmoid(2.0 * 0.5 - 2.0 / 2 * (0.0 + 1.0))
    row1 = neg_logsigmoid(2.0 * -1.0 - 2.0 / 3 * (-2.0 + 0.0 + 0.5))
    torch.testing.assert_close(dmpo_loss(chosen, rejected, mask, beta), torch.tensor([row0, row1]))


def test_losses_with_per_negative_beta_hand_computed():
    chosen, rejected, mask = _tensors()
    b = [[0.5, 1.5, 7.0], [1.0, 2.0, 3.0]]
    beta = torch.tensor(b)
    dpo = [
        (neg_logsigmoid(0.5 * 0.5) + neg_logsigmoid(1.5 * -0.5)) / 2,
        (neg_logsigmoid(1.0 * 1.0) + neg_logsigmoid(2.0 * -1.0) + neg_logsigmoid(3.0 * -1.5)) / 3,
    ]
    sdpo = [
        softplus(math.log(math.exp(0.5 * -0.5) + math.exp(1.5 * 0.5))),
        softplus(math.log(math.exp(1.0 * -1.0) + math.exp(2.0 * 1.0) + math.exp(3.0 * 1.5))),
    ]
    dmpo = [
        neg_logsigmoid((0.5 * 0.5 + 1.5 * -0.5) / 2),
        neg_logsigmoid((1.0 * 1.0 + 2.0 * -1.0 + 3.0 * -1.5) / 3),
    ]
    torch.testing.assert_close(dpo_loss(chosen, rejected, mask, beta), torch.tensor(dpo))
    torch.testing.assert_close(sdpo_loss(chosen, rejected, mask, beta), torch.tensor(sdpo))
    torch.testing.assert_close(dmpo_loss(chosen, rejected, mask, beta), torch.tensor(dmpo))


def test_napo_loss_hand_computed():
    chosen, rejected, mask = _tensors()
    beta = 2.0
    lse0 = math.log(math.exp(2.0 * (0.0 - 0.5)) + math.exp(2.0 * (1.0 - 0.5)))
    lse1 = math.log(math.exp(2.0 * (-2.0 + 1.0)) + math.exp(2.0 * 1.0) + math.exp(2.0 * 1.5))
    # A = −lse, loss = −log σ(A − γ).
    for gamma, gammas in [
        (0.7, [0.7, 0.7]),
        (torch.tensor(0.7), [0.7, 0.7]),
        (torch.tensor([0.7, -0.3]), [0.7, -0.3]),
    ]:
        expected = [neg_logsigmoid(-lse0 - gammas[0]), neg_logsigmoid(-lse1 - gammas[1])]
        torch.testing.assert_close(napo_loss(chosen, rejected, mask, beta, gamma), torch.tensor(expected))
    # γ = 0 is S-DPO.
    torch.testing.assert_close(napo_loss(chosen, rejected, mask, beta, 0.0), sdpo_loss(chosen, rejected, mask, beta))


def test_mppo_loss_hand_computed():
    chosen, rejected, mask = _tensors()
    # −log σ(Σ_j β (p_w − p_j)) on raw probabilities p = exp(s), over the valid negatives.
    row0 = neg_logsigmoid(2.0 * (math.exp(0.5) - 1.0) + 2.0 * (math.exp(0.5) - math.exp(1.0)))
    row1 = neg_logsigmoid(sum(2.0 * (math.exp(-1.0) - math.exp(x)) for x in (-2.0, 0.0, 0.5)))
    torch.testing.assert_close(mppo_loss(chosen, rejected, mask, 2.0), torch.tensor([row0, row1]))
    # β = 1 over all N negatives is the published form −log σ(N·p_w − Σ_j p_j).
    probs_w, probs_j = torch.tensor([0.5]), torch.tensor([[0.25, 0.125, 0.0625]])
    expected = neg_logsigmoid(3 * 0.5 - (0.25 + 0.125 + 0.0625))
    got = mppo_loss(probs_w.log(), probs_j.log(), torch.ones(1, 3, dtype=torch.bool))
    assert got.item() == pytest.approx(expected, abs=1e-6)
    # Per-negative β weights each difference.
    b = torch.tensor([[0.5, 1.5, 7.0], [1.0, 2.0, 3.0]])
    row0 = neg_logsigmoid(0.5 * (math.exp(0.5) - 1.0) + 1.5 * (math.exp(0.5) - math.exp(1.0)))
    row1 = neg_logsigmoid(sum(w * (math.exp(-1.0) - math.exp(x)) for w, x in zip((1.0, 2.0, 3.0), (-2.0, 0.0, 0.5))))
    torch.testing.assert_close(mppo_loss(chosen, rejected, mask, b), torch.tensor([row0, row1]))


def test_napo_margin_hand_computed():
    assert napo_margin(1.0, 0.3, 0.6, 0.4).item() == pytest.approx(1.0 * (1 - 0.3 * (0.6 - 0.4)))
    assert napo_margin(2.0, 0.5, torch.tensor(0.1), torch.tensor(0.9)).item() == pytest.approx(2.0 * (1 + 0.5 * 0.8))
    batched = napo_margin(1.0, 0.3, torch.tensor([0.2, 0.8]), 0.5)
    torch.testing.assert_close(batched, torch.tensor([1.0 + 0.3 * 0.3, 1.0 - 0.3 * 0.3]))
    assert napo_margin(1.0, 0.3, torch.tensor(0.5, dtype=torch.float64), 0.2).dtype == torch.float64


def test_sdpo_is_stable_for_large_margins():
    chosen = torch.tensor([0.0, 0.0])
    rejected = torch.tensor([[500.0, 499.0], [-500.0, -499.0]])
    out = sdpo_loss(chosen, rejected, torch.ones(2, 2, dtype=torch.bool), 1.0)
    expected = [500.0 + math.log1p(math.exp(-1.0)), math.exp(-499.0)]  # softplus(lse) for huge/tiny lse
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.tensor(expected))


@pytest.mark.parametrize("seed", range(3))
def test_single_negative_losses_coincide(seed):
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.randn(6, generator=gen, dtype=torch.float64) * 3
    rejected = torch.randn(6, 1, generator=gen, dtype=torch.float64) * 3
    mask = torch.ones(6, 1, dtype=torch.bool)
    beta = 0.7
    expected = -F.logsigmoid(beta * (chosen - rejected[:, 0]))
    for fn in (dpo_loss, sdpo_loss, dmpo_loss):
        torch.testing.assert_close(fn(chosen, rejected, mask, beta), expected)
    torch.testing.assert_close(napo_loss(chosen, rejected, mask, beta, 0.0), expected)


# ----------------------------------------------------------------------------------------------------------------------
# k-means
# ----------------------------------------------------------------------------------------------------------------------
def brute_force_top_cluster(values: list[float], num_clusters: int = 3) -> set[int]:
    """Highest-mean cluster of an optimal k-means, by enumerating every assignment of points to labels."""
    n = len(values)
    if n == 0:
        return set()
    k = min(num_clusters, n)
    best_sse, best_labels = math.inf, None
    for labels in itertools.product(range(k), repeat=n):
        sse = 0.0
        for c in range(k):
            members = [v for v, label in zip(values, labels) if label == c]
            if members:
                mean = sum(members) / len(members)
                sse += sum((v - mean) ** 2 for v in members)
        if sse < best_sse:
            best_sse, best_labels = sse, labels
    means = {}
    for c in set(best_labels):
        members = [v for v, label in zip(values, best_labels) if label == c]
        means[c] = sum(members) / len(members)
    top = max(means, key=means.get)
    return {i for i, label in enumerate(best_labels) if label == top}


def contiguous_top_cluster(values: list[float], num_clusters: int = 3) -> set[int]:
    """Same as `brute_force_top_cluster` but enumerating contiguous splits of the sorted values (fast for n ≤ 20)."""
    n = len(values)
    if n == 0:
        return set()
    k = min(num_clusters, n)
    order = sorted(range(n), key=lambda i: values[i])
    xs = [values[i] for i in order]

    def sse(segment):
        mean = sum(segment) / len(segment)
        return sum((v - mean) ** 2 for v in segment)

    best_sse, best_start = math.inf, 0
    for cuts in itertools.combinations(range(1, n), k - 1):
        bounds = (0, *cuts, n)
        total = sum(sse(xs[a:b]) for a, b in zip(bounds[:-1], bounds[1:]))
        if total < best_sse:
            best_sse, best_start = total, bounds[-2]
    return set(order[best_start:])


def _rows_to_tensors(rows: list[list[float]], masks: list[list[bool]], dtype=torch.float64):
    return torch.tensor(rows, dtype=dtype), torch.tensor(masks)


def test_kmeans_matches_brute_force_on_random_rows():
    gen = torch.Generator().manual_seed(0)
    num_checked = 0
    for num_values in range(1, 9):
        batch = 12 if num_values <= 6 else 6
        # Mixed scales: tight groups far apart and plain Gaussians, around a log-prob-like offset.
        offset = -torch.rand(batch, 1, generator=gen, dtype=torch.float64) * 60
        spread = torch.where(torch.rand(batch, 1, generator=gen) < 0.5, 0.2, 4.0).to(torch.float64)
        values = offset + torch.randn(batch, num_values, generator=gen, dtype=torch.float64) * spread
        values += torch.randint(0, 3, (batch, num_values), generator=gen) * 5.0
        mask = torch.rand(batch, num_values, generator=gen) < 0.8
        mask[0] = True
        result = kmeans_1d_top_cluster(values, mask, num_clusters=3)
        for b in range(batch):
            valid = [j for j in range(num_values) if mask[b, j]]
            expected = {valid[i] for i in brute_force_top_cluster([values[b, j].item() for j in valid])}
            got = {j for j in range(num_values) if result[b, j]}
            assert got == expected, (values[b].tolist(), mask[b].tolist())
            num_checked += 1
    assert num_checked > 60


def test_kmeans_matches_contiguous_enumeration_for_larger_rows():
    gen = torch.Generator().manual_seed(1)
    values = -30 + torch.randn(40, 20, generator=gen, dtype=torch.float64) * 5
    mask = torch.rand(40, 20, generator=gen) < 0.75
    for num_clusters in (2, 3, 4):
        result = kmeans_1d_top_cluster(values, mask, num_clusters)
        for b in range(values.shape[0]):
            valid = [j for j in range(20) if mask[b, j]]
            top = contiguous_top_cluster([values[b, j].item() for j in valid], num_clusters)
            assert {valid[i] for i in top} == {j for j in range(20) if result[b, j]}


def test_kmeans_small_rows_and_empty_rows():
    values = torch.tensor([[3.0, 1.0, 2.0], [3.0, 1.0, 2.0], [5.0, 9.0, 7.0], [1.0, 2.0, 3.0]])
    mask = torch.tensor([[False, True, False], [True, True, False], [False, False, False], [True, True, True]])
    result = kmeans_1d_top_cluster(values, mask, num_clusters=3)
    expected = torch.tensor(
        [
            [False, True, False],  # one valid value: its own cluster
            [True, False, False],  # two valid values, k capped at 2: the larger one
            [False, False, False],  # no valid value
            [False, False, True],  # three values, three clusters
        ]
    )
    assert torch.equal(result, expected)
    # num_clusters = 1: every valid value is in the (only) cluster.
    assert torch.equal(kmeans_1d_top_cluster(values, mask, num_clusters=1), mask)


def test_kmeans_tie_rules():
    # Duplicates are never split: with more clusters than distinct values both 5s are in the top cluster.
    result = kmeans_1d_top_cluster(torch.tensor([[5.0, 1.0, 5.0]]), torch.ones(1, 3, dtype=torch.bool), 3)
    assert result.tolist() == [[True, False, True]]
    # {0}{1,2} and {0,1}{2} both have SSE 0.5 with k = 2: the larger top cluster wins.
    result = kmeans_1d_top_cluster(torch.tensor([[2.0, 0.0, 1.0]]), torch.ones(1, 3, dtype=torch.bool), 2)
    assert result.tolist() == [[True, False, True]]
    # All values equal: one cluster holds everything.
    result = kmeans_1d_top_cluster(torch.full((1, 4), -3.0), torch.ones(1, 4, dtype=torch.bool), 3)
    assert result.tolist() == [[True, True, True, True]]


def test_kmeans_is_permutation_invariant_and_ignores_masked_values():
    gen = torch.Generator().manual_seed(2)
    values = torch.randn(16, 12, generator=gen)
    mask = torch.rand(16, 12, generator=gen) < 0.7
    result = kmeans_1d_top_cluster(values, mask)
    perm = torch.randperm(12, generator=gen)
    assert torch.equal(kmeans_1d_top_cluster(values[:, perm], mask[:, perm]), result[:, perm])
    garbage = torch.where(mask, values, torch.full_like(values, float("nan")))
    garbage[:, ::2] = torch.where(mask[:, ::2], garbage[:, ::2], torch.tensor(float("inf")))
    assert torch.equal(kmeans_1d_top_cluster(garbage, mask), result)


def test_kmeans_bf16_and_large_offsets():
    gen = torch.Generator().manual_seed(3)
    values = (-1000 + torch.randn(20, 8, generator=gen) * 2).to(torch.bfloat16)
    mask = torch.ones(20, 8, dtype=torch.bool)
    result = kmeans_1d_top_cluster(values, mask)
    for b in range(20):
        row = [v.item() for v in values[b].double()]
        if len(set(row)) < len(row):  # bf16 rounding may create duplicates: the tie rule applies, skip
            continue
        assert {j for j in range(8) if result[b, j]} == contiguous_top_cluster(row)


# ----------------------------------------------------------------------------------------------------------------------
# Boundary selection and dual-margin beta
# ----------------------------------------------------------------------------------------------------------------------
def test_boundary_selection_and_fallback():
    chosen = torch.tensor([-2.0, -1.0, -5.0, 0.0])
    rejected = torch.tensor(
        [
            [-1.5, -3.0, -2.0, -9.0],  # -1.5 and -2.0 (ties count) are boundary
            [-9.0, -2.0, -2.1, -8.0],  # none >= -1: k-means top cluster {-2.0, -2.1}
            [-1.0, -2.0, -3.0, -4.0],  # all boundary
            [1.0, 2.0, 3.0, 4.0],  # fully masked
        ]
    )
    mask = torch.tensor([[True] * 4, [True] * 4, [True] * 4, [False] * 4])
    boundary, fallback = dynamic_boundary_selection(chosen, rejected, mask)
    assert boundary.tolist() == [
        [True, False, True, False],
        [False, True, True, False],
        [True, True, True, True],
        [False, False, False, False],
    ]
    assert fallback.tolist() == [False, True, False, False]


def test_boundary_selection_ignores_masked_negatives():
    chosen = torch.tensor([-2.0])
    rejected = torch.tensor([[0.0, -3.0, -3.2, -10.0, -9.5]])  # the masked 0.0 would be a boundary negative
    boundary, fallback = dynamic_boundary_selection(chosen, rejected, torch.tensor([[False, True, True, True, True]]))
    assert fallback.tolist() == [True]
    # 3-means of {-3, -3.2, -10, -9.5}: {-10}, {-9.5}, {-3.2, -3} (SSE 0.02) beats {-10, -9.5}, {-3.2}, {-3} (0.125).
    assert boundary.tolist() == [[False, True, True, False, False]]


def test_dual_margin_beta_hand_computed():
    chosen = torch.tensor([-2.0, -2.0])
    rejected = torch.tensor([[-1.0, -4.0, -6.0], [-1.0, -1.5, 7.0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    boundary = torch.tensor([[True, False, False], [True, True, False]])  # row 1: all valid are boundary, D = B

    def beta_j(s_w, s_j, mean_d, beta=0.8, scale=0.3, margin=1.5, eps=1e-6):
        d1, d2 = s_w - s_j, s_j - mean_d
        return beta * (1 + scale * math.tanh((d1 - d2 - margin) / (abs(d1) + abs(d2) + eps)))

    expected = [
        [beta_j(-2, -1, -5), beta_j(-2, -4, -5), beta_j(-2, -6, -5)],
        [beta_j(-2, -1, -1.25), beta_j(-2, -1.5, -1.25), 0.8],
    ]
    got = dual_margin_beta(chosen, rejected, mask, boundary, beta=0.8, scale=0.3, margin=1.5)
    torch.testing.assert_close(got, torch.tensor(expected))


def test_dual_margin_beta_eps_avoids_zero_over_zero():
    # s_j = s_w = mean_D: the original formula is 0/0; with eps it is tanh(−margin/eps) = −1.
    ones = torch.ones(1, 1, dtype=torch.bool)
    got = dual_margin_beta(torch.tensor([-1.0]), torch.tensor([[-1.0]]), ones, ones, 2.0)
    torch.testing.assert_close(got, torch.tensor([[1.0]]))


def test_dual_margin_beta_range_and_no_gradient():
    gen = torch.Generator().manual_seed(4)
    chosen = (torch.randn(64, generator=gen) * 5).requires_grad_()
    rejected = (torch.randn(64, 10, generator=gen) * 5).requires_grad_()
    mask = torch.rand(64, 10, generator=gen) < 0.8
    boundary, _ = dynamic_boundary_selection(chosen, rejected, mask)
    for scale in (0.5, 0.9):
        beta = dual_margin_beta(chosen, rejected, mask, boundary, 2.0, scale=scale)
        assert not beta.requires_grad and beta.grad_fn is None
        assert (beta >= (1 - scale) * 2.0 - 1e-6).all() and (beta <= (1 + scale) * 2.0 + 1e-6).all()
        assert (beta[~mask] == 2.0).all()
        assert beta[mask].std() > 0  # it does vary


# ----------------------------------------------------------------------------------------------------------------------
# compute_multi_negative_loss vs a naive per-row reference
# ----------------------------------------------------------------------------------------------------------------------
def reference_row_loss(
    form, s_w, s_js, r_w, r_js, beta, boundary_selection, dynamic_beta, gamma=0.0, scale=0.5, margin=2.0, eps=1e-6
):
    """One row, written plainly: returns (loss tensor or 0.0, boundary index list, fallback, per-negative betas)."""
    n = len(s_js)
    if n == 0:
        return torch.zeros((), dtype=torch.float64), [], False, []
    s_vals = [float(s) for s in s_js]
    boundary = [j for j in range(n) if s_vals[j] >= float(s_w)]
    fallback = not boundary
    if fallback:
        boundary = sorted(contiguous_top_cluster(s_vals, 3))
    discriminative = [j for j in range(n) if j not in boundary] or boundary
    mean_d = sum(s_vals[j] for j in discriminative) / len(discriminative)
    betas = []
    for j in range(n):
        if dynamic_beta:
            d1, d2 = float(s_w) - s_vals[j], s_vals[j] - mean_d
            betas.append(beta * (1 + scale * math.tanh((d1 - d2 - margin) / (abs(d1) + abs(d2) + eps))))
        else:
            betas.append(beta)
    chosen_set = boundary if boundary_selection else list(range(n))
    if form == "dpo":
        loss = sum(-F.logsigmoid(betas[j] * (r_w - r_js[j])) for j in chosen_set) / len(chosen_set)
    elif form == "dmpo":
        loss = -F.logsigmoid(sum(betas[j] * (r_w - r_js[j]) for j in chosen_set) / len(chosen_set))
    elif form == "mppo":
        loss = -F.logsigmoid(sum(betas[j] * (torch.exp(r_w) - torch.exp(r_js[j])) for j in chosen_set))
    else:
        lse = torch.log(sum(torch.exp(betas[j] * (r_js[j] - r_w)) for j in chosen_set))
        loss = -F.logsigmoid(-lse - gamma)
    return loss, boundary, fallback, betas


def random_batch(seed: int, batch: int, num_negatives: int):
    """Rows of every kind: mixed, no boundary (fallback), all boundary, fully masked, a single valid negative."""
    gen = torch.Generator().manual_seed(seed)
    s_w = -5 - torch.rand(batch, generator=gen, dtype=torch.float64) * 20
    s_j = s_w[:, None] + torch.randn(batch, num_negatives, generator=gen, dtype=torch.float64) * 4
    kind = torch.arange(batch) % 5
    s_j[kind == 1] = s_w[kind == 1, None] - 0.1 - s_j[kind == 1].sub(s_w[kind == 1, None]).abs()
    s_j[kind == 2] = s_w[kind == 2, None] + 0.1 + s_j[kind == 2].sub(s_w[kind == 2, None]).abs()
    ref_w = s_w + torch.randn(batch, generator=gen, dtype=torch.float64)
    ref_j = s_j + torch.randn(batch, num_negatives, generator=gen, dtype=torch.float64)
    mask = torch.rand(batch, num_negatives, generator=gen) < 0.8
    mask[:, 0] = True
    if batch > 3:
        mask[3] = False  # fully masked row
    if batch > 4:
        mask[4] = False
        mask[4, -1] = True  # single valid negative
    # Garbage in invalid slots must not matter.
    s_j = torch.where(mask, s_j, torch.full_like(s_j, float("nan")))
    return s_w, s_j, ref_w, ref_j, mask


@pytest.mark.parametrize("loss_type, boundary_selection, dynamic_beta", CONFIGS)
@pytest.mark.parametrize("num_negatives", [1, 3, 8, 15])
def test_compute_matches_per_row_reference(loss_type, boundary_selection, dynamic_beta, num_negatives):
    s_w, s_j, ref_w, ref_j, mask = random_batch(seed=num_negatives, batch=13, num_negatives=num_negatives)
    beta, gamma = 0.9, 0.4
    napo = loss_type in ("napo", "mppo")  # reference-free: the losses see the policy log-probs
    policy_w = s_w.clone().requires_grad_()
    policy_j = s_j.clone().requires_grad_()
    out = compute_multi_negative_loss(
        loss_type,
        policy_w,
        policy_j,
        None if napo else ref_w,
        None if napo else ref_j,
        mask,
        beta,
        boundary_selection=boundary_selection,
        dynamic_beta=dynamic_beta,
        gamma=gamma,
    )
    out.losses.sum().backward()
    assert torch.isfinite(policy_w.grad).all() and torch.isfinite(policy_j.grad).all()

    form = "dmpo" if loss_type == "dynamicpo" else loss_type
    _, bs, db = resolve_loss_type(loss_type, boundary_selection, dynamic_beta)
    ref_policy_w = s_w.clone().requires_grad_()
    ref_policy_j = s_j.clone().requires_grad_()
    total = torch.zeros((), dtype=torch.float64)
    for b in range(s_w.shape[0]):
        valid = [k for k in range(num_negatives) if mask[b, k]]
        x_w = ref_policy_w[b] if napo else ref_policy_w[b] - ref_w[b]
        x_js = [ref_policy_j[b, k] if napo else ref_policy_j[b, k] - ref_j[b, k] for k in valid]
        loss, boundary, fallback, betas = reference_row_loss(
            form,
            s_w[b].item(),
            [s_j[b, k].item() for k in valid],
            x_w,
            x_js,
            beta,
            bs,
            db,
            gamma=gamma if loss_type == "napo" else 0.0,
        )
        torch.testing.assert_close(out.losses[b], loss.detach(), msg=f"row {b}")
        assert {valid[i] for i in boundary} == {k for k in range(num_negatives) if out.boundary_mask[b, k]}
        assert out.fallback[b].item() == fallback
        selected = {valid[i] for i in boundary} if bs else set(valid)
        assert selected == {k for k in range(num_negatives) if out.selected_mask[b, k]}
        torch.testing.assert_close(out.beta[b, valid], torch.tensor(betas, dtype=torch.float64))
        total = total + loss
    total.backward()
    torch.testing.assert_close(policy_w.grad, ref_policy_w.grad)
    torch.testing.assert_close(torch.nan_to_num(policy_j.grad), torch.nan_to_num(ref_policy_j.grad))
    assert out.losses[3] == 0  # fully masked row
    assert out.fallback[1]  # row kinds: see random_batch


def test_dynamicpo_equals_dmpo_with_both_flags():
    s_w, s_j, ref_w, ref_j, mask = random_batch(seed=7, batch=10, num_negatives=6)
    a = compute_multi_negative_loss("dynamicpo", s_w, s_j, ref_w, ref_j, mask, 1.0)
    b = compute_multi_negative_loss(
        "dmpo", s_w, s_j, ref_w, ref_j, mask, 1.0, boundary_selection=True, dynamic_beta=True
    )
    torch.testing.assert_close(a.losses, b.losses)
    torch.testing.assert_close(a.nonboundary_grad_share, b.nonboundary_grad_share)


def test_sigmoid_alias_and_napo_reference_modes():
    s_w, s_j, ref_w, ref_j, mask = random_batch(seed=8, batch=6, num_negatives=4)
    dpo = compute_multi_negative_loss("sigmoid", s_w, s_j, ref_w, ref_j, mask, 0.5)
    torch.testing.assert_close(dpo.losses, dpo_loss(s_w - ref_w, s_j - ref_j, mask, 0.5))
    gamma = torch.linspace(0, 1, 6, dtype=torch.float64)
    free = compute_multi_negative_loss("napo", s_w, s_j, None, None, mask, 0.5, gamma=gamma)
    torch.testing.assert_close(free.losses, napo_loss(s_w, s_j, mask, 0.5, gamma))
    with_ref = compute_multi_negative_loss(
        "napo", s_w, s_j, ref_w, ref_j, mask, 0.5, gamma=gamma, napo_use_reference=True
    )
    torch.testing.assert_close(with_ref.losses, napo_loss(s_w - ref_w, s_j - ref_j, mask, 0.5, gamma))
    with pytest.raises(ValueError, match="needs reference log-probs"):
        compute_multi_negative_loss("dmpo", s_w, s_j, None, None, mask, 0.5)
    with pytest.raises(ValueError, match="napo_use_reference"):
        compute_multi_negative_loss("napo", s_w, s_j, None, None, mask, 0.5, napo_use_reference=True)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        dpo_loss(torch.zeros(2), torch.zeros(2), torch.ones(2, dtype=torch.bool), 1.0)
    with pytest.raises(ValueError, match="mask must have the shape"):
        dpo_loss(torch.zeros(2), torch.zeros(2, 3), torch.ones(2, 2, dtype=torch.bool), 1.0)
    with pytest.raises(ValueError, match="Chosen values"):
        dpo_loss(torch.zeros(3), torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), 1.0)


# ----------------------------------------------------------------------------------------------------------------------
# Robustness: masked rows, garbage, gradients, dtypes, no-grad
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss_type, boundary_selection, dynamic_beta", CONFIGS)
def test_all_masked_rows_give_zero_loss_and_finite_gradients(loss_type, boundary_selection, dynamic_beta):
    policy_w = torch.tensor([-3.0, -2.0], requires_grad=True)
    # Padding slots hold garbage (inf, NaN) as a careless collator might leave them.
    policy_j = torch.tensor([[float("nan"), float("-inf")], [-1.0, float("inf")]], requires_grad=True)
    ref_w, ref_j = torch.tensor([-3.5, -2.5]), torch.tensor([[float("nan"), 0.0], [-1.2, float("nan")]])
    mask = torch.tensor([[False, False], [True, False]])
    out = compute_multi_negative_loss(
        loss_type,
        policy_w,
        policy_j,
        ref_w,
        ref_j,
        mask,
        torch.tensor(1.5) if loss_type == "dpo" else 1.5,
        boundary_selection=boundary_selection,
        dynamic_beta=dynamic_beta,
        gamma=0.2,
        napo_use_reference=True,
    )
    assert out.losses[0].item() == 0.0
    assert torch.isfinite(out.losses).all() and out.losses[1] > 0
    out.losses.sum().backward()
    assert torch.isfinite(policy_w.grad).all() and torch.isfinite(policy_j.grad).all()
    assert policy_w.grad[0] == 0 and (policy_j.grad[0] == 0).all() and policy_j.grad[1, 1] == 0
    assert out.selected_mask[0].sum() == 0 and not out.fallback[0]
    assert torch.isfinite(out.beta).all()


def test_no_valid_negative_at_all_gives_zero_share():
    out = compute_multi_negative_loss(
        "dynamicpo", torch.zeros(2), torch.zeros(2, 3), torch.zeros(2), torch.zeros(2, 3), torch.zeros(2, 3) > 0, 1.0
    )
    assert out.losses.tolist() == [0.0, 0.0]
    assert out.nonboundary_grad_share.item() == 0.0


@pytest.mark.parametrize("batch_size, num_negatives", [(3, 0), (0, 4)])
def test_empty_shapes(batch_size, num_negatives):
    policy_w = torch.zeros(batch_size, requires_grad=True)
    policy_j = torch.zeros(batch_size, num_negatives, requires_grad=True)
    ref_w, ref_j = torch.zeros(batch_size), torch.zeros(batch_size, num_negatives)
    out = compute_multi_negative_loss("dynamicpo", policy_w, policy_j, ref_w, ref_j, None, 1.0)
    assert out.losses.tolist() == [0.0] * batch_size and out.nonboundary_grad_share.item() == 0.0
    out.losses.sum().backward()
    assert policy_w.grad.tolist() == [0.0] * batch_size


@pytest.mark.parametrize("loss_type, boundary_selection, dynamic_beta", CONFIGS)
def test_bf16_inputs(loss_type, boundary_selection, dynamic_beta):
    s_w, s_j, ref_w, ref_j, mask = random_batch(seed=9, batch=10, num_negatives=7)
    s_w, s_j, ref_w, ref_j = (t.to(torch.bfloat16) for t in (s_w, s_j, ref_w, ref_j))
    policy_j = s_j.clone().requires_grad_()
    kwargs = dict(boundary_selection=boundary_selection, dynamic_beta=dynamic_beta, gamma=0.3)
    out = compute_multi_negative_loss(loss_type, s_w, policy_j, ref_w, ref_j, mask, 1.0, **kwargs)
    assert out.losses.dtype == torch.bfloat16 and out.beta.dtype == torch.bfloat16
    out.losses.sum().backward()
    assert torch.isfinite(policy_j.grad).all()
    # Same bf16 numbers in fp32: identical selection, close losses.
    fp32 = compute_multi_negative_loss(
        loss_type, s_w.float(), s_j.float(), ref_w.float(), ref_j.float(), mask, 1.0, **kwargs
    )
    assert torch.equal(out.boundary_mask, fp32.boundary_mask) and torch.equal(out.fallback, fp32.fallback)
    torch.testing.assert_close(out.losses.float(), fp32.losses, atol=0.05, rtol=0.03)


def test_beta_is_detached_in_compute():
    s_w, s_j, ref_w, ref_j, mask = random_batch(seed=10, batch=8, num_negatives=5)
    policy_w, policy_j = s_w.clone().requires_grad_(), s_j.clone().requires_grad_()
    out = compute_multi_negative_loss("dynamicpo", policy_w, policy_j, ref_w, ref_j, mask, 1.0)
    assert not out.beta.requires_grad
    grads = torch.autograd.grad(out.losses.sum(), (policy_w, policy_j))
    # Treating the returned β as a constant gives the same gradient: nothing flows through β.
    policy_w2, policy_j2 = s_w.clone().requires_grad_(), s_j.clone().requires_grad_()
    constant = dmpo_loss(policy_w2 - ref_w, policy_j2 - ref_j, out.selected_mask, out.beta).sum()
    expected = torch.autograd.grad(constant, (policy_w2, policy_j2))
    torch.testing.assert_close(grads[0], expected[0])
    torch.testing.assert_close(torch.nan_to_num(grads[1]), torch.nan_to_num(expected[1]))


def test_works_under_inference_mode():
    s_w, s_j, ref_w, ref_j, mask = random_batch(seed=11, batch=6, num_negatives=5)
    expected = compute_multi_negative_loss("dynamicpo", s_w, s_j, ref_w, ref_j, mask, 1.0)
    with torch.inference_mode():
        out = compute_multi_negative_loss("dynamicpo", s_w, s_j, ref_w, ref_j, mask, 1.0)
    torch.testing.assert_close(out.losses, expected.losses)
    torch.testing.assert_close(out.nonboundary_grad_share, expected.nonboundary_grad_share)


# ----------------------------------------------------------------------------------------------------------------------
# nonboundary_grad_share
# ----------------------------------------------------------------------------------------------------------------------
def test_nonboundary_grad_share_dmpo_scalar_beta():
    # DMPO with scalar β gives every negative of a row the same |∂L/∂r_j| = σ(−m) β / K, so the share is |D| / K.
    s_w = torch.tensor([-2.0])
    s_j = torch.tensor([[-1.0, -3.0, -4.0, -2.5, -0.5]])  # boundary: -1.0 and -0.5; D has 3 of 5
    ref_w, ref_j = torch.tensor([-2.2]), torch.tensor([[-1.3, -2.0, -4.4, -2.0, -1.0]])
    mask = torch.ones(1, 5, dtype=torch.bool)
    for boundary_selection in (False, True):  # the share ignores boundary selection
        out = compute_multi_negative_loss(
            "dmpo", s_w, s_j, ref_w, ref_j, mask, 1.0, boundary_selection=boundary_selection
        )
        assert out.boundary_mask.tolist() == [[True, False, False, False, True]]
        assert out.nonboundary_grad_share.item() == pytest.approx(3 / 5)


def test_nonboundary_grad_share_sdpo_hand_computed():
    # S-DPO: |∂L/∂r_j| ∝ softmax_j(β r_j), so the share is the softmax mass of the easy negatives.
    s_w = torch.tensor([0.0])
    s_j = torch.tensor([[1.0, -1.0, -2.0]])
    zeros_w, zeros_j = torch.zeros(1), torch.zeros(1, 3)
    out = compute_multi_negative_loss("sdpo", s_w, s_j, zeros_w, zeros_j, None, 1.0)
    expected = (math.exp(-1) + math.exp(-2)) / (math.exp(1) + math.exp(-1) + math.exp(-2))
    assert out.nonboundary_grad_share.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("loss_type, boundary_selection, dynamic_beta", CONFIGS)
def test_nonboundary_grad_share_matches_autograd(loss_type, boundary_selection, dynamic_beta):
    s_w, s_j, ref_w, ref_j, mask = random_batch(seed=12, batch=15, num_negatives=6)
    out = compute_multi_negative_loss(
        loss_type,
        s_w,
        s_j,
        ref_w,
        ref_j,
        mask,
        0.8,
        boundary_selection=boundary_selection,
        dynamic_beta=dynamic_beta,
        gamma=0.5,
        napo_use_reference=True,
    )
    # Autograd on the same loss *without* boundary selection, with the β the loss used.
    rejected = (s_j - ref_j).detach().requires_grad_()
    fn = {"dpo": dpo_loss, "sdpo": sdpo_loss, "dmpo": dmpo_loss, "dynamicpo": dmpo_loss}.get(loss_type)
    if loss_type == "mppo":  # reference-free: the gradient is with respect to the policy log-probs
        rejected = s_j.detach().requires_grad_()
        plain = mppo_loss(s_w, rejected, mask, out.beta)
    elif fn is None:
        plain = napo_loss(s_w - ref_w, rejected, mask, out.beta, 0.5)
    else:
        plain = fn(s_w - ref_w, rejected, mask, out.beta)
    (grad,) = torch.autograd.grad(plain.sum(), rejected)
    grad = torch.where(mask, grad, torch.zeros_like(grad)).abs()
    expected = grad[mask & ~out.boundary_mask].sum() / grad[mask].sum()
    torch.testing.assert_close(out.nonboundary_grad_share, expected)
    assert 0 < out.nonboundary_grad_share < 1


# ----------------------------------------------------------------------------------------------------------------------
# resolve_loss_type
# ----------------------------------------------------------------------------------------------------------------------
def test_resolve_loss_type_defaults():
    assert LOSS_TYPES == ("dpo", "sdpo", "dmpo", "dynamicpo", "napo", "mppo", "sft")
    assert LOSS_ALIASES == {"sigmoid": "dpo"}
    assert resolve_loss_type("dynamicpo") == ("dynamicpo", True, True)
    assert resolve_loss_type("dynamicpo", True, None) == ("dynamicpo", True, True)
    assert resolve_loss_type("sigmoid") == ("dpo", False, False)
    assert resolve_loss_type("dpo", False, False) == ("dpo", False, False)
    assert resolve_loss_type("dmpo") == ("dmpo", False, False)
    assert resolve_loss_type("dmpo", boundary_selection=True) == ("dmpo", True, False)
    assert resolve_loss_type("napo", dynamic_beta=True) == ("napo", False, True)
    assert resolve_loss_type("sdpo", True, True) == ("sdpo", True, True)
    assert resolve_loss_type("mppo", True, True) == ("mppo", True, True)


def test_resolve_loss_type_errors():
    with pytest.raises(ValueError, match=r"Unknown loss_type 'ipo'\. Supported loss types: 'dpo', 'sdpo'.*'sigmoid'"):
        resolve_loss_type("ipo")
    with pytest.raises(ValueError, match=r"boundary_selection=True does not apply to loss_type='dpo'.*'sdpo', 'dmpo'"):
        resolve_loss_type("dpo", boundary_selection=True)
    with pytest.raises(ValueError, match=r"dynamic_beta=True does not apply to loss_type='dpo'"):
        resolve_loss_type("sigmoid", dynamic_beta=True)
    with pytest.raises(ValueError, match=r"dynamic_beta=False contradicts it.*use loss_type='dmpo'"):
        resolve_loss_type("dynamicpo", dynamic_beta=False)
    with pytest.raises(ValueError, match=r"boundary_selection=False contradicts it"):
        resolve_loss_type("dynamicpo", boundary_selection=False)
    with pytest.raises(ValueError, match="must be True, False or None"):
        resolve_loss_type("dmpo", boundary_selection="yes")
    with pytest.raises(ValueError, match="Unknown loss_type"):
        compute_multi_negative_loss(
            "kto", torch.zeros(1), torch.zeros(1, 1), torch.zeros(1), torch.zeros(1, 1), None, 1
        )


def test_docstring_examples():
    result = doctest.testmod(losses_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 20
    assert result.failed == 0


# ----------------------------------------------------------------------------------------------------------------------
# sft
# ----------------------------------------------------------------------------------------------------------------------
def test_sft_loss_is_the_token_mean_nll():
    from trl_dynamicpo.losses import sft_loss

    logps = torch.tensor([-3.0, -1.0, -8.0], requires_grad=True)
    counts = torch.tensor([3, 1, 4])
    losses = sft_loss(logps, counts)
    # (3 + 1 + 8) / (3 + 1 + 4) = 1.5, spread over the rows so that the mean is the token mean.
    torch.testing.assert_close(losses.mean(), torch.tensor(1.5))
    losses.mean().backward()
    torch.testing.assert_close(logps.grad, torch.full((3,), -1 / 8))
    with pytest.raises(ValueError, match="same shape"):
        sft_loss(logps, counts[:2])
    with pytest.raises(ValueError, match="sft_loss"):
        compute_multi_negative_loss("sft", logps, logps[:, None], logps, logps[:, None], None, 1.0)


def test_loss_registry_drives_the_loss_types_and_the_dispatch():
    from trl_dynamicpo.losses import LOSS_SPECS, MULTI_NEGATIVE_LOSS_TYPES, loss_spec

    assert tuple(LOSS_SPECS) == LOSS_TYPES and "sft" not in MULTI_NEGATIVE_LOSS_TYPES
    assert loss_spec("sigmoid") is LOSS_SPECS["dpo"]
    with pytest.raises(ValueError, match=r"Unknown loss_type 'ipo'.*'mppo'"):
        loss_spec("ipo")
    s_w, s_j, ref_w, ref_j, mask = random_batch(seed=3, batch=6, num_negatives=4)
    for name in MULTI_NEGATIVE_LOSS_TYPES:
        spec = LOSS_SPECS[name]
        assert spec.function is not None and spec.display_name and spec.description
        out = compute_multi_negative_loss(name, s_w, s_j, ref_w, ref_j, mask, 0.7, napo_use_reference=True)
        # The registry's function on the selected negatives is what the entry point computes.
        x_w, x_j = (s_w, s_j) if spec.reference_free else (s_w - ref_w, s_j - ref_j)
        extra = (0.0,) if spec.form == "napo" else ()
        torch.testing.assert_close(out.losses, spec.function(x_w, x_j, out.selected_mask, out.beta, *extra))
