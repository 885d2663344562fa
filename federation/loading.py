"""Read a dataset (CSV or Parquet), check it against its schema, encode it as arrays.

Every check runs column-wise on whole arrays; all problems are collected and
reported together, each with its column, a count and the first offending rows
(counted from 1, the header excluded), never a cell's value: data files hold
applicants' data. Every list in a message is bounded, however wide the file.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from federation.errors import DataFileError, DataProblem, DataValidationError, FedCreditError, short_name
from federation.schema import LOGIT_CLIP, Column, ColumnType, Dimension, MissingPolicy, Schema, Transform

MAX_ROWS_SHOWN = 5
MAX_NAMES_SHOWN = 10  # column names (or categories) listed in one problem, then "... and N more"
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class FeatureLayout:
    """The model's inputs: which columns, in which order, feeding which dimension."""

    numeric: tuple[str, ...]
    numeric_dimensions: tuple[Dimension, ...]
    numeric_imputed: tuple[bool, ...]
    categorical: tuple[str, ...]
    categorical_dimensions: tuple[Dimension, ...]
    cardinalities: tuple[int, ...]  # category count + 1: code 0 means missing

    @classmethod
    def from_schema(cls, schema: Schema, exclude: Collection[str] = ()) -> FeatureLayout:
        """Layout of the schema's non-protected features, minus ``exclude``."""
        cols = [c for c in schema.features() if c.name not in exclude]
        num = [c for c in cols if c.is_numeric_input]
        cat = [c for c in cols if not c.is_numeric_input]
        return cls(
            numeric=tuple(c.name for c in num),
            numeric_dimensions=tuple(c.dimension for c in num),
            numeric_imputed=tuple(c.missing is MissingPolicy.IMPUTE for c in num),
            categorical=tuple(c.name for c in cat),
            categorical_dimensions=tuple(c.dimension for c in cat),
            cardinalities=tuple(len(c.categories) + 1 for c in cat),
        )

    def restrict(self, features: Collection[str]) -> FeatureLayout:
        """The same layout keeping only ``features`` (order unchanged)."""
        unknown = sorted(set(features) - set(self.numeric) - set(self.categorical))
        if unknown:
            raise ValueError(
                f"feature(s) {unknown} are not model inputs here (unknown, protected or excluded)"
            )
        keep_n = [i for i, n in enumerate(self.numeric) if n in features]
        keep_c = [i for i, n in enumerate(self.categorical) if n in features]
        return FeatureLayout(
            numeric=tuple(self.numeric[i] for i in keep_n),
            numeric_dimensions=tuple(self.numeric_dimensions[i] for i in keep_n),
            numeric_imputed=tuple(self.numeric_imputed[i] for i in keep_n),
            categorical=tuple(self.categorical[i] for i in keep_c),
            categorical_dimensions=tuple(self.categorical_dimensions[i] for i in keep_c),
            cardinalities=tuple(self.cardinalities[i] for i in keep_c),
        )

    def features(self) -> tuple[tuple[str, str], ...]:
        """(column, dimension) of every input: what a training request lists."""
        return tuple(zip(self.numeric, (d.value for d in self.numeric_dimensions), strict=True)) + tuple(
            zip(self.categorical, (d.value for d in self.categorical_dimensions), strict=True)
        )

    @property
    def dimensions(self) -> tuple[Dimension, ...]:
        """Non-empty dimensions, in the canonical order."""
        used = set(self.numeric_dimensions) | set(self.categorical_dimensions)
        return tuple(d for d in Dimension if d in used)

    @property
    def width(self) -> int:
        return len(self.numeric) + len(self.categorical)

    def to_dict(self) -> dict[str, Any]:
        return {
            "numeric": list(self.numeric),
            "numeric_dimensions": [d.value for d in self.numeric_dimensions],
            "numeric_imputed": list(self.numeric_imputed),
            "categorical": list(self.categorical),
            "categorical_dimensions": [d.value for d in self.categorical_dimensions],
            "cardinalities": list(self.cardinalities),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FeatureLayout:
        return cls(
            numeric=tuple(raw["numeric"]),
            numeric_dimensions=tuple(Dimension(d) for d in raw["numeric_dimensions"]),
            numeric_imputed=tuple(bool(b) for b in raw["numeric_imputed"]),
            categorical=tuple(raw["categorical"]),
            categorical_dimensions=tuple(Dimension(d) for d in raw["categorical_dimensions"]),
            cardinalities=tuple(int(c) for c in raw["cardinalities"]),
        )


@dataclass(frozen=True)
class EncodedData:
    """A validated dataset as model-ready arrays."""

    ids: np.ndarray  # object array of id strings
    numeric: np.ndarray  # float32 (rows, len(layout.numeric)), transformed, NaN = missing
    categorical: np.ndarray  # int64 (rows, len(layout.categorical)), 0 = missing
    label: np.ndarray | None  # float32 (rows,), 0/1
    layout: FeatureLayout

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, features: Collection[str]) -> EncodedData:
        """Only the columns in ``features``: the rest never reaches the model."""
        layout = self.layout.restrict(features)
        num = [self.layout.numeric.index(n) for n in layout.numeric]
        cat = [self.layout.categorical.index(n) for n in layout.categorical]
        return EncodedData(self.ids, self.numeric[:, num], self.categorical[:, cat], self.label, layout)

    def subset(self, rows: np.ndarray) -> EncodedData:
        return EncodedData(
            ids=self.ids[rows],
            numeric=self.numeric[rows],
            categorical=self.categorical[rows],
            label=None if self.label is None else self.label[rows],
            layout=self.layout,
        )


