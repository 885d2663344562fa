from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from federation.errors import DataFileError, DataValidationError
from federation.loading import FeatureLayout, encode_frame, load_dataset, read_table
from federation.schema import Schema, parse_schema, resolve_schema


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
    assert "column 'open_loans': 2 value(s) not a number (first rows: 4, 8)" in message
    assert "many" not in message  # counts and rows, never an applicant's values


def test_out_of_range(sme_frame: pd.DataFrame, sme_schema: Schema, write_csv) -> None:
    frame = sme_frame.copy()
    frame.loc[5, "utility_ontime_rate"] = 1.7
    message = _problems(write_csv(frame), sme_schema)
    assert "column 'utility_ontime_rate': 1 value(s) outside [0.0, 1.0] (first rows: 6)" in message
    assert "1.7" not in message


def test_unknown_category(sme_frame: pd.DataFrame, sme_schema: Schema, write_csv) -> None:
    frame = sme_frame.copy()
    frame.loc[0, "industry"] = "piracy"
    message = _problems(write_csv(frame), sme_schema)
    assert "column 'industry': 1 value(s) not an allowed category; allowed: 'retail_grocery'" in message
    assert "(first rows: 1)" in message and "piracy" not in message


def test_label_not_binary(sme_frame: pd.DataFrame, sme_schema: Schema, write_csv) -> None:
    frame = sme_frame.copy()
    frame.loc[9, "default_12m"] = 2
    message = _problems(write_csv(frame), sme_schema)
    assert "column 'default_12m': label must be 0 or 1: 1 other value(s) (first rows: 10)" in message


