"""The towers as numpy arrays (scoring) give the torch model's outputs (training)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from federation.hyperparameters import TrainConfig
from federation.inference import compile_towers
from federation.loading import encode_frame
from federation.model import FourDimensionModel, tensors
from federation.normalization import local_moments, stats_from_moments
from federation.reasons import feature_effects, towers_and_effects
from federation.schema import MissingPolicy, Schema
from federation.training import train_local


def test_numpy_towers_give_the_torch_towers_outputs(sme_frame: pd.DataFrame, sme_schema: Schema) -> None:
    frame = sme_frame.head(400).copy()
    for col in sme_schema.features():  # missing values wherever the schema imputes them
        if col.missing is MissingPolicy.IMPUTE:
            frame.loc[frame.index[::7], col.name] = None
    data = encode_frame(frame, sme_schema, "test")
    model = FourDimensionModel(data.layout)
    model.set_normalization(stats_from_moments(local_moments(data.numeric)))
    train_local(model, data, TrainConfig(epochs=1, batch_size=64, learning_rate=0.01), seed=1)
    model.eval()
    with torch.no_grad():
        expected = model.raw_contributions(*tensors(data)).numpy()

    compiled = compile_towers(model)
    towers, effects = towers_and_effects(model, data, compiled=compiled)

    assert np.isnan(data.numeric).any()
    np.testing.assert_allclose(towers, expected, rtol=0, atol=1e-5)
    # the effects are the same whether the weights were compiled here or handed in
    np.testing.assert_allclose(effects, feature_effects(model, data), rtol=0, atol=1e-12)
    # and one applicant at a time gives what the whole batch gives
    one, _ = towers_and_effects(model, data.subset(np.array([3])), compiled=compiled)
    np.testing.assert_allclose(one[0], towers[3], rtol=0, atol=1e-6)


@pytest.mark.parametrize("drop", ["categorical", "scenario"])
def test_stacked_towers_fit_any_layout(sme_frame: pd.DataFrame, sme_schema: Schema, drop: str) -> None:
    """Towers of unequal widths, with no categorical input at all or one dimension fewer, run
    stacked and padded to the torch model's outputs, and each effect is that of moving the one
    feature to its baseline."""
    features = sme_schema.features()
    if drop == "categorical":
        exclude = [c.name for c in features if not c.is_numeric_input]
    else:
        exclude = [c.name for c in features if c.dimension.value == drop]
    data = encode_frame(sme_frame.head(200), sme_schema, "test", exclude=exclude)
    if drop == "categorical":
        assert data.layout.categorical == ()
    else:
        assert drop not in {d.value for d in data.layout.dimensions}
    model = FourDimensionModel(data.layout)
    model.set_normalization(stats_from_moments(local_moments(data.numeric)))
    model.eval()
    with torch.no_grad():
        expected = model.raw_contributions(*tensors(data)).numpy()
        towers, effects = towers_and_effects(model, data)
        np.testing.assert_allclose(towers, expected, rtol=0, atol=1e-5)
        j = 0  # the first numeric feature at its baseline: z and missing indicator 0, i.e. the mean
        moved = data.subset(np.arange(len(data)))
        moved.numeric[:, j] = model.mean[j].item()
        logit = model.raw_contributions(*tensors(data)).numpy().sum(axis=1)
        at_baseline = model.raw_contributions(*tensors(moved)).numpy().sum(axis=1)
    np.testing.assert_allclose(effects[:, j], logit - at_baseline, rtol=0, atol=1e-5)