def write_table(frame: pd.DataFrame, out: Path, force: bool = False) -> None:
    """Write ``frame`` as CSV or Parquet (by suffix), whole or not at all; never over a file unless ``force``."""
    if out.is_dir():
        raise FedCreditError(f"{out}: is a folder; give a file name ending .csv or .parquet")
    if out.exists() and not force:
        raise FedCreditError(f"{out}: exists; pass --force to replace it")
    parquet = out.suffix.lower() in (".parquet", ".pq")
    if not parquet and out.suffix.lower() != ".csv":
        raise FedCreditError(f"{out}: write .csv or .parquet")
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        if parquet:
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)


def read_table(path: str | Path, schema: Schema) -> pd.DataFrame:
    """Read CSV or Parquet; categorical and id columns are read as text.

    A file that is not a table (absent, a folder, the wrong format, damaged, not
    UTF-8, rows of uneven length, a header without a name, a name twice, no rows)
    raises :class:`DataFileError`, one line naming the file and never a cell's value.
    """
    path = Path(path)
    source = str(path)
    if path.is_dir():
        raise DataFileError(source, "is a folder, not a CSV or Parquet file")
    if not path.is_file():
        raise DataFileError(source, "file not found" if not path.exists() else "is not a regular file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame = _read_csv(path, source, schema)
    elif suffix in (".parquet", ".pq"):
        frame = _read_parquet(path, source, schema)
    elif suffix:
        raise DataFileError(source, f"unsupported file type {suffix!r}; use .csv or .parquet")
    else:
        raise DataFileError(source, "unsupported file type (no extension); use .csv or .parquet")
    if len(frame) == 0:
        raise DataFileError(source, "has a header but no data rows")
    return frame


def _name(name: object) -> str:
    return short_name(str(name))


def _listed(names: Sequence[str]) -> str:
    """The first few ``names``, then how many more: bounded whatever the file holds."""
    shown = ", ".join(_name(n) for n in names[:MAX_NAMES_SHOWN])
    more = len(names) - MAX_NAMES_SHOWN
    return shown + (f" ... and {more:,} more" if more > 0 else "")


def _check_header(names: Sequence[object], source: str) -> None:
    """Refuse a header with a column that has no name or a name used twice."""
    text = [str(n) for n in names]
    problems = []
    unnamed = [i + 1 for i, n in enumerate(text) if not n.strip()]
    if unnamed:
        where = ", ".join(str(i) for i in unnamed[:MAX_NAMES_SHOWN])
        more = len(unnamed) - MAX_NAMES_SHOWN
        problems.append(
            f"{len(unnamed):,} column(s) of the header have no name (position {where}"
            + (f" ... and {more:,} more" if more > 0 else "")
            + (")" if 1 not in unnamed else "; a saved index? write the file with index=False)")
        )
    counts = Counter(n for n in text if n.strip())
    repeated = [(n, k) for n, k in counts.items() if k > 1]
    problems += [f"column {_name(n)} appears {k} times in the header" for n, k in repeated[:MAX_NAMES_SHOWN]]
    if len(repeated) > MAX_NAMES_SHOWN:
        problems.append(f"... and {len(repeated) - MAX_NAMES_SHOWN:,} more names repeated in the header")
    if problems:
        raise DataFileError(source, "; ".join(problems))


# how files that are not CSV text begin
_NOT_CSV = (
    (b"PAR1", "is a Parquet file, not CSV text; name it .parquet"),
    (b"PK\x03\x04", "is a ZIP archive (an Excel workbook?), not CSV text; export it as CSV (UTF-8)"),
    (b"\xd0\xcf\x11\xe0", "is an Office (Excel) document, not CSV text; export it as CSV (UTF-8)"),
    (b"\x1f\x8b", "is gzip-compressed, not CSV text; decompress it first"),
    (b"\xff\xfe", "is UTF-16 text; save it as UTF-8 CSV"),
    (b"\xfe\xff", "is UTF-16 text; save it as UTF-8 CSV"),
)


def _check_csv_bytes(data: bytes, source: str) -> None:
    """Refuse bytes that are not UTF-8 CSV text before parsing them."""
    if not data[:65536].strip() and len(data) <= 65536:
        raise DataFileError(source, "is empty: no header and no rows")
    for magic, problem in _NOT_CSV:
        if data.startswith(magic):
            raise DataFileError(source, problem)
    nul = data.find(b"\x00")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise DataFileError(source, f"is binary, not CSV text (a NUL byte on line {line:,})")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        if exc.end >= len(data) and "end of data" in exc.reason:
            raise DataFileError(source, "ends in the middle of a UTF-8 character: is it truncated?") from None
        raise DataFileError(
            source, f"is not UTF-8 text (first bad byte on line {line:,}); save it as UTF-8 CSV"
        ) from None


def _arrow_reason(exc: Exception) -> str:
    """The reason in an Arrow error, without the row text Arrow appends (it holds cell values)."""
    first = (str(exc).splitlines() or [type(exc).__name__])[0]
    first = re.sub(r"^CSV parse error:\s*", "", first)
    cut = re.match(r"^(.*?got \d+)", first)
    return (cut.group(1) if cut else first)[:160]


# the cells pandas reads as missing (Arrow's defaults, "<NA>" and "None")
_NULL_VALUES = sorted({*pacsv.ConvertOptions().null_values, "<NA>", "None"})


def _read_csv(path: Path, source: str, schema: Schema) -> pd.DataFrame:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataFileError(source, f"cannot read the file ({exc.strerror or type(exc).__name__})") from None
    _check_csv_bytes(data, source)
    text_cols = {c.name: pa.string() for c in schema.columns if c.type is ColumnType.CATEGORICAL}
    text_cols[schema.id_column] = pa.string()
    # a row must fit in one block, and a wide file reads faster in fewer, larger blocks
    header_length = (data.find(b"\n") + 1) or len(data)
    block_size = min(max(1 << 20, 64 * header_length), max(64 << 20, 2 * header_length))
    ragged = 0

    def count_ragged(row: Any) -> str:
        nonlocal ragged
        ragged += 1
        return "skip"

    def options(handler: Any, threads: bool) -> dict[str, Any]:
        return {
            "read_options": pacsv.ReadOptions(block_size=block_size, use_threads=threads),
            "parse_options": pacsv.ParseOptions(newlines_in_values=b'"' in data, invalid_row_handler=handler),
            "convert_options": pacsv.ConvertOptions(
                column_types=text_cols, null_values=_NULL_VALUES, strings_can_be_null=True
            ),
        }

    try:
        table = pacsv.read_csv(pa.py_buffer(data), **options(count_ragged, True))
    except (pa.ArrowException, ValueError) as exc:
        raise DataFileError(source, f"is not a readable CSV file: {_arrow_reason(exc)}") from None
    _check_header(table.column_names, source)
    if ragged:
        rows: list[int] = []

        def note(row: Any) -> str:
            rows.append(row.number - 1 if row.number else 0)
            return "skip" if len(rows) < MAX_ROWS_SHOWN else "error"

        with contextlib.suppress(pa.ArrowException, ValueError):  # stopped on purpose after a few
            pacsv.read_csv(pa.py_buffer(data), **options(note, False))
        raise DataFileError(
            source,
            f"{ragged:,} row(s) have a different number of fields than the header's "
            f"{table.num_columns:,} (a missing or extra comma, or an unclosed quote?)",
            tuple(r for r in rows if r > 0),
        )
    if table.num_columns == 1:
        for sep in (";", "\t", "|"):
            if sep in table.column_names[0]:
                raise DataFileError(
                    source,
                    f"the header is one column holding {sep!r}: is the file separated by {sep!r}? "
                    "FedCredit reads comma-separated CSV",
                )
    return table.to_pandas()


def _read_parquet(path: Path, source: str, schema: Schema) -> pd.DataFrame:
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(4)
            f.seek(max(size - 4, 0))
            tail = f.read(4)
    except OSError as exc:
        raise DataFileError(source, f"cannot read the file ({exc.strerror or type(exc).__name__})") from None
    if size == 0:
        raise DataFileError(source, "is empty (0 bytes), not a Parquet file")
    if head != b"PAR1":
        try:
            looks_like_text = head.decode("utf-8").isprintable()
        except UnicodeDecodeError:
            looks_like_text = False
        raise DataFileError(
            source,
            "is not a Parquet file: it holds text (a CSV file? name it .csv)"
            if looks_like_text
            else "is not a Parquet file (it does not begin with PAR1)",
        )
    if size < 12 or tail != b"PAR1":
        raise DataFileError(source, "is truncated or damaged: the Parquet footer is missing")
    try:
        arrow_schema = pq.read_schema(path)
    except Exception as exc:  # pyarrow raises several unrelated types
        raise DataFileError(source, f"is a damaged Parquet file: {_arrow_reason(exc)}") from None
    _check_header(arrow_schema.names, source)
    known = schema.known_columns
    odd = [
        f"column {_name(f.name)} holds Parquet type {str(f.type)[:40]}, not numbers or text"
        for f in arrow_schema
        if f.name in known and (pa.types.is_nested(f.type) or _is_bytes(f.type))
    ]
    if odd:
        raise DataFileError(source, "; ".join(odd[:MAX_NAMES_SHOWN]))
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types
        raise DataFileError(source, f"is a damaged Parquet file: {_arrow_reason(exc)}") from None


def _is_bytes(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind)
    )


