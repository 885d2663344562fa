"""A corpus of bad inputs: data files (CSV, Parquet), schema TOML and policy TOML.

Each must be refused with the right error type and one line, as ``fedcredit`` prints
it, that names the file and the problem, and never echoes an applicant's value.
"""

from __future__ import annotations

import gzip
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from federation.datasets.synthetic import generate_sme
from federation.errors import DataFileError, DataValidationError, SchemaError
from federation.loading import load_dataset
from federation.schema import resolve_schema
from policies.cli_errors import error_line
from policies.demo_keys import EXAMPLES
from policies.documents import PolicyError, load_policy

POLICY_EXAMPLES = EXAMPLES
SECRET = "Zq93secret"  # a cell value no message may ever show


@dataclass(frozen=True)
class Case:
    kind: str  # "data", "schema" or "policy"
    build: Callable[[Path, pd.DataFrame], Path]
    error: type[Exception]
    expected: tuple[str, ...]


CASES: dict[str, Case] = {}


def case(name: str, kind: str, error: type[Exception], *expected: str) -> Callable[..., object]:
    def register(build: Callable[[Path, pd.DataFrame], Path]) -> Callable[[Path, pd.DataFrame], Path]:
        assert name not in CASES
        CASES[name] = Case(kind, build, error, expected)
        return build

    return register


def _csv(tmp: Path, frame: pd.DataFrame, name: str = "data.csv") -> Path:
    path = tmp / name
    frame.to_csv(path, index=False)
    return path