def test_duplicate_ids(sme_frame: pd.DataFrame, sme_schema: Schema, write_csv) -> None:
    frame = sme_frame.copy()
    frame.loc[20, "business_id"] = frame.loc[2, "business_id"]
    message = _problems(write_csv(frame), sme_schema)
    assert "column 'business_id': 1 duplicate id(s) (first rows: 21)" in message
    assert str(frame.loc[2, "business_id"]) not in message


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
    assert "column 'has_collateral': binary column holds 1 value(s) other than 0 or 1 (first rows: 1)" in (
        _problems(write_csv(frame), sme_schema)
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


def test_a_folder_is_not_a_missing_file(sme_schema: Schema, tmp_path: Path) -> None:
    for name in ("data.csv", "data.parquet"):
        (tmp_path / name).mkdir()
        with pytest.raises(DataFileError) as err:
            load_dataset(tmp_path / name, sme_schema)
        assert str(err.value) == f"{tmp_path / name}: is a folder, not a CSV or Parquet file"


def test_a_header_name_used_twice_is_refused_not_renamed(
    sme_frame: pd.DataFrame, sme_schema: Schema, tmp_path: Path
) -> None:
    path = tmp_path / "d.csv"
    text = sme_frame.head(60).to_csv(index=False)
    path.write_text(text.replace("industry_cycle_index", "region", 1))
    with pytest.raises(DataFileError) as err:
        load_dataset(path, sme_schema)
    assert str(err.value) == f"{path}: column 'region' appears 2 times in the header"


def test_a_short_row_is_refused_even_when_it_only_loses_an_ignored_column(
    sme_frame: pd.DataFrame, sme_schema: Schema, tmp_path: Path
) -> None:
    lines = sme_frame.head(60).to_csv(index=False).splitlines()
    lines[7] = lines[7].rsplit(",", 1)[0]  # true_pd, the last column, is ignored by the schema
    path = tmp_path / "d.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFileError) as err:
        load_dataset(path, sme_schema)
    assert str(err.value) == (
        f"{path}: 1 row(s) have a different number of fields than the header's 28 "
        "(a missing or extra comma, or an unclosed quote?) (first rows: 7)"
    )


def test_twenty_thousand_unexpected_columns_make_a_short_message(
    sme_frame: pd.DataFrame, sme_schema: Schema
) -> None:
    extra = pd.DataFrame(0, index=range(60), columns=[f"c{i}" for i in range(20_000)])
    frame = pd.concat([sme_frame.head(60), extra], axis=1).drop(columns=["region"])
    with pytest.raises(DataValidationError) as err:
        encode_frame(frame, sme_schema, "wide.csv")
    message = str(err.value)
    assert len(message) < 2000
    assert message.splitlines()[1:] == [
        "  - column 'region': missing column required by schema 'sme'",
        "  - file: 20,000 unknown columns, not in schema 'sme': 'c0', 'c1', 'c2', 'c3', 'c4', 'c5', 'c6', "
        "'c7', 'c8', 'c9' ... and 19,990 more; add them to the schema or drop them",
    ]


def test_many_problems_are_listed_up_to_ten(sme_frame: pd.DataFrame, sme_schema: Schema) -> None:
    frame = sme_frame.head(60).copy()
    numeric = [c.name for c in sme_schema.features() if c.type.value == "numeric"][:14]
    frame[numeric] = -50.0  # below every range
    with pytest.raises(DataValidationError) as err:
        encode_frame(frame, sme_schema, "d.csv")
    lines = str(err.value).splitlines()
    assert lines[0] == f"d.csv: {len(err.value.problems)} problem(s) with the data:"
    assert len(err.value.problems) >= 14 and len(lines) == 12
    assert lines[-1] == f"  - ... and {len(err.value.problems) - 10} more problem(s)"


_UNBOUNDED = {
    "format_version": 1,
    "name": "t",
    "version": "1",
    "id_column": "id",
    "label_column": "y",
    "columns": [{"name": "amount", "dimension": "credit", "type": "numeric"}],
}


def test_infinity_is_refused_even_without_a_range() -> None:
    schema = parse_schema(_UNBOUNDED)
    frame = pd.DataFrame({"id": ["a", "b", "c"], "y": [0, 1, 0], "amount": [1.0, np.inf, -np.inf]})
    with pytest.raises(DataValidationError) as err:
        encode_frame(frame, schema, "d.csv", min_rows=1)
    assert "column 'amount': 2 infinite value(s) (first rows: 2, 3)" in str(err.value)


def test_a_value_too_large_for_float32_is_refused() -> None:
    schema = parse_schema(_UNBOUNDED)
    frame = pd.DataFrame({"id": ["a", "b"], "y": [0, 1], "amount": [1.0, 1e39]})
    with pytest.raises(DataValidationError) as err:
        encode_frame(frame, schema, "d.csv", min_rows=1)
    assert "column 'amount': 1 value(s) too large for the model (beyond ±3.4e38) (first rows: 2)" in str(
        err.value
    )
    assert "1e+39" not in str(err.value)


def test_dates_in_a_numeric_column_are_not_numbers() -> None:
    schema = parse_schema(_UNBOUNDED)
    frame = pd.DataFrame(
        {"id": ["a", "b"], "y": [0, 1], "amount": pd.to_datetime(["1970-01-01", "2020-01-01"])}
    )
    with pytest.raises(DataValidationError) as err:
        encode_frame(frame, schema, "d.csv", min_rows=1)
    assert "column 'amount': 2 value(s) not a number" in str(err.value)


def test_csv_and_parquet_encode_identically(
    sme_frame: pd.DataFrame, sme_schema: Schema, tmp_path: Path
) -> None:
    frame = sme_frame.copy()
    # ids with leading zeros, commas, quotes and a line break stay text, exactly
    frame.loc[:3, "business_id"] = ["007", "a,b", 'say "hi"', "two\nlines"]
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet", index=False)
    from_csv = load_dataset(tmp_path / "d.csv", sme_schema)
    from_parquet = load_dataset(tmp_path / "d.parquet", sme_schema)
    assert list(from_csv.ids[:4]) == ["007", "a,b", 'say "hi"', "two\nlines"]
    np.testing.assert_array_equal(from_csv.ids, from_parquet.ids)
    np.testing.assert_array_equal(from_csv.numeric, from_parquet.numeric)
    np.testing.assert_array_equal(from_csv.categorical, from_parquet.categorical)
    np.testing.assert_array_equal(from_csv.label, from_parquet.label)


def test_a_utf8_byte_order_mark_is_fine(sme_frame: pd.DataFrame, sme_schema: Schema, tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"\xef\xbb\xbf" + sme_frame.head(60).to_csv(index=False).encode())
    assert len(load_dataset(path, sme_schema)) == 60
    assert "business_id" in read_table(path, sme_schema).columns


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


def test_data_errors_survive_pickling_across_processes() -> None:
    import pickle

    from federation.errors import DataProblem

    for error in (
        DataFileError("d.csv", "2 row(s) have a different number of fields", (4, 9)),
        DataValidationError("d.csv", [DataProblem("a", "1 value(s) not a number", (3,))]),
    ):
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error) and again.problems == error.problems
