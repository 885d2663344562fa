from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from coordinator.score_cli import EXAMPLE_APPLICANT
from federation.datasets.synthetic import generate_sme
from federation.loading import encode_frame
from federation.metrics import auc
from federation.schema import Schema


def test_same_seed_same_data_other_seed_other_data() -> None:
    pd.testing.assert_frame_equal(generate_sme(500, seed=4), generate_sme(500, seed=4))
    assert not generate_sme(500, seed=4)["monthly_revenue"].equals(
        generate_sme(500, seed=5)["monthly_revenue"]
    )


def test_realistic_default_rate_and_known_oracle() -> None:
    frame = generate_sme(40_000, seed=1)
    assert 0.03 <= frame["default_12m"].mean() <= 0.08
    assert frame["true_pd"].between(0, 1).all()
    oracle = auc(frame["default_12m"].to_numpy(), frame["true_pd"].to_numpy())
    assert 0.7 < oracle < 0.95


def test_generated_data_satisfies_its_schema(sme_frame: pd.DataFrame, sme_schema: Schema) -> None:
    data = encode_frame(sme_frame, sme_schema, "generated")
    assert len(data) == len(sme_frame)


def test_offline_shops_have_no_platform_orders() -> None:
    frame = generate_sme(20_000, seed=2)
    share_missing = frame.groupby("industry")["platform_orders"].apply(lambda s: s.isna().mean())
    assert share_missing["ecommerce"] == 0.0
    assert share_missing["agriculture"] > 0.8


def test_risk_follows_the_dimensions() -> None:
    frame = generate_sme(40_000, seed=3)
    late = frame["bureau_delinquencies_24m"] >= 2
    assert frame.loc[late, "true_pd"].mean() > 1.5 * frame.loc[~late, "true_pd"].mean()
    punctual = frame["utility_ontime_rate"] > 0.95
    assert frame.loc[punctual, "true_pd"].mean() < frame["true_pd"].mean()
    # protected attributes do not drive the true risk
    by_gender = frame.groupby("owner_gender")["true_pd"].mean()
    assert by_gender.max() / by_gender.min() < 1.15


@pytest.mark.parametrize(
    ("rows", "rate", "message"), [(10, 0.05, "n_rows must be at least 100"), (1000, 0.5, "default_rate")]
)
def test_bad_arguments(rows: int, rate: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_sme(rows, default_rate=rate)


def test_grocery_couple_example_is_a_valid_applicant(sme_schema: Schema) -> None:

    from federation.loading import load_dataset

    path = EXAMPLE_APPLICANT
    data = load_dataset(path, sme_schema, require_label=False, min_rows=1)
    assert data.ids.tolist() == ["grocery-couple"]
    frame = pd.read_csv(path)
    row = frame.iloc[0]
    assert (
        row["months_in_business"] == 96 and row["requested_amount"] == 100_000 and row["has_collateral"] == 0
    )
    assert row["utility_history_months"] >= 60 and row["utility_ontime_rate"] == 1.0
    assert np.isnan(data.numeric[0, data.layout.numeric.index("platform_orders")])