def _bytes(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def _csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def _with(frame: pd.DataFrame, column: str, row: int, value: object) -> pd.DataFrame:
    out = frame.astype({column: object})
    out.loc[row, column] = value
    return out


# --- CSV: not a CSV file at all ----------------------------------------------------------


@case("csv-folder", "data", DataFileError, "is a folder, not a CSV or Parquet file")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    (tmp / "data.csv").mkdir()
    return tmp / "data.csv"


@case("csv-absent", "data", DataFileError, "file not found")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return tmp / "absent.csv"


@case("xlsx-extension", "data", DataFileError, "unsupported file type '.xlsx'; use .csv or .parquet")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _bytes(tmp, "data.xlsx", _csv_bytes(frame))


@case("txt-extension", "data", DataFileError, "unsupported file type '.txt'")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _bytes(tmp, "data.txt", _csv_bytes(frame))


@case("no-extension", "data", DataFileError, "unsupported file type (no extension)")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _bytes(tmp, "data", _csv_bytes(frame))


@case("csv-empty", "data", DataFileError, "is empty: no header and no rows")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _bytes(tmp, "data.csv", b"")


@case("csv-blank-lines", "data", DataFileError, "is empty: no header and no rows")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _bytes(tmp, "data.csv", b"\n \n\r\n")


@case("csv-header-only", "data", DataFileError, "has a header but no data rows")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _bytes(tmp, "data.csv", (",".join(frame.columns) + "\n").encode())


@case("csv-latin1", "data", DataFileError, "is not UTF-8 text (first bad byte on line 6); save it as UTF-8")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    text = _with(frame, "region", 4, "Malm\u00f6").to_csv(index=False)
    return _bytes(tmp, "data.csv", text.encode("latin-1"))


@case("csv-cut-in-a-character", "data", DataFileError, "ends in the middle of a UTF-8 character")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _bytes(tmp, "data.csv", _csv_bytes(frame) + "\u00e9".encode()[:1])


@case("csv-truncated-mid-row", "data", DataFileError, "1 row(s) have a different number of fields")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    data = _csv_bytes(frame)
    cut = data.rindex(b"\n", 0, len(data) - 1) + 20  # 20 bytes into the last row
    return _bytes(tmp, "data.csv", data[:cut])


@case("csv-binary", "data", DataFileError, "is binary, not CSV text (a NUL byte on line 1)")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _bytes(tmp, "data.csv", bytes(range(256)) * 4)


@case("parquet-named-csv", "data", DataFileError, "is a Parquet file, not CSV text; name it .parquet")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    frame.to_parquet(tmp / "data.csv", index=False)
    return tmp / "data.csv"


@case("xlsx-named-csv", "data", DataFileError, "is a ZIP archive (an Excel workbook?), not CSV text")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("xl/workbook.xml", "<workbook/>")
    return _bytes(tmp, "data.csv", buffer.getvalue())


@case("gzip-named-csv", "data", DataFileError, "is gzip-compressed, not CSV text")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _bytes(tmp, "data.csv", gzip.compress(_csv_bytes(frame)))


@case("csv-utf16", "data", DataFileError, "is UTF-16 text; save it as UTF-8 CSV")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _bytes(tmp, "data.csv", frame.to_csv(index=False).encode("utf-16"))


# --- CSV: malformed table -----------------------------------------------------------------


def _ragged(frame: pd.DataFrame, row: int, change: Callable[[str], str]) -> bytes:
    lines = frame.to_csv(index=False).splitlines()
    lines[row] = change(lines[row])
    return ("\n".join(lines) + "\n").encode()


@case(
    "csv-short-row",
    "data",
    DataFileError,
    "1 row(s) have a different number of fields than the header's 28",
    "(first rows: 4)",
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _bytes(tmp, "data.csv", _ragged(frame, 4, lambda line: line.rsplit(",", 1)[0]))


@case(
    "csv-long-rows", "data", DataFileError, "2 row(s) have a different number of fields", "(first rows: 2, 9)"
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    data = _ragged(frame, 2, lambda line: line + f",{SECRET}")
    lines = data.decode().splitlines()
    lines[9] += ",1"
    return _bytes(tmp, "data.csv", ("\n".join(lines) + "\n").encode())


@case(
    "csv-unclosed-quote", "data", DataFileError, "row(s) have a different number of fields", "unclosed quote"
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _bytes(tmp, "data.csv", _ragged(frame, 3, lambda line: '"' + line))


@case("csv-duplicate-header", "data", DataFileError, "column 'region' appears 2 times in the header")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    data = _csv_bytes(frame).replace(b"industry_cycle_index", b"region", 1)
    return _bytes(tmp, "data.csv", data)


@case("csv-header-name-thrice", "data", DataFileError, "column 'open_loans' appears 3 times in the header")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    data = _csv_bytes(frame).replace(b"tax_compliance_rate", b"open_loans", 1)
    return _bytes(tmp, "data.csv", data.replace(b"credit_utilization", b"open_loans", 1))


@case("csv-empty-header-name", "data", DataFileError, "1 column(s) of the header have no name (position 5)")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _bytes(tmp, "data.csv", _csv_bytes(frame).replace(b"months_in_business", b"", 1))


@case("csv-saved-index", "data", DataFileError, "have no name (position 1; a saved index?")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(tmp / "data.csv", index=True)
    return tmp / "data.csv"


@case("csv-semicolons", "data", DataFileError, "is the file separated by ';'?")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    frame.to_csv(tmp / "data.csv", index=False, sep=";")
    return tmp / "data.csv"


# --- CSV: table against the schema --------------------------------------------------------


@case(
    "label-not-binary",
    "data",
    DataValidationError,
    "column 'default_12m': label must be 0 or 1: 1 other value(s)",
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _csv(tmp, _with(frame, "default_12m", 7, 7341))


@case("label-text", "data", DataValidationError, "label must be 0 or 1: 1 other value(s) (first rows: 3)")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _csv(tmp, _with(frame, "default_12m", 2, SECRET))


@case("label-missing", "data", DataValidationError, "label must be 0 or 1: 1 missing (first rows: 11)")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _csv(tmp, _with(frame, "default_12m", 10, None))


@case(
    "numeric-text",
    "data",
    DataValidationError,
    "column 'open_loans': 1 value(s) not a number (first rows: 4)",
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _csv(tmp, _with(frame, "open_loans", 3, SECRET))


@case(
    "numeric-inf",
    "data",
    DataValidationError,
    "column 'revenue_growth': 2 infinite value(s) (first rows: 1, 2)",
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _csv(tmp, _with(_with(frame, "revenue_growth", 0, "inf"), "revenue_growth", 1, "-inf"))


@case(
    "numeric-out-of-range",
    "data",
    DataValidationError,
    "column 'open_loans': 1 value(s) outside [0.0, 100.0]",
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _csv(tmp, _with(frame, "open_loans", 5, 7341))


@case(
    "numeric-dates", "data", DataValidationError, "column 'utility_history_months': 200 value(s) not a number"
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _csv(tmp, frame.assign(utility_history_months="2024-03-01 10:00:00"))


@case(
    "binary-other-value",
    "data",
    DataValidationError,
    "column 'has_collateral': binary column holds 1 value(s)",
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _csv(tmp, _with(frame, "has_collateral", 0, 7341))


@case(
    "unknown-category", "data", DataValidationError, "column 'industry': 1 value(s) not an allowed category"
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _csv(tmp, _with(frame, "industry", 0, SECRET))


@case(
    "duplicate-ids", "data", DataValidationError, "column 'business_id': 1 duplicate id(s) (first rows: 21)"
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    ids = frame["business_id"].copy()
    ids[1] = ids[20] = SECRET
    return _csv(tmp, frame.assign(business_id=ids))


@case("missing-ids", "data", DataValidationError, "column 'business_id': 1 missing id(s) (first rows: 2)")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _csv(tmp, _with(frame, "business_id", 1, None))


@case(
    "missing-column", "data", DataValidationError, "column 'region': missing column required by schema 'sme'"
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _csv(tmp, frame.drop(columns=["region"]))


@case("too-few-rows", "data", DataValidationError, "too few rows: 20, at least 50 required")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _csv(tmp, frame.head(20))


@case(
    "20k-unknown-columns",
    "data",
    DataValidationError,
    "20,000 unknown columns, not in schema 'sme': 'extra_0', 'extra_1'",
    "'extra_9' ... and 19,990 more; add them to the schema or drop them",
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    header, *rows = frame.head(60).to_csv(index=False).splitlines()
    extra_names = "".join(f",extra_{i}" for i in range(20_000))
    extra_values = ",0" * 20_000
    text = "\n".join([header + extra_names, *(row + extra_values for row in rows)]) + "\n"
    return _bytes(tmp, "data.csv", text.encode())


@case(
    "wrong-dataset",
    "data",
    DataValidationError,
    "24 columns required by schema 'sme' are missing: 'business_id', 'monthly_revenue'",
    "... and 14 more",
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _csv(tmp, pd.DataFrame({f"x{i}": range(100) for i in range(23)}).assign(y=0))


# --- Parquet ---------------------------------------------------------------------------


@case("parquet-folder", "data", DataFileError, "is a folder, not a CSV or Parquet file")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    (tmp / "data.parquet").mkdir()
    return tmp / "data.parquet"


@case(
    "csv-named-parquet",
    "data",
    DataFileError,
    "is not a Parquet file: it holds text (a CSV file? name it .csv)",
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _bytes(tmp, "data.parquet", _csv_bytes(frame))


@case("parquet-empty", "data", DataFileError, "is empty (0 bytes), not a Parquet file")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _bytes(tmp, "data.parquet", b"")


@case("parquet-binary", "data", DataFileError, "is not a Parquet file (it does not begin with PAR1)")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _bytes(tmp, "data.pq", bytes(range(256)))


@case("parquet-truncated", "data", DataFileError, "is truncated or damaged: the Parquet footer is missing")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    frame.to_parquet(tmp / "data.parquet", index=False)
    data = (tmp / "data.parquet").read_bytes()
    return _bytes(tmp, "data.parquet", data[: len(data) // 2])


@case("parquet-damaged", "data", DataFileError, "is a damaged Parquet file")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _bytes(tmp, "data.parquet", b"PAR1" + bytes(range(256)) * 8 + b"\x10\x00\x00\x00PAR1")


@case("parquet-no-rows", "data", DataFileError, "has a header but no data rows")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    frame.head(0).to_parquet(tmp / "data.parquet", index=False)
    return tmp / "data.parquet"


@case("parquet-duplicate-names", "data", DataFileError, "column 'region' appears 2 times in the header")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    names = ["region" if n == "industry_cycle_index" else n for n in table.column_names]
    pq.write_table(table.rename_columns(names), tmp / "data.parquet")
    return tmp / "data.parquet"


@case("parquet-empty-name", "data", DataFileError, "1 column(s) of the header have no name (position 2)")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    names = ["" if n == "monthly_revenue" else n for n in table.column_names]
    pq.write_table(table.rename_columns(names), tmp / "data.parquet")
    return tmp / "data.parquet"


@case("parquet-list-column", "data", DataFileError, "column 'business_id' holds Parquet type list<")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    frame.assign(business_id=[[i, i] for i in range(len(frame))]).to_parquet(tmp / "d.parquet", index=False)
    return tmp / "d.parquet"


@case(
    "parquet-label",
    "data",
    DataValidationError,
    "column 'default_12m': label must be 0 or 1: 1 other value(s)",
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    frame.assign(
        default_12m=frame["default_12m"].replace({0: 0, 1: 1}).where(frame.index != 4, 5)
    ).to_parquet(tmp / "data.parquet", index=False)
    return tmp / "data.parquet"


@case(
    "parquet-inf",
    "data",
    DataValidationError,
    "column 'cashflow_volatility': 1 infinite value(s) (first rows: 9)",
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    values = frame["cashflow_volatility"].to_numpy(copy=True)
    values[8] = np.inf
    frame.assign(cashflow_volatility=values).to_parquet(tmp / "data.parquet", index=False)
    return tmp / "data.parquet"


@case("parquet-timestamps", "data", DataValidationError, "column 'open_loans': 200 value(s) not a number")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    frame.assign(open_loans=pd.Timestamp("1970-01-01")).to_parquet(tmp / "data.parquet", index=False)
    return tmp / "data.parquet"


@case("parquet-text-in-numeric", "data", DataValidationError, "column 'open_loans': 1 value(s) not a number")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    _with(frame, "open_loans", 0, SECRET).astype({"open_loans": str}).to_parquet(
        tmp / "d.parquet", index=False
    )
    return tmp / "d.parquet"


# --- schema TOML -----------------------------------------------------------------------

SCHEMA = """format_version = 1
name = "t"
version = "1"
id_column = "id"
label_column = "y"
ignored_columns = ["note"]

[[columns]]
name = "a"
dimension = "credit"
type = "numeric"
min = 0.0
max = 10.0

[[columns]]
name = "kind"
dimension = "operations"
type = "categorical"
categories = ["x", "y"]
"""


def _schema(tmp: Path, old: str = "", new: str = "") -> Path:
    assert old in SCHEMA
    path = tmp / "schema.toml"
    path.write_text(SCHEMA.replace(old, new, 1))
    return path


@case("schema-folder", "schema", SchemaError, "is a folder, not a schema TOML file")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    (tmp / "schema.toml").mkdir()
    return tmp / "schema.toml"


@case("schema-absent", "schema", SchemaError, "no such file; expected a schema TOML file")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return tmp / "nowhere" / "schema"


@case("schema-not-utf8", "schema", SchemaError, "not UTF-8 text (byte 9); a schema is a TOML file")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _bytes(tmp, "schema.toml", b'name = "t\xe9"\n')


@case("schema-parquet-bytes", "schema", SchemaError, "not UTF-8 text")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    frame.to_parquet(tmp / "schema.toml", index=False)
    return tmp / "schema.toml"


@case("schema-bad-toml", "schema", SchemaError, "not valid TOML at line 10, column 13: invalid value")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _schema(tmp, 'dimension = "credit"', "dimension = credit")


@case("schema-empty", "schema", SchemaError, "is empty (no TOML keys); expected a schema")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _bytes(tmp, "schema.toml", b"# nothing yet\n")


@case(
    "schema-ignored-feature",
    "schema",
    SchemaError,
    ":6: column 'a' is both in ignored_columns and a feature ([[columns]] on line 8)",
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _schema(tmp, '["note"]', '["note", "a"]')


@case("schema-feature-twice", "schema", SchemaError, ":15: column(s) declared twice: ['a']")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _schema(tmp, 'name = "kind"', 'name = "a"')


@case(
    "schema-label-feature",
    "schema",
    SchemaError,
    ":8: column 'y' is the label column; it cannot also be a feature",
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _schema(tmp, 'name = "a"', 'name = "y"')


@case(
    "schema-id-feature",
    "schema",
    SchemaError,
    ":15: column 'id' is the id column; it cannot also be a feature",
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _schema(tmp, 'name = "kind"', 'name = "id"')


@case("schema-label-ignored", "schema", SchemaError, ":6: the label column 'y' cannot be in ignored_columns")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _schema(tmp, '["note"]', '["y"]')


@case("schema-ignored-twice", "schema", SchemaError, ":6: 'ignored_columns' lists ['note'] twice")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _schema(tmp, '["note"]', '["note", "note"]')


@case(
    "schema-ignored-string",
    "schema",
    SchemaError,
    "'ignored_columns' must be an array of column names, got str",
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _schema(tmp, '["note"]', '"note"')


@case("schema-id-is-label", "schema", SchemaError, ":5: id_column and label_column are both 'id'")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _schema(tmp, 'label_column = "y"', 'label_column = "id"')


@case("schema-min-above-max", "schema", SchemaError, ":8: column 'a': min 20.0 is greater than max 10.0")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _schema(tmp, "min = 0.0", "min = 20.0")


@case("schema-nan-bound", "schema", SchemaError, "column 'a'.min: nan is not a finite number")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _schema(tmp, "min = 0.0", "min = nan")


@case(
    "schema-inf-bound",
    "schema",
    SchemaError,
    "column 'a'.max: inf is not a finite number; leave the bound out",
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _schema(tmp, "max = 10.0", "max = inf")


@case("schema-no-columns", "schema", SchemaError, "'columns' must be a non-empty array of tables")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    path = tmp / "schema.toml"
    path.write_text(SCHEMA.split("[[columns]]")[0] + "columns = []\n")
    return path


@case(
    "schema-all-protected", "schema", SchemaError, "every column is protected; the model would have no input"
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    path = tmp / "schema.toml"
    path.write_text(
        SCHEMA.replace('type = "numeric"', 'type = "numeric"\nprotected = true').replace(
            'type = "categorical"', 'type = "categorical"\nprotected = true'
        )
    )
    return path


@case(
    "schema-transform-categorical",
    "schema",
    SchemaError,
    "column 'kind': 'transform' applies to numeric columns only",
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _schema(tmp, 'type = "categorical"', 'type = "categorical"\ntransform = "signed_log1p"')


@case(
    "schema-binary-range",
    "schema",
    SchemaError,
    "column 'a': a binary column is always 0 or 1; leave out 'min'/'max'",
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _schema(tmp, 'type = "numeric"', 'type = "binary"')


@case(
    "schema-float-category",
    "schema",
    SchemaError,
    "column 'kind'.categories: every category must be a string",
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _schema(tmp, '["x", "y"]', '["x", 1.5]')


@case("schema-empty-reason", "schema", SchemaError, ":8: column 'a'.reason_low: expected a non-empty string")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _schema(tmp, "max = 10.0", 'max = 10.0\nreason_low = ""')


@case(
    "schema-reason-categorical",
    "schema",
    SchemaError,
    ":15: column 'kind': 'reason_low'/'reason_high' apply to numeric and binary columns only",
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _schema(tmp, '["x", "y"]', '["x", "y"]\nreason_high = "Many"')


@case(
    "schema-edges-unprotected",
    "schema",
    SchemaError,
    ":8: column 'a': 'group_edges' applies to protected numeric columns only, this one is not protected",
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _schema(tmp, "max = 10.0", "max = 10.0\ngroup_edges = [5.0]")


@case(
    "schema-edges-categorical",
    "schema",
    SchemaError,
    ":15: column 'kind': 'group_edges' applies to protected numeric columns only, this one is categorical",
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _schema(tmp, '["x", "y"]', '["x", "y"]\nprotected = true\ngroup_edges = [1.0]')


@case(
    "schema-edges-decreasing",
    "schema",
    SchemaError,
    ":8: column 'a'.group_edges: edges must be strictly increasing, got [6.0, 4.0]",
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _schema(tmp, "max = 10.0", "max = 10.0\nprotected = true\ngroup_edges = [6.0, 4.0]")


@case(
    "schema-edges-outside",
    "schema",
    SchemaError,
    ":8: column 'a'.group_edges: edge 12.0 is above the column's max 10.0",
)
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _schema(tmp, "max = 10.0", "max = 10.0\nprotected = true\ngroup_edges = [5.0, 12.0]")


# --- policy TOML -----------------------------------------------------------------------


def _policy(tmp: Path, old: str, new: str, encoding: str = "utf-8") -> Path:
    text = (POLICY_EXAMPLES / "national_bank.toml").read_text()
    assert old in text
    return _bytes(tmp, "policy.toml", text.replace(old, new, 1).encode(encoding))


@case("policy-folder", "policy", PolicyError, "is a folder, not a policy TOML file")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    (tmp / "policy.toml").mkdir()
    return tmp / "policy.toml"


@case("policy-absent", "policy", PolicyError, "no policy file here; without a policy nothing is permitted")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return tmp / "policy.toml"


@case("policy-not-utf8", "policy", PolicyError, "not UTF-8 text (byte ", "a policy is a TOML file")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _policy(tmp, "(DEMO)", "(D\xe9MO)", encoding="latin-1")


@case("policy-bad-toml", "policy", PolicyError, "not valid TOML at line 17, column 21: invalid value")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _policy(tmp, "min_local_records = 1000", "min_local_records = lots")


@case("policy-empty", "policy", PolicyError, "is empty (no TOML keys); expected a policy")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _bytes(tmp, "policy.toml", b"\n# to do\n")


@case("policy-unknown-key", "policy", PolicyError, ":18: data.share_with_marketing: unknown key")
def _(tmp: Path, frame: pd.DataFrame) -> Path:
    return _policy(tmp, "min_local_records = 1000", "min_local_records = 1000\nshare_with_marketing = true")


# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generate_sme(200, seed=5)


def _load(kind: str, path: Path) -> object:
    if kind == "data":
        return load_dataset(path, resolve_schema("sme"))
    if kind == "schema":
        return resolve_schema(path)
    return load_policy(path)


def test_the_corpus_is_large_and_covers_every_kind() -> None:
    kinds = [c.kind for c in CASES.values()]
    assert len(CASES) >= 40
    assert kinds.count("schema") >= 10 and kinds.count("policy") >= 5
    assert sum(n.startswith("parquet") or "parquet" in n for n in CASES) >= 10


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_clear_line(name: str, tmp_path: Path, frame: pd.DataFrame) -> None:
    bad = CASES[name]
    path = bad.build(tmp_path, frame.copy())
    with pytest.raises(bad.error) as err:
        _load(bad.kind, path)
    assert type(err.value) is bad.error  # the precise kind, not merely a subclass
    line = error_line(err.value)
    assert "\n" not in line and len(line) < 2000, line
    assert line.startswith(str(path)), line  # names the file first
    for expected in bad.expected:
        assert expected in line, line
    assert SECRET not in line and "7341" not in line  # never an applicant's value
