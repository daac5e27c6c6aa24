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
"""Benchmark: vectorized DynamicPO loss vs a per-row Python loop with scikit-learn k-means.

The naive side follows the structure of the official DynamicPO code: a Python loop over the rows of the batch, the
boundary set built from `.item()` comparisons, `sklearn.cluster.KMeans(n_clusters=3, n_init=10)` on the row's policy
log-probs when the boundary set is empty, the dual-margin β computed negative by negative, and the DMPO loss summed
term by term. Ours is `compute_multi_negative_loss("dynamicpo", ...)` (which also computes the boundary-gradient
share). Both run on the same batches, one after the other, in the same process, and the script checks that they give
the same per-row loss wherever their k-means clusters agree.

Three batch mixes are measured, because only rows whose boundary set is empty pay for k-means: no fallback row
(every row has a negative ranked above the target), about half of the rows, and every row.

Run (needs scikit-learn: `pip install scikit-learn`):

    python benchmarks/loss.py                       # B=32, K=15, CPU
    python benchmarks/loss.py --batch-size 32 --num-negatives 15 --repeats 20 --device cpu --threads 1
"""

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F

from trl_dynamicpo.losses import compute_multi_negative_loss


def naive_dynamicpo_loss(policy_w, policy_j, ref_w, ref_j, beta=1.0, scale=0.5, margin=2.0, num_clusters=3):
    """Per-row DynamicPO loss, written the way the official code is (loops, `.item()`, scikit-learn k-means)."""
    import numpy as np
    from sklearn.cluster import KMeans

    chosen_logratios = policy_w - ref_w
    rejected_logratios = policy_j - ref_j
    losses, boundaries = [], []
    for i in range(policy_w.shape[0]):
        s_w = policy_w[i].item()
        s_js = [policy_j[i, j].item() for j in range(policy_j.shape[1])]
        boundary = [j for j, s in enumerate(s_js) if s >= s_w]
        if not boundary:
            values = np.array(s_js).reshape(-1, 1)
            k = min(num_clusters, len(s_js))
            kmeans = KMeans(n_clusters=k, n_init=10, random_state=42).fit(values)
            means = [values[kmeans.labels_ == c].mean() for c in range(k)]
            boundary = np.where(kmeans.labels_ == int(np.argmax(means)))[0].tolist()
        discriminative = [j for j in range(len(s_js)) if j not in boundary] or boundary
        mean_d = sum(s_js[j] for j in discriminative) / len(discriminative)
        terms = []
        for j in boundary:
            d1, d2 = s_w - s_js[j], s_js[j] - mean_d
            beta_j = beta * (1 + scale * math.tanh((d1 - d2 - margin) / (abs(d1) + abs(d2))))
            terms.append(beta_j * (chosen_logratios[i] - rejected_logratios[i, j]) / len(boundary))
        losses.append(-F.logsigmoid(sum(terms)))
        boundaries.append(set(boundary))
    return torch.stack(losses), boundaries


def make_batch(batch_size, num_negatives, fallback_share, seed, device):
    """Log-prob-like batch where `fallback_share` of the rows have no negative at or above the target."""
    gen = torch.Generator().manual_seed(seed)
    s_w = -8 - 10 * torch.rand(batch_size, generator=gen)
    offsets = 3 * torch.randn(batch_size, num_negatives, generator=gen)
    num_fallback = round(fallback_share * batch_size)
    offsets[:num_fallback] = -0.05 - offsets[:num_fallback].abs()  # every negative below the target
    offsets[num_fallback:, 0] = offsets[num_fallback:, 0].abs()  # at least one negative at or above it
    s_j = s_w[:, None] + offsets
    ref_w = s_w + 0.5 * torch.randn(batch_size, generator=gen)
    ref_j = s_j + 0.5 * torch.randn(batch_size, num_negatives, generator=gen)
    return [t.to(device) for t in (s_w, s_j, ref_w, ref_j)]


def median_ms(fn, warmup, repeats, device):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-negatives", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats of the naive loop (ours: 20x more)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads for torch and for scikit-learn's OpenMP/BLAS pools; 1 keeps timings stable on shared "
        "machines, where tiny parallel kernels stall waiting for a busy core",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    threadpool_limits(args.threads)

    rows = []
    for share in (0.0, 0.5, 1.0):
        s_w, s_j, ref_w, ref_j = make_batch(args.batch_size, args.num_negatives, share, args.seed, device)
        mask = torch.ones_like(s_j, dtype=torch.bool)

        def ours(s_w=s_w, s_j=s_j, ref_w=ref_w, ref_j=ref_j, mask=mask):
            return compute_multi_negative_loss("dynamicpo", s_w, s_j, ref_w, ref_j, mask, 1.0)

        def naive(s_w=s_w, s_j=s_j, ref_w=ref_w, ref_j=ref_j):
            return naive_dynamicpo_loss(s_w, s_j, ref_w, ref_j)

        naive_ms = median_ms(naive, warmup=2, repeats=args.repeats, device=device)
        ours_ms = median_ms(ours, warmup=10, repeats=20 * args.repeats, device=device)

        out = ours()
        naive_losses, naive_boundaries = naive()
        agree = [
            naive_boundaries[i] == set(torch.nonzero(out.boundary_mask[i]).flatten().tolist())
            for i in range(args.batch_size)
        ]
        agree_t = torch.tensor(agree, device=device)
        max_diff = (out.losses - naive_losses).abs()[agree_t].max().item() if any(agree) else float("nan")
        assert max_diff < 1e-4, f"losses differ by {max_diff} on rows where k-means agrees"
        rows.append(
            (
                f"{int(out.fallback.sum())}/{args.batch_size}",
                naive_ms,
                ours_ms,
                naive_ms / ours_ms,
                f"{sum(agree)}/{args.batch_size}",
                max_diff,
            )
        )

    print(
        f"DynamicPO loss, B={args.batch_size}, K={args.num_negatives}, device={device.type}, "
        f"threads={args.threads}, median over {args.repeats} (naive) / {20 * args.repeats} (ours) runs"
    )
    print()
    print(
        "| fallback rows | naive loop + sklearn KMeans (ms) | ours, vectorized (ms) | speed-up | same boundary | max abs loss diff |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for fallback, naive_ms, ours_ms, speedup, agree, diff in rows:
        print(f"| {fallback} | {naive_ms:.2f} | {ours_ms:.3f} | {speedup:.0f}x | {agree} | {diff:.1e} |")


if __name__ == "__main__":
    main()
