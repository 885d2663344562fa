"""Normalization statistics computed federatedly from per-institution moments.

Each institution sends ``[count/n, sum/n, sumsq/n]`` per numeric column, with
``n`` its row count as the aggregation weight. A weighted average of these
(FedAvg, or the secure sum SecAgg+ computes) equals the pooled
``[count, sum, sumsq] / N``, so the pooled mean and standard deviation follow
exactly without any row leaving its institution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_STD = 1e-6


@dataclass(frozen=True)
class NormStats:
    mean: np.ndarray
    std: np.ndarray


def local_moments(numeric: np.ndarray) -> np.ndarray:
    """Shape (3, columns): share of present values, mean and mean square over all rows."""
    n = max(len(numeric), 1)
    present = ~np.isnan(numeric)
    values = np.where(present, numeric, 0.0).astype(np.float64)
    return np.stack([present.sum(0) / n, values.sum(0) / n, (values**2).sum(0) / n])


def combine_moments(moments: list[np.ndarray], weights: list[int]) -> np.ndarray:
    """Row-count-weighted average of local moments (what FedAvg computes)."""
    w = np.asarray(weights, dtype=np.float64)
    return np.tensordot(w / w.sum(), np.stack(moments), axes=1)


def stats_from_moments(moments: np.ndarray) -> NormStats:
    count, total, total_sq = moments
    safe = np.maximum(count, 1e-12)
    mean = np.where(count > 0, total / safe, 0.0)
    var = np.maximum(np.where(count > 0, total_sq / safe - mean**2, 1.0), 0.0)
    std = np.sqrt(var)
    std = np.where(std < MIN_STD, 1.0, std)
    return NormStats(mean=mean.astype(np.float32), std=std.astype(np.float32))
