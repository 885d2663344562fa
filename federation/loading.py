"""Read a dataset (CSV or Parquet), check it against its schema, encode it as arrays.

Every check runs column-wise on whole arrays; all problems are collected and
reported together, each with its column and the first offending rows
(counted from 1, the header excluded).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from federation.errors import DataProblem, DataValidationError, FedCreditError
from federation.schema import Column, ColumnType, Dimension, MissingPolicy, Schema, Transform

MAX_ROWS_SHOWN = 5


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
    """Read CSV or Parquet; categorical and id columns are read as text."""
    path = Path(path)
    if not path.is_file():
        raise DataValidationError(str(path), [DataProblem("", "file not found")])
    suffix = path.suffix.lower()
    if suffix == ".csv":
        text_cols = {c.name: "string" for c in schema.columns if c.type is ColumnType.CATEGORICAL}
        text_cols[schema.id_column] = "string"
        try:
            return pd.read_csv(path, dtype=text_cols, low_memory=False)
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
            raise DataValidationError(str(path), [DataProblem("", f"not a readable CSV: {exc}")]) from exc
    if suffix in (".parquet", ".pq"):
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several unrelated types
            raise DataValidationError(
                str(path), [DataProblem("", f"not a readable Parquet file: {exc}")]
            ) from exc
    raise DataValidationError(
        str(path), [DataProblem("", f"unsupported file type {suffix!r}; use .csv or .parquet")]
    )


def _first_rows(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) + 1 for i in np.flatnonzero(mask)[:MAX_ROWS_SHOWN])


def _examples(values: pd.Series, mask: np.ndarray) -> str:
    shown = values[mask].head(3).tolist()
    return ", ".join(repr(v) for v in shown)


def _check_missing(col: Column, present: np.ndarray, problems: list[DataProblem]) -> None:
    missing = ~present
    if missing.any() and col.missing is MissingPolicy.ERROR:
        problems.append(
            DataProblem(
                col.name,
                f"{int(missing.sum())} missing value(s); the schema says missing = 'error'",
                _first_rows(missing),
            )
        )


def _check_numeric(col: Column, raw: pd.Series, problems: list[DataProblem]) -> np.ndarray:
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    present = raw.notna().to_numpy()
    bad_type = present & np.isnan(values)
    if bad_type.any():
        problems.append(
            DataProblem(col.name, f"not a number: {_examples(raw, bad_type)}", _first_rows(bad_type))
        )
    _check_missing(col, present, problems)
    ok = ~np.isnan(values)
    if col.type is ColumnType.BINARY:
        bad = ok & (values != 0) & (values != 1)
        if bad.any():
            problems.append(
                DataProblem(
                    col.name, f"binary column holds {_examples(raw, bad)}; expected 0 or 1", _first_rows(bad)
                )
            )
        return values
    lo = -np.inf if col.min is None else col.min
    hi = np.inf if col.max is None else col.max
    with np.errstate(invalid="ignore"):
        out = ok & ~((values >= lo) & (values <= hi))
    if out.any():
        problems.append(
            DataProblem(
                col.name,
                f"{int(out.sum())} value(s) outside [{col.min}, {col.max}]: {_examples(raw, out)}",
                _first_rows(out),
            )
        )
    return values


def _check_categorical(col: Column, raw: pd.Series, problems: list[DataProblem]) -> np.ndarray:
    text = raw.astype("string")
    present = text.notna().to_numpy()
    codes = pd.Categorical(text, categories=list(col.categories)).codes.astype(np.int64) + 1
    unknown = present & (codes == 0)
    if unknown.any():
        found = sorted(set(text[unknown].tolist()))[:5]
        problems.append(
            DataProblem(
                col.name,
                f"unknown categor{'y' if len(found) == 1 else 'ies'} {found}; "
                f"allowed: {list(col.categories)}",
                _first_rows(unknown),
            )
        )
    _check_missing(col, present, problems)
    return codes


def _apply_transform(values: np.ndarray, transform: Transform) -> np.ndarray:
    if transform is Transform.LOG1P:
        return np.log1p(values)
    if transform is Transform.SIGNED_LOG1P:
        return np.sign(values) * np.log1p(np.abs(values))
    return values


def _check_label(raw: pd.Series, problems: list[DataProblem], name: str) -> np.ndarray:
    values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        problems.append(
            DataProblem(name, f"label must be 0 or 1, found {_examples(raw, bad)}", _first_rows(bad))
        )
    return values.astype(np.float32)


def _check_ids(raw: pd.Series, problems: list[DataProblem], name: str) -> np.ndarray:
    missing = raw.isna().to_numpy()
    if missing.any():
        problems.append(DataProblem(name, "missing id(s)", _first_rows(missing)))
    dup = raw.duplicated(keep="first").to_numpy() & ~missing
    if dup.any():
        problems.append(
            DataProblem(
                name,
                f"{int(dup.sum())} duplicate id(s): {_examples(raw, dup)}",
                _first_rows(dup),
            )
        )
    return raw.astype("string").to_numpy(dtype=object, na_value="")


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

    Raises :class:`DataValidationError` listing every problem found.
    ``exclude`` names feature columns that must never reach the model.
    """
    problems: list[DataProblem] = []
    present = set(frame.columns)
    required: Iterable[str] = [schema.id_column, *(c.name for c in schema.features())]
    if require_label:
        required = [*required, schema.label_column]
    problems += [
        DataProblem(name, "missing column required by schema " + repr(schema.name))
        for name in required
        if name not in present
    ]
    unknown = sorted(str(c) for c in present - schema.known_columns)
    problems += [
        DataProblem(name, f"unknown column, not in schema {schema.name!r}; add it to the schema or drop it")
        for name in unknown
    ]
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
                numeric[:, num_index[col.name]] = _apply_transform(values, col.transform)
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
