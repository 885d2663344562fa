"""Reason codes over HTTP are faithful: moving a reported feature to the population's baseline moves
the probability of default the stated way, by the stated effect; the four parts add up to the logit."""

from __future__ import annotations

import math

import numpy as np
import pytest

from federation.reasons import categorical_baselines
from federation.schema import LOGIT_CLIP, Transform, resolve_schema

from .conftest import COUPLE, body

SCHEMA = resolve_schema("sme")


def _baseline_value(model, feature: str) -> object:  # type: ignore[no-untyped-def]
    """The value a member would send for ``feature`` at the federation's baseline."""
    layout = model.layout
    if feature in layout.categorical:
        code = categorical_baselines(model)[layout.categorical.index(feature)]
        return SCHEMA.column(feature).categories[code - 1]
    z0 = float(model.mean[layout.numeric.index(feature)])
    transform = SCHEMA.column(feature).transform
    if transform is Transform.LOG1P:
        return math.expm1(z0)
    if transform is Transform.LOGIT:
        return float(np.clip(1 / (1 + math.exp(-z0)), LOGIT_CLIP, 1 - LOGIT_CLIP))
    return z0


def _applicants() -> list[dict[str, object]]:
    risky = {
        **COUPLE,
        "business_id": "risky",
        "bureau_delinquencies_24m": 4,
        "credit_utilization": 1.4,
        "utility_ontime_rate": 0.5,
        "region": "rural_west",
        "platform_orders": 300,
    }
    young = {
        **COUPLE,
        "business_id": "young",
        "months_in_business": 8,
        "cashflow_volatility": 1.2,
        "industry": "catering",
    }
    return [COUPLE, risky, young]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_every_reported_reason_moves_the_probability_the_stated_way(start_service, trained) -> None:  # type: ignore[no-untyped-def]
    service = start_service()
    headers = service.headers("national_bank")
    checked = 0
    for applicant in _applicants():
        score = service.client.post("/v1/scores", json=body(applicant), headers=headers).json()["score"]
        assert math.isclose(
            sum(score["contributions"].values()), score["logit"] - score["baseline"], abs_tol=1e-5
        )
        for reason in score["reasons"]:
            moved = {**applicant, reason["feature"]: _baseline_value(trained, reason["feature"])}
            after = service.client.post("/v1/scores", json=body(moved), headers=headers).json()["score"]
            if reason["direction"] == "raises_risk":
                assert after["probability_of_default"] < score["probability_of_default"], reason
            else:
                assert after["probability_of_default"] > score["probability_of_default"], reason
            assert math.isclose(score["logit"] - after["logit"], reason["effect"], abs_tol=1e-4), reason
            checked += 1
    assert checked >= 8
