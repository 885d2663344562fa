from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks.research.baselines import new_model
from federation.hyperparameters import TrainConfig
from federation.loading import encode_frame
from federation.metrics import auc
from federation.model import trainable_weights
from federation.privacy import epsilon_spent, plan_dp, train_local_dp
from federation.schema import Schema
from federation.training import predict_proba


def test_plan_spends_exactly_the_target_over_the_run() -> None:
    plan = plan_dp(3.0, 1e-5, rows=8000, batch_size=256, epochs_per_round=1, rounds=30)
    assert plan.sample_rate == pytest.approx(256 / 8000)
    assert plan.steps_per_round == 32 and plan.total_steps == 960
    assert epsilon_spent(plan, 30) == pytest.approx(3.0, abs=0.02)
    assert epsilon_spent(plan, 10) < epsilon_spent(plan, 20) < epsilon_spent(plan, 30)
    assert epsilon_spent(plan, 0) == 0.0
    tighter = plan_dp(1.0, 1e-5, rows=8000, batch_size=256, epochs_per_round=1, rounds=30)
    assert tighter.noise_multiplier > plan.noise_multiplier


@pytest.mark.parametrize(
    ("eps", "delta", "message"),
    [(0.0, 1e-5, "epsilon must be finite and > 0"), (float("inf"), 1e-5, "epsilon"), (3.0, 1.0, "delta")],
)
def test_bad_targets(eps: float, delta: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_dp(eps, delta, rows=100, batch_size=10, epochs_per_round=1, rounds=1)


def test_dp_sgd_trains_and_changes_only_weights(sme_frame: pd.DataFrame, sme_schema: Schema) -> None:
    data = encode_frame(
        pd.concat([sme_frame] * 3, ignore_index=True).assign(
            business_id=lambda f: [f"b{i}" for i in range(len(f))]
        ),
        sme_schema,
        "mem",
    )
    model = new_model(data, None, None, 0)
    before = [w.copy() for w in trainable_weights(model)]
    plan = plan_dp(8.0, 1e-5, rows=len(data), batch_size=512, epochs_per_round=1, rounds=5)
    for r in range(5):
        loss = train_local_dp(model, data, TrainConfig(batch_size=512, learning_rate=1e-2), plan, seed=r)
        assert np.isfinite(loss)
    assert any(not np.array_equal(a, b) for a, b in zip(before, trainable_weights(model), strict=True))
    assert not any(name.startswith("_module") for name in model.state_dict())  # Opacus wrapper removed
    assert auc(data.label, predict_proba(model, data)) > 0.65
