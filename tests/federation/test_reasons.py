"""Reason codes are what the model says: each effect is the logit change of one input moved to its baseline."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from federation.datasets.synthetic import generate_sme
from federation.hyperparameters import TrainConfig
from federation.loading import EncodedData, encode_frame
from federation.model import FourDimensionModel
from federation.normalization import local_moments, stats_from_moments
from federation.reasons import (
    LOWERS_RISK,
    MIN_EFFECT,
    RAISES_RISK,
    Reason,
    adverse_reasons,
    categorical_baselines,
    feature_effects,
    feature_names,
    reason_codes,
)
from federation.schema import ColumnType, Schema
from federation.training import mean_raw_contributions, predict_logits, train_local


@pytest.fixture(scope="module")
def model(sme_schema: Schema) -> FourDimensionModel:
    """A model trained briefly on synthetic borrowers, so effects are neither zero nor symmetric."""
    train = encode_frame(generate_sme(3000, seed=21), sme_schema, "train")
    torch.manual_seed(21)
    model = FourDimensionModel(train.layout)
    model.set_normalization(stats_from_moments(local_moments(train.numeric)))
    train_local(model, train, TrainConfig(epochs=3), seed=21)
    model.set_reference(mean_raw_contributions(model, train))
    return model


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generate_sme(300, seed=22)


@pytest.fixture(scope="module")
def data(frame: pd.DataFrame, sme_schema: Schema) -> EncodedData:
    return encode_frame(frame, sme_schema, "applicants")


@pytest.fixture(scope="module")
def effects(model: FourDimensionModel, data: EncodedData) -> np.ndarray:
    return feature_effects(model, data)


def _at_baseline(model: FourDimensionModel, data: EncodedData, feature: str, rows: np.ndarray) -> EncodedData:
    """``rows`` of ``data`` with ``feature`` moved to its population baseline, built by hand."""
    part = data.subset(rows)
    numeric, categorical = part.numeric.copy(), part.categorical.copy()
    if feature in data.layout.numeric:
        j = data.layout.numeric.index(feature)
        numeric[:, j] = model.mean[j].item()
    else:
        j = data.layout.categorical.index(feature)
        categorical[:, j] = categorical_baselines(model)[j]
    return dataclasses.replace(part, numeric=numeric, categorical=categorical)


def _logits(model: FourDimensionModel, data: EncodedData) -> np.ndarray:
    return predict_logits(model, data).astype(np.float64)


def test_every_effect_is_the_logit_change_of_moving_that_feature_to_its_baseline(
    model: FourDimensionModel, data: EncodedData, effects: np.ndarray
) -> None:
    names = feature_names(data.layout)
    assert effects.shape == (len(data), len(names)) and effects.dtype == np.float64
    rows = np.arange(len(data))
    logit = _logits(model, data)
    for j, feature in enumerate(names):
        moved = _logits(model, _at_baseline(model, data, feature, rows))
        np.testing.assert_allclose(effects[:, j], logit - moved, rtol=0, atol=1e-5, err_msg=feature)
    # trained: most features matter for someone, and effects take both signs
    assert (np.abs(effects).max(axis=0) > 0.05).sum() >= len(names) - 3
    assert (effects > 0.01).any() and (effects < -0.01).any()


def test_reported_reasons_move_the_probability_the_stated_way_by_the_stated_effect(
    model: FourDimensionModel, sme_schema: Schema, data: EncodedData
) -> None:
    reasons = reason_codes(model, sme_schema, data, limit=4)
    logit = _logits(model, data)
    pd_now = 1 / (1 + np.exp(-logit))
    checked = 0
    for feature in feature_names(data.layout):
        rows = np.array([i for i, row in enumerate(reasons) for r in row if r.feature == feature], dtype=int)
        if not len(rows):
            continue
        stated = {i: r for i in rows.tolist() for r in reasons[i] if r.feature == feature}
        moved = _logits(model, _at_baseline(model, data, feature, rows))
        for i, logit_moved in zip(rows.tolist(), moved.tolist(), strict=True):
            reason = stated[i]
            assert reason.effect == pytest.approx(logit[i] - logit_moved, abs=1e-5)
            pd_moved = 1 / (1 + np.exp(-logit_moved))
            if reason.direction == RAISES_RISK:
                assert reason.effect > 0 and pd_moved < pd_now[i]
            else:
                assert reason.direction == LOWERS_RISK and reason.effect < 0 and pd_moved > pd_now[i]
            checked += 1
    assert checked > 3 * len(data)


def test_effects_do_not_depend_on_the_batch(
    model: FourDimensionModel, data: EncodedData, effects: np.ndarray
) -> None:
    np.testing.assert_allclose(feature_effects(model, data, batch=37), effects, rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        feature_effects(model, data.subset(np.arange(5))), effects[:5], rtol=0, atol=1e-6
    )


def test_an_applicant_at_the_baseline_has_no_effect_there(
    model: FourDimensionModel, data: EncodedData, effects: np.ndarray
) -> None:
    at_mean = data.numeric.copy()
    at_mean[:, 2] = model.mean[2].item()  # cashflow_volatility
    codes = categorical_baselines(model)
    at_code = data.categorical.copy()
    at_code[:, 0] = codes[0]  # industry
    same = feature_effects(model, dataclasses.replace(data, numeric=at_mean, categorical=at_code))
    # zero but for float32 rounding (the batched products may sum a row's copies in another order
    # on another processor): under MIN_EFFECT, so never a reason
    assert np.abs(same[:, 2]).max() < MIN_EFFECT
    assert np.abs(same[:, len(data.layout.numeric)]).max() < MIN_EFFECT
    assert np.abs(effects[:, 2]).max() > 100 * MIN_EFFECT  # away from the baseline it is a reason


def test_categorical_baselines_are_real_categories_chosen_by_the_model_alone(
    model: FourDimensionModel,
) -> None:
    codes = categorical_baselines(model)
    assert len(codes) == len(model.layout.categorical)
    assert all(1 <= c < card for c, card in zip(codes, model.layout.cardinalities, strict=True))
    assert categorical_baselines(model) == codes


def _expected(row: np.ndarray, dims: list[str], limit: int, names: tuple[str, ...]) -> list[str]:
    """Reference: each dimension's strongest feature first, then the rest, by |effect|; the chosen
    ones ordered by |effect|."""
    size = np.abs(row)
    leaders = {max((j for j in range(len(row)) if dims[j] == d), key=lambda j: size[j]) for d in set(dims)}
    leaders = {j for j in leaders if size[j] >= MIN_EFFECT}
    picked = sorted(range(len(row)), key=lambda j: (j not in leaders, -size[j]))[:limit]
    picked = [j for j in picked if size[j] >= MIN_EFFECT]
    return [names[j] for j in sorted(picked, key=lambda j: (-size[j], j))]


def test_at_most_limit_reasons_ordered_by_size(
    model: FourDimensionModel, sme_schema: Schema, data: EncodedData, effects: np.ndarray
) -> None:
    names = feature_names(data.layout)
    layout = data.layout
    dims = [d.value for d in layout.numeric_dimensions + layout.categorical_dimensions]
    for limit in (0, 1, 3, 4, len(names) + 5):
        reasons = reason_codes(model, sme_schema, data, effects=effects, limit=limit)
        assert len(reasons) == len(data)
        for i, row in enumerate(reasons):
            sizes = [abs(r.effect) for r in row]
            assert len(row) <= limit and sizes == sorted(sizes, reverse=True)
            assert all(s >= MIN_EFFECT for s in sizes)
            assert [r.feature for r in row] == _expected(effects[i], dims, limit, names)
            assert all(r.effect == effects[i, names.index(r.feature)] for r in row)
    assert reason_codes(model, sme_schema, data, limit=2) == reason_codes(
        model, sme_schema, data, effects=effects, limit=2
    )


def test_ties_keep_feature_order_and_tiny_effects_are_no_reason(
    model: FourDimensionModel, sme_schema: Schema, data: EncodedData
) -> None:
    names = feature_names(data.layout)
    fake = np.zeros((len(data), len(names)))
    fake[:, [9, 3, 15]] = [0.5, -0.5, 0.5]
    fake[:, 1] = 0.9
    fake[:, 4] = 5e-7
    row = reason_codes(model, sme_schema, data, effects=fake, limit=10)[0]
    assert [r.feature for r in row] == [names[1], names[3], names[9], names[15]]
    assert [r.direction for r in row] == [RAISES_RISK, LOWERS_RISK, RAISES_RISK, RAISES_RISK]


def test_adverse_reasons_are_the_largest_risk_raising_effects(
    model: FourDimensionModel, sme_schema: Schema, data: EncodedData, effects: np.ndarray
) -> None:
    names = feature_names(data.layout)
    adverse = adverse_reasons(model, sme_schema, data, effects=effects, limit=3)
    both = reason_codes(model, sme_schema, data, effects=effects, limit=3)
    differs = 0
    for i, row in enumerate(adverse):
        assert len(row) <= 3 and all(r.direction == RAISES_RISK and r.effect >= MIN_EFFECT for r in row)
        raising = [j for j in np.argsort(-effects[i], kind="stable") if effects[i, j] >= MIN_EFFECT][:3]
        assert [r.feature for r in row] == [names[j] for j in raising]
        differs += [r.feature for r in row] != [r.feature for r in both[i] if r.direction == RAISES_RISK]
    assert differs > 0  # a decline lists 3 risks even where risk-lowering effects are larger


def test_texts_follow_the_value_and_directions_follow_the_effect(
    model: FourDimensionModel, sme_schema: Schema, data: EncodedData, effects: np.ndarray
) -> None:
    mean = model.mean.numpy()
    reasons = reason_codes(model, sme_schema, data, effects=effects, limit=len(feature_names(data.layout)))
    flipped = reason_codes(model, sme_schema, data, effects=-effects, limit=len(feature_names(data.layout)))
    seen: set[object] = set()
    for i, (row, opposite) in enumerate(zip(reasons, flipped, strict=True)):
        by_feature = {r.feature: r for r in opposite}
        for r in row:
            # the direction is the effect's sign; the words describe the value, whatever the direction
            assert r.direction == (RAISES_RISK if r.effect > 0 else LOWERS_RISK)
            assert by_feature[r.feature].text == r.text and by_feature[r.feature].direction != r.direction
            column = sme_schema.column(r.feature)
            if column.type is ColumnType.CATEGORICAL:
                assert (
                    r.value in column.categories
                    and r.text == f"{r.feature.replace('_', ' ').capitalize()}: {r.value}"
                )
                continue
            j = data.layout.numeric.index(r.feature)
            if np.isnan(data.numeric[i, j]):
                assert r.value is None and r.text == "Platform orders: not reported"
                seen.add("missing")
                continue
            high = data.numeric[i, j] > mean[j]
            assert r.text == (column.reason_high if high else column.reason_low)
            seen.add((r.direction, high))
    assert {
        "missing",
        (RAISES_RISK, True),
        (RAISES_RISK, False),
        (LOWERS_RISK, True),
        (LOWERS_RISK, False),
    } <= seen


def test_a_missing_value_of_an_imputed_column_is_a_reason_of_its_own(
    model: FourDimensionModel, sme_schema: Schema, data: EncodedData, effects: np.ndarray
) -> None:
    j = data.layout.numeric.index("platform_orders")
    missing = np.isnan(data.numeric[:, j])
    assert missing.any() and (~missing).any()
    # moving a missing value to the baseline only turns the indicator off: the effect is not zero
    assert np.abs(effects[missing, j]).min() > MIN_EFFECT
    row = int(np.flatnonzero(missing)[0])
    fake = np.zeros_like(effects)
    fake[row, j] = 0.3
    (reason,) = reason_codes(model, sme_schema, data, effects=fake)[row]
    assert reason == Reason(
        "platform_orders", "operations", RAISES_RISK, 0.3, None, "Platform orders: not reported"
    )


def test_values_are_the_applicants_own(
    model: FourDimensionModel, sme_schema: Schema, frame: pd.DataFrame, data: EncodedData, effects: np.ndarray
) -> None:
    names = feature_names(data.layout)
    reasons = reason_codes(model, sme_schema, data, effects=np.ones_like(effects), limit=len(names))
    for i in (0, 7, 123):
        for r in reasons[i]:
            given = frame.loc[i, r.feature]
            if isinstance(given, str):
                assert r.value == given
            elif pd.isna(given):
                assert r.value is None
            elif sme_schema.column(r.feature).type is ColumnType.BINARY:
                assert r.value == given and isinstance(r.value, int)
            else:  # float32 in the model: 7 significant digits, after the log1p transform too
                assert r.value == pytest.approx(
                    given, rel=1e-6 if sme_schema.column(r.feature).transform == "none" else 1e-5
                )


def test_without_plain_words_the_description_says_higher_or_lower(
    model: FourDimensionModel, sme_schema: Schema, data: EncodedData, effects: np.ndarray
) -> None:
    bare = dataclasses.replace(
        sme_schema,
        columns=tuple(dataclasses.replace(c, reason_low="", reason_high="") for c in sme_schema.columns),
        _by_name={},
    )
    j = data.layout.numeric.index("cashflow_volatility")
    fake = np.zeros_like(effects)
    fake[:, j] = -0.2
    description = sme_schema.column("cashflow_volatility").description
    texts = {row[0].text for row in reason_codes(model, bare, data, effects=fake)}
    assert texts == {f"{description}: higher than average", f"{description}: lower than average"}
    assert {row[0].text for row in reason_codes(model, sme_schema, data, effects=fake)} == {
        "Steady cash flow",
        "Irregular cash flow",
    }


def test_mismatched_inputs_are_refused(
    model: FourDimensionModel, sme_schema: Schema, data: EncodedData, effects: np.ndarray
) -> None:
    with pytest.raises(ValueError, match="are not the model's"):
        feature_effects(model, data.select(["industry", "open_loans"]))
    with pytest.raises(ValueError, match="effects have shape"):
        reason_codes(model, sme_schema, data, effects=effects[:, :3])
    with pytest.raises(ValueError, match="limit must be a non-negative integer, got -1"):
        reason_codes(model, sme_schema, data, effects=effects, limit=-1)
    with pytest.raises(ValueError, match="batch must be >= 1, got 0"):
        feature_effects(model, data, batch=0)


def test_every_sme_input_has_plain_words(sme_schema: Schema) -> None:
    for column in sme_schema.features():
        if column.type is not ColumnType.CATEGORICAL:
            assert column.reason_low and column.reason_high, column.name
    assert sme_schema.column("owner_age").group_edges == (35.0, 55.0)
