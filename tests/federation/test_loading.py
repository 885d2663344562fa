from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from federation.errors import DataValidationError
from federation.loading import FeatureLayout, encode_frame, load_dataset
from federation.schema import Schema, resolve_schema


def _problems(path: Path, schema: Schema, **kw: object) -> str:
    with pytest.raises(DataValidationError) as err:
        load_dataset(path, schema, **kw)  # type: ignore[arg-type]
    message = str(err.value)
    assert message.startswith(str(path))
    return message


def test_valid_file_loads_into_arrays(sme_frame: pd.DataFrame, sme_schema: Schema, write_csv) -> None:
    data = load_dataset(write_csv(sme_frame), sme_schema)
    assert len(data) == len(sme_frame)
    assert data.numeric.dtype == np.float32 and data.categorical.dtype == np.int64
    assert data.label is not None and set(np.unique(data.label)) == {0.0, 1.0}
    # log1p transform of monthly revenue
    col = data.layout.numeric.index("monthly_revenue")
    np.testing.assert_allclose(data.numeric[:, col], np.log1p(sme_frame["monthly_revenue"]), rtol=1e-6)


def test_missing_column(sme_frame: pd.DataFrame, sme_schema: Schema, write_csv) -> None:
    path = write_csv(sme_frame.drop(columns=["tax_compliance_rate"]))
    assert "column 'tax_compliance_rate': missing column required by schema 'sme'" in _problems(
        path, sme_schema
    )


def test_unknown_column(sme_frame: pd.DataFrame, sme_schema: Schema, write_csv) -> None:
    path = write_csv(sme_frame.assign(shoe_size=42))
    assert "column 'shoe_size': unknown column, not in schema 'sme'" in _problems(path, sme_schema)


def test_wrong_type_names_rows_and_values(sme_frame: pd.DataFrame, sme_schema: Schema, write_csv) -> None:
    frame = sme_frame.astype({"open_loans": object})
    frame.loc[[3, 7], "open_loans"] = "many"
    message = _problems(write_csv(frame), sme_schema)
    assert "column 'open_loans': not a number: 'many', 'many' (first rows: 4, 8)" in message


def test_out_of_range(sme_frame: pd.DataFrame, sme_schema: Schema, write_csv) -> None:
    frame = sme_frame.copy()
    frame.loc[5, "utility_ontime_rate"] = 1.7
    message = _problems(write_csv(frame), sme_schema)
    assert "column 'utility_ontime_rate': 1 value(s) outside [0.0, 1.0]: 1.7 (first rows: 6)" in message


def test_unknown_category(sme_frame: pd.DataFrame, sme_schema: Schema, write_csv) -> None:
    frame = sme_frame.copy()
    frame.loc[0, "industry"] = "piracy"
    message = _problems(write_csv(frame), sme_schema)
    assert "column 'industry': unknown category ['piracy']; allowed: ['retail_grocery'" in message
    assert "(first rows: 1)" in message


def test_label_not_binary(sme_frame: pd.DataFrame, sme_schema: Schema, write_csv) -> None:
    frame = sme_frame.copy()
    frame.loc[9, "default_12m"] = 2
    message = _problems(write_csv(frame), sme_schema)
    assert "column 'default_12m': label must be 0 or 1, found 2 (first rows: 10)" in message


def test_duplicate_ids(sme_frame: pd.DataFrame, sme_schema: Schema, write_csv) -> None:
    frame = sme_frame.copy()
    frame.loc[20, "business_id"] = frame.loc[2, "business_id"]
    message = _problems(write_csv(frame), sme_schema)
    assert (
        f"column 'business_id': 1 duplicate id(s): '{frame.loc[2, 'business_id']}' (first rows: 21)"
        in message
    )


def test_too_few_rows(sme_frame: pd.DataFrame, sme_schema: Schema, write_csv) -> None:
    message = _problems(write_csv(sme_frame.head(10)), sme_schema)
    assert "file: too few rows: 10, at least 50 required" in message


