"""Scores come from whole columns, batch by batch, and add up."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from federation.loading import EncodedData, load_dataset
from federation.model import FourDimensionModel, save_model
from federation.normalization import local_moments, stats_from_moments
from federation.schema import Schema
from federation.scoring import score

from .model_helpers import card_for_tests


def untrained_model(data: EncodedData) -> FourDimensionModel:
    """A model with the data's layout and normalization; its weights are as initialised."""
    model = FourDimensionModel(data.layout)
    model.set_normalization(stats_from_moments(local_moments(data.numeric)))
    return model


@pytest.fixture
def applicants(sme_frame: pd.DataFrame, sme_schema: Schema, write_csv) -> EncodedData:  # type: ignore[no-untyped-def]
    return load_dataset(
        write_csv(sme_frame.drop(columns=["true_pd", "default_12m"])), sme_schema, require_label=False
    )


def test_batches_give_the_scores_of_one_batch(applicants: EncodedData) -> None:
    model = untrained_model(applicants)
    whole, batched = score(model, applicants), score(model, applicants, batch=97)
    np.testing.assert_allclose(batched.logit, whole.logit, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(batched.contributions, whole.contributions, rtol=1e-6, atol=1e-6)


def test_the_table_of_scores_matches_each_applicants_row(applicants: EncodedData) -> None:
    result = score(untrained_model(applicants), applicants)
    frame = result.frame()
    assert len(frame) == len(applicants)
    parts = frame[[f"contribution_{d}" for d in result.dimensions]].to_numpy()
    np.testing.assert_allclose(parts.sum(axis=1) + frame["baseline"], frame["logit"], atol=1e-9)
    records = result.records()
    for i in (0, 17, len(applicants) - 1):
        assert records[i] == result.row(i)
        assert frame.loc[i, "id"] == records[i]["id"]


def test_a_saved_model_scores_the_same(applicants: EncodedData, tmp_path: Path) -> None:
    from federation.model import load_model

    model = untrained_model(applicants)
    card = card_for_tests()
    save_model(model, tmp_path / "m.pt", card)
    loaded, loaded_card = load_model(tmp_path / "m.pt")
    assert loaded_card == card
    np.testing.assert_allclose(score(loaded, applicants).logit, score(model, applicants).logit, atol=1e-6)
