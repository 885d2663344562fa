from __future__ import annotations

import math

import numpy as np
import pytest

from federation.metrics import auc, brier, expected_calibration_error, ks_statistic, score_metrics


def test_perfect_and_inverted_ranking() -> None:
    y = np.array([0, 0, 1, 1])
    assert auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert ks_statistic(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert math.isnan(auc(np.zeros(4), np.arange(4.0)))


def test_brier_and_calibration() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 200_000)
    y = (rng.random(200_000) < p).astype(float)
    assert expected_calibration_error(y, p) < 0.01
    assert expected_calibration_error(y, np.clip(p + 0.2, 0, 1)) > 0.1
    assert brier(np.array([1.0, 0.0]), np.array([1.0, 0.0])) == 0.0
    assert brier(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == 1.0


def test_score_metrics_keys() -> None:
    m = score_metrics(np.array([0, 1, 0, 1.0]), np.array([0.2, 0.7, 0.4, 0.6]))
    assert set(m) == {"auc", "ks", "brier", "ece", "default_rate", "rows"}
    assert m["auc"] == pytest.approx(1.0)