def _first_rows(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) + 1 for i in np.flatnonzero(mask)[:MAX_ROWS_SHOWN])


def _count(mask: np.ndarray) -> str:
    return f"{int(mask.sum()):,}"


def _as_float(raw: pd.Series) -> np.ndarray:
    """A column as float64, NaN where a cell is missing or not a number (dates and times are not)."""
    kind = raw.dtype
    if (
        pd.api.types.is_datetime64_any_dtype(kind)
        or pd.api.types.is_timedelta64_dtype(kind)
        or isinstance(kind, pd.PeriodDtype | pd.IntervalDtype)
    ):
        return np.full(len(raw), np.nan)
    return pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def _check_missing(col: Column, present: np.ndarray, problems: list[DataProblem]) -> None:
    missing = ~present
    if missing.any() and col.missing is MissingPolicy.ERROR:
        problems.append(
            DataProblem(
                col.name,
                f"{_count(missing)} missing value(s); the schema says missing = 'error'",
                _first_rows(missing),
            )
        )


def _check_numeric(col: Column, raw: pd.Series, problems: list[DataProblem]) -> np.ndarray:
    values = _as_float(raw)
    present = raw.notna().to_numpy()
    bad_type = present & np.isnan(values)
    if bad_type.any():
        problems.append(
            DataProblem(col.name, f"{_count(bad_type)} value(s) not a number", _first_rows(bad_type))
        )
    _check_missing(col, present, problems)
    infinite = np.isinf(values)
    if infinite.any():
        problems.append(DataProblem(col.name, f"{_count(infinite)} infinite value(s)", _first_rows(infinite)))
    ok = np.isfinite(values)
    if col.type is ColumnType.BINARY:
        bad = ok & (values != 0) & (values != 1)
        if bad.any():
            problems.append(
                DataProblem(
                    col.name,
                    f"binary column holds {_count(bad)} value(s) other than 0 or 1",
                    _first_rows(bad),
                )
            )
        return values
    lo = -np.inf if col.min is None else col.min
    hi = np.inf if col.max is None else col.max
    out = ok & ~((values >= lo) & (values <= hi))
    if out.any():
        problems.append(
            DataProblem(col.name, f"{_count(out)} value(s) outside [{col.min}, {col.max}]", _first_rows(out))
        )
    return values


