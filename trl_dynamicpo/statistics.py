"""Bootstrap confidence intervals for per-prompt recommendation metrics, alone and paired.

Every model of a study is scored on the same prompts, so the honest comparison between two models is *paired*: the
prompts are resampled once and both models' metrics are recomputed on the same resample. The paired interval of the
difference is much narrower than the two separate intervals would suggest, because most of the prompt-to-prompt
variance is shared.

Per-prompt values come from [`~trl_dynamicpo.evaluation.target_ranks`]: `hits_at(ranks, 1)` for HR@1 and
`ndcg_at(ranks, 10)` for NDCG@10; the mean of the per-prompt values is the metric.

Example:

```python
>>> import numpy as np
>>> from trl_dynamicpo.statistics import bootstrap_ci, paired_bootstrap_ci
>>> a = np.array([1.0, 0.0, 1.0, 1.0]); b = np.array([0.0, 0.0, 1.0, 0.0])
>>> mean, (lo, hi) = bootstrap_ci(a, num_resamples=1000, seed=0)
>>> diff, (dlo, dhi) = paired_bootstrap_ci(a, b, num_resamples=1000, seed=0)
```
"""

from __future__ import annotations

import numpy as np


def hits_at(ranks, k: int) -> np.ndarray:
    """Per-prompt HR@k: 1.0 where the target's rank is at most `k`."""
    return (np.asarray(ranks) <= k).astype(np.float64)


def ndcg_at(ranks, k: int) -> np.ndarray:
    """Per-prompt NDCG@k with one relevant item: `1 / log2(rank + 1)` if `rank <= k`, else 0."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)


def _resample_index(n: int, num_resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(num_resamples, n))


def _check(values, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"`{name}` must be a non-empty 1-D array of per-prompt values, got shape {values.shape}.")
    if not np.isfinite(values).all():
        raise ValueError(f"`{name}` holds non-finite values.")
    return values


def bootstrap_ci(
    values, num_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """Mean of per-prompt `values` and its percentile bootstrap interval.

    Args:
        values (`array-like`): One value per prompt (e.g. [`hits_at`]`(ranks, 1)`).
        num_resamples (`int`, defaults to `2000`): Bootstrap resamples of the prompts.
        confidence (`float`, defaults to `0.95`): Coverage of the interval.
        seed (`int`, defaults to `0`): Seed of the resampling (the same seed resamples the same prompts).

    Returns:
        `(mean, (low, high))`.
    """
    values = _check(values, "values")
    index = _resample_index(len(values), num_resamples, seed)
    means = values[index].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(values.mean()), (float(low), float(high))


def paired_bootstrap_ci(
    values_a, values_b, num_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """Mean difference `a − b` of two models' per-prompt values on the same prompts, with its paired interval.

    Both models are resampled with the same prompt indices. An interval that excludes 0 means the difference holds at
    that confidence on this prompt set.

    Args:
        values_a, values_b (`array-like`): Per-prompt values of the two models, aligned by prompt.
        num_resamples (`int`, defaults to `2000`), confidence (`float`, defaults to `0.95`), seed (`int`):
            As in [`bootstrap_ci`].

    Returns:
        `(mean_difference, (low, high))`.
    """
    a, b = _check(values_a, "values_a"), _check(values_b, "values_b")
    if a.shape != b.shape:
        raise ValueError(f"Paired values must have the same length, got {a.shape} and {b.shape}.")
    return bootstrap_ci(a - b, num_resamples=num_resamples, confidence=confidence, seed=seed)
