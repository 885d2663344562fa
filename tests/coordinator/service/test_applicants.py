"""Applicants sent to the service become the same model inputs as the same rows read from a file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from coordinator.service.applicants import encode_applicants, request_models
from federation.loading import FeatureLayout, encode_frame
from federation.schema import MissingPolicy, Schema

from .conftest import COUPLE


@pytest.mark.parametrize("rows", [1, 2, 500])  # 1: no missing value; 2, 500: some
def test_applicants_encode_as_their_rows_do_from_a_file(
    sme_frame: pd.DataFrame, sme_schema: Schema, rows: int
) -> None:
    frame = sme_frame.head(max(rows, 60)).copy()  # a file holds at least 50 rows
    for col in sme_schema.features():  # missing values wherever the schema imputes them
        if col.missing is MissingPolicy.IMPUTE:
            frame.loc[frame.index[-1 if rows == 1 else 1], col.name] = None
    from_file = encode_frame(frame, sme_schema, "test").subset(np.arange(rows))
    keep = [sme_schema.id_column, *(c.name for c in sme_schema.features())]
    head = frame[keep].head(rows)
    sent = head.astype(object).where(head.notna(), None).to_dict(orient="records")
    single, _ = request_models(sme_schema, 10_000)
    applicants = [
        single.model_validate({"purpose": "credit_underwriting", "applicant": a}).applicant  # type: ignore[attr-defined]
        for a in sent
    ]

    encoded = encode_applicants([a.__dict__ for a in applicants], sme_schema, from_file.layout)

    assert encoded.numeric.dtype == np.float32 and encoded.categorical.dtype == np.int64
    np.testing.assert_array_equal(encoded.numeric, from_file.numeric)  # NaN where missing, both
    np.testing.assert_array_equal(encoded.categorical, from_file.categorical)
    assert encoded.ids.tolist() == [str(i) for i in from_file.ids.tolist()]


def test_the_couple_encodes_with_their_missing_platform_orders(sme_schema: Schema) -> None:
    single, _ = request_models(sme_schema, 10)
    applicant = single.model_validate({"purpose": "credit_underwriting", "applicant": COUPLE}).applicant  # type: ignore[attr-defined]
    layout = FeatureLayout.from_schema(sme_schema)

    encoded = encode_applicants([applicant.__dict__], sme_schema, layout)

    column = layout.numeric.index("platform_orders")
    assert np.isnan(encoded.numeric[0, column])
    assert np.count_nonzero(np.isnan(encoded.numeric)) == 1
    assert encoded.ids.tolist() == ["grocery-couple"]
