from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from federation.baselines import new_model
from federation.loading import EncodedData, encode_frame
from federation.model import (
    FourDimensionModel,
    load_model,
    load_trainable_weights,
    save_model,
    tensors,
    trainable_weights,
)
from federation.normalization import combine_moments, local_moments, stats_from_moments
from federation.schema import Dimension, Schema
from federation.scoring import points_from_logit, score
from federation.training import TrainConfig, mean_raw_contributions, predict_logits, train_local


@pytest.fixture(scope="module")
def data(sme_frame: pd.DataFrame, sme_schema: Schema) -> EncodedData:
    return encode_frame(sme_frame, sme_schema, "mem")


def _trained(data: EncodedData, seed: int = 3) -> FourDimensionModel:
    model = new_model(data, None, None, seed)
    train_local(model, data, TrainConfig(epochs=2), seed=seed)
    return model


def test_one_tower_per_dimension_and_protected_inputs_absent(data: EncodedData) -> None:
    model = FourDimensionModel(data.layout)
    assert model.dimensions == tuple(Dimension)
    assert set(model.towers) == {d.value for d in Dimension}
    widths = sum(t.mlp[0].in_features for t in model.towers.values())  # type: ignore[index]
    imputed = sum(data.layout.numeric_imputed)
    cats = len(data.layout.categorical) * model.config.embedding_dim
    assert widths == len(data.layout.numeric) + imputed + cats


def test_contributions_sum_exactly_to_the_logit(data: EncodedData) -> None:
    model = _trained(data)
    model.set_reference(mean_raw_contributions(model, data))
    numeric, categorical = tensors(data)
    with torch.no_grad():
        parts = model.contributions(numeric, categorical)
        logit = model(numeric, categorical)
    assert parts.shape == (len(data), 4)
    torch.testing.assert_close(parts.sum(1) + model.baseline(), logit, rtol=0, atol=1e-5)
    # relative to the federation's average borrower: contributions average to zero
    np.testing.assert_allclose(parts.mean(0).numpy(), 0.0, atol=1e-4)
    batch = score(model, data)
    np.testing.assert_allclose(batch.contributions.sum(1) + batch.baseline, batch.logit, atol=1e-9)
    np.testing.assert_allclose(batch.logit, logit.numpy(), atol=1e-5)


def test_training_is_deterministic_under_a_seed(data: EncodedData) -> None:
    a, b, c = _trained(data, 5), _trained(data, 5), _trained(data, 6)
    for wa, wb in zip(trainable_weights(a), trainable_weights(b), strict=True):
        np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(predict_logits(a, data), predict_logits(c, data))


def test_training_lowers_the_loss_and_learns(data: EncodedData) -> None:
    from federation.metrics import auc
    from federation.training import predict_proba

    model = new_model(data, None, None, 0)
    before = auc(data.label, predict_proba(model, data))
    train_local(model, data, TrainConfig(epochs=3), seed=0)
    after = auc(data.label, predict_proba(model, data))
    assert after > 0.7 and after > before


def test_fedprox_term_keeps_weights_closer_to_the_start(data: EncodedData) -> None:
    start = new_model(data, None, None, 1)
    plain, prox = new_model(data, None, None, 1), new_model(data, None, None, 1)
    train_local(plain, data, TrainConfig(epochs=1), seed=1)
    train_local(prox, data, TrainConfig(epochs=1, proximal_mu=10.0), seed=1)

    def drift(m: FourDimensionModel) -> float:
        return sum(
            float(((p - q) ** 2).sum().detach())
            for p, q in zip(m.parameters(), start.parameters(), strict=True)
        )

    assert drift(prox) < drift(plain)


def test_federated_moments_equal_pooled_statistics(data: EncodedData) -> None:
    parts = [
        data.subset(np.arange(0, 500)),
        data.subset(np.arange(500, 2200)),
        data.subset(np.arange(2200, len(data))),
    ]
    stats = stats_from_moments(
        combine_moments([local_moments(p.numeric) for p in parts], [len(p) for p in parts])
    )
    np.testing.assert_allclose(stats.mean, np.nanmean(data.numeric, axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.std, np.nanstd(data.numeric.astype(np.float64), axis=0), rtol=1e-4)


def test_weights_exchange_and_model_file_round_trip(data: EncodedData, tmp_path: Path) -> None:
    model = _trained(data)
    other = new_model(data, None, None, 99)
    load_trainable_weights(other, trainable_weights(model))
    np.testing.assert_allclose(predict_logits(other, data), predict_logits(model, data), atol=1e-6)
    save_model(model, tmp_path / "m.pt", {"schema": "sme"})
    loaded, meta = load_model(tmp_path / "m.pt")
    assert meta == {"schema": "sme"}
    np.testing.assert_allclose(predict_logits(loaded, data), predict_logits(model, data), atol=1e-6)
    with pytest.raises(ValueError, match=r"expected .* weight arrays, got 1"):
        load_trainable_weights(other, trainable_weights(model)[:1])


def test_points_scale() -> None:
    # odds 50:1 -> 600 points; doubling the odds of being good adds 20 points
    assert points_from_logit(np.array([-np.log(50)]))[0] == pytest.approx(600)
    assert points_from_logit(np.array([-np.log(100)]))[0] == pytest.approx(620)