def _check_categorical(col: Column, raw: pd.Series, problems: list[DataProblem]) -> np.ndarray:
    text = raw.astype("string")
    present = text.notna().to_numpy()
    codes = pd.Categorical(text, categories=list(col.categories)).codes.astype(np.int64) + 1
    unknown = present & (codes == 0)
    if unknown.any():
        problems.append(
            DataProblem(
                col.name,
                f"{_count(unknown)} value(s) not an allowed category; allowed: {_listed(col.categories)}",
                _first_rows(unknown),
            )
        )
    _check_missing(col, present, problems)
    return codes


def apply_transform(values: np.ndarray, transform: Transform) -> np.ndarray:
    if transform is Transform.LOG1P:
        return np.log1p(values)
    if transform is Transform.SIGNED_LOG1P:
        return np.sign(values) * np.log1p(np.abs(values))
    if transform is Transform.LOGIT:
        rate = np.clip(values, LOGIT_CLIP, 1 - LOGIT_CLIP)
        return np.log(rate / (1 - rate))
    return values


def _check_fits_model(name: str, values: np.ndarray, problems: list[DataProblem]) -> None:
    """Inputs are float32: a larger finite value would reach the model as infinity."""
    huge = np.abs(values) > _FLOAT32_MAX
    if huge.any():
        problems.append(
            DataProblem(
                name, f"{_count(huge)} value(s) too large for the model (beyond ±3.4e38)", _first_rows(huge)
            )
        )


