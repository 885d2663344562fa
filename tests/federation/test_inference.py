"""The towers as numpy arrays (scoring) give the torch model's outputs (training)."""

from __future__ import annotations

import numpy as np
import pandas as pd
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