def test_missing_value_where_schema_forbids_it(
    sme_frame: pd.DataFrame, sme_schema: Schema, write_csv
) -> None:
    frame = sme_frame.copy()
    frame.loc[[1, 4], "credit_utilization"] = np.nan
    message = _problems(write_csv(frame), sme_schema)
    assert (
        "column 'credit_utilization': 2 missing value(s); "
        "the schema says missing = 'error' (first rows: 2, 5)" in message
    )


def test_binary_column_holds_other_values(sme_frame: pd.DataFrame, sme_schema: Schema, write_csv) -> None:
    frame = sme_frame.copy()
    frame.loc[0, "has_collateral"] = 3
    assert "column 'has_collateral': binary column holds 3.0; expected 0 or 1" in _problems(
        write_csv(frame), sme_schema
    )


def test_every_problem_is_reported_at_once(sme_frame: pd.DataFrame, sme_schema: Schema, write_csv) -> None:
    frame = sme_frame.drop(columns=["region"])
    frame.loc[0, "default_12m"] = 5
    frame.loc[1, "tax_compliance_rate"] = -1
    message = _problems(write_csv(frame), sme_schema)
    assert "3 problem(s)" in message


def test_missing_values_are_imputed_not_dropped(
    sme_frame: pd.DataFrame, sme_schema: Schema, write_csv
) -> None:
    frame = sme_frame.copy()
    offline = frame["platform_orders"].isna()
    assert offline.any()  # offline shops have no platform orders
    data = load_dataset(write_csv(frame), sme_schema)
    assert len(data) == len(frame)
    col = data.layout.numeric.index("platform_orders")
    np.testing.assert_array_equal(np.isnan(data.numeric[:, col]), offline.to_numpy())
    assert data.layout.numeric_imputed[col]


def test_parquet_is_read(sme_frame: pd.DataFrame, sme_schema: Schema, tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    sme_frame.to_parquet(path, index=False)
    assert len(load_dataset(path, sme_schema)) == len(sme_frame)


def test_unsupported_and_absent_files(sme_schema: Schema, tmp_path: Path) -> None:
    (tmp_path / "d.xlsx").write_text("x")
    assert "unsupported file type '.xlsx'" in _problems(tmp_path / "d.xlsx", sme_schema)
    assert "file not found" in _problems(tmp_path / "absent.csv", sme_schema)


def test_protected_and_excluded_columns_never_reach_the_model(
    sme_frame: pd.DataFrame, sme_schema: Schema
) -> None:
    data = encode_frame(sme_frame, sme_schema, "mem", exclude=["industry", "revenue_growth"])
    names = set(data.layout.numeric) | set(data.layout.categorical)
    assert not names & {"owner_age", "owner_gender", "owner_marital_status", "industry", "revenue_growth"}
    full = FeatureLayout.from_schema(sme_schema)
    assert data.layout.width == full.width - 2
    assert data.numeric.shape[1] + data.categorical.shape[1] == data.layout.width


def test_scoring_input_needs_no_label(sme_frame: pd.DataFrame, sme_schema: Schema) -> None:
    data = encode_frame(
        sme_frame.drop(columns=["default_12m"]).head(1), sme_schema, "mem", require_label=False, min_rows=1
    )
    assert data.label is None and len(data) == 1


@pytest.mark.parametrize(
    ("schema", "files"),
    [
        ("uci_raw", ["UCI_Credit_Card.csv"]),
        (
            "uci_homo",
            [
                "default_credit_homo_guest.csv",
                "default_credit_homo_host_1.csv",
                "default_credit_homo_host_2.csv",
                "default_credit_homo_test.csv",
            ],
        ),
    ],
)
def test_real_uci_files_validate(fate_dir: Path, schema: str, files: list[str]) -> None:
    for name in files:
        data = load_dataset(fate_dir / name, resolve_schema(schema))
        assert len(data) in (30_000, 8_000, 6_000)
        assert data.layout.width == 21  # 23 features, SEX and MARRIAGE protected