def _check_label(raw: pd.Series, problems: list[DataProblem], name: str) -> np.ndarray:
    values = _as_float(raw)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        missing = bad & raw.isna().to_numpy()
        other = bad & ~missing
        found = [
            f"{_count(m)} {what}" for m, what in ((other, "other value(s)"), (missing, "missing")) if m.any()
        ]
        problems.append(DataProblem(name, f"label must be 0 or 1: {' and '.join(found)}", _first_rows(bad)))
    return values.astype(np.float32)


def _check_ids(raw: pd.Series, problems: list[DataProblem], name: str) -> np.ndarray:
    missing = raw.isna().to_numpy()
    if missing.any():
        problems.append(DataProblem(name, f"{_count(missing)} missing id(s)", _first_rows(missing)))
    dup = raw.duplicated(keep="first").to_numpy() & ~missing
    if dup.any():
        problems.append(DataProblem(name, f"{_count(dup)} duplicate id(s)", _first_rows(dup)))
    return raw.astype("string").to_numpy(dtype=object, na_value="")


def _column_problems(
    names: Sequence[str], per_column: str, summary: str, problems: list[DataProblem]
) -> None:
    """One problem per column, or for many columns a single bounded one."""
    if len(names) <= MAX_NAMES_SHOWN:
        problems += [DataProblem(name, per_column) for name in names]
    else:
        problems.append(DataProblem("", summary.format(count=f"{len(names):,}", names=_listed(names))))


