"""Scoring metrics: discrimination (AUC, KS) and calibration (Brier, ECE).

scikit-learn loads on the first AUC or KS asked for, not on import: a deployed node starts a
process for every message, and most messages compute no metric."""

from __future__ import annotations

import math

import numpy as np


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC; NaN when only one class is present."""
    if len(np.unique(y)) < 2:
        return math.nan
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p))


def ks_statistic(y: np.ndarray, p: np.ndarray) -> float:
    """Kolmogorov-Smirnov: the largest gap between the score CDFs of goods and bads."""
    if len(np.unique(y)) < 2:
        return math.nan
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    return float(np.max(tpr - fpr))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((p - y) ** 2))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Mean |observed - predicted| default rate over equal-count score bins, weighted by size."""
    order = np.argsort(p, kind="stable")
    chunks = np.array_split(order, bins)
    n = len(p)
    return float(sum(len(c) / n * abs(y[c].mean() - p[c].mean()) for c in chunks if len(c)))


def score_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUC, KS, Brier and ECE of predicted probabilities ``p`` against labels ``y``."""
    return {
        "auc": auc(y, p),
        "ks": ks_statistic(y, p),
        "brier": brier(y, p),
        "ece": expected_calibration_error(y, p),
        "default_rate": float(np.mean(y)),
        "rows": float(len(y)),
    }