def encode_frame(
    frame: pd.DataFrame,
    schema: Schema,
    source: str,
    *,
    exclude: Collection[str] = (),
    require_label: bool = True,
    min_rows: int | None = None,
) -> EncodedData:
    """Validate ``frame`` against ``schema`` and encode the model's inputs.

    Raises :class:`DataValidationError` listing every problem found: counts and
    rows, never a cell's value. ``exclude`` names feature columns that must never
    reach the model.
    """
    problems: list[DataProblem] = []
    present = set(frame.columns)
    required: Iterable[str] = [schema.id_column, *(c.name for c in schema.features())]
    if require_label:
        required = [*required, schema.label_column]
    _column_problems(
        [name for name in required if name not in present],
        f"missing column required by schema {schema.name!r}",
        f"{{count}} columns required by schema {schema.name!r} are missing: {{names}}",
        problems,
    )
    known = schema.known_columns
    _column_problems(
        [str(c) for c in frame.columns if c not in known],
        f"unknown column, not in schema {schema.name!r}; add it to the schema or drop it",
        f"{{count}} unknown columns, not in schema {schema.name!r}: {{names}}; "
        "add them to the schema or drop them",
        problems,
    )
    needed = min_rows if min_rows is not None else schema.min_rows
    if len(frame) < needed:
        problems.append(DataProblem("", f"too few rows: {len(frame)}, at least {needed} required"))

    layout = FeatureLayout.from_schema(schema, exclude=exclude)
    n = len(frame)
    ids = (
        _check_ids(frame[schema.id_column], problems, schema.id_column)
        if schema.id_column in present
        else np.array([], dtype=object)
    )
    label = None
    if schema.label_column in present:
        label = _check_label(frame[schema.label_column], problems, schema.label_column)
    numeric = np.full((n, len(layout.numeric)), np.nan, dtype=np.float32)
    categorical = np.zeros((n, len(layout.categorical)), dtype=np.int64)
    num_index = {name: i for i, name in enumerate(layout.numeric)}
    cat_index = {name: i for i, name in enumerate(layout.categorical)}
    for col in schema.columns:
        if col.name not in present:
            continue
        if col.is_numeric_input:
            values = _check_numeric(col, frame[col.name], problems)
            if col.name in num_index:
                # a value the transform or float32 cannot take is already a reported problem
                with np.errstate(invalid="ignore", over="ignore"):
                    transformed = apply_transform(values, col.transform)
                    _check_fits_model(col.name, transformed, problems)
                    numeric[:, num_index[col.name]] = transformed
        else:
            codes = _check_categorical(col, frame[col.name], problems)
            if col.name in cat_index:
                categorical[:, cat_index[col.name]] = codes
    if problems:
        raise DataValidationError(source, problems)
    return EncodedData(ids=ids, numeric=numeric, categorical=categorical, label=label, layout=layout)


def load_dataset(
    path: str | Path,
    schema: Schema,
    *,
    exclude: Collection[str] = (),
    require_label: bool = True,
    min_rows: int | None = None,
) -> EncodedData:
    """Read ``path`` and return its validated, encoded content."""
    frame = read_table(path, schema)
    return encode_frame(
        frame, schema, str(path), exclude=exclude, require_label=require_label, min_rows=min_rows
    )
