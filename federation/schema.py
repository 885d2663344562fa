"""Dataset schemas: which column feeds which of the four dimensions, and how.

A schema is a TOML file (see ``docs/data.md``). It is parsed into frozen
dataclasses, checked for consistency, and can be written back byte-stable with
:func:`dump_schema`, so a schema's text is a reliable identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Any

import tomli_w

from federation.errors import SchemaError
from policies.toml_files import array_table_lines, read_toml, top_level_key_line

SCHEMA_FORMAT_VERSION = 1


class Dimension(StrEnum):
    OPERATIONS = "operations"
    CREDIT = "credit"
    BEHAVIOUR = "behaviour"
    SCENARIO = "scenario"


class ColumnType(StrEnum):
    NUMERIC = "numeric"
    CATEGORICAL = "categorical"
    BINARY = "binary"


class Transform(StrEnum):
    NONE = "none"
    LOG1P = "log1p"
    SIGNED_LOG1P = "signed_log1p"
    LOGIT = "logit"  # for rates in [0, 1]: log(p / (1 - p)), p clipped to [LOGIT_CLIP, 1 - LOGIT_CLIP]


LOGIT_CLIP = 1e-3  # a rate is known to about 0.1 %: 0 and 1 become -6.9 and +6.9


class MissingPolicy(StrEnum):
    ERROR = "error"
    IMPUTE = "impute"


@dataclass(frozen=True)
class Column:
    """One feature column of a dataset."""

    name: str
    dimension: Dimension
    type: ColumnType
    min: float | None = None
    max: float | None = None
    categories: tuple[str, ...] = ()
    transform: Transform = Transform.NONE
    missing: MissingPolicy = MissingPolicy.ERROR
    protected: bool = False
    description: str = ""
    reason_low: str = ""  # what a low value means, in plain words (a reason code's text)
    reason_high: str = ""
    group_edges: tuple[float, ...] = ()  # protected numeric: group boundaries for fairness statistics

    @property
    def is_numeric_input(self) -> bool:
        """Numeric and binary columns enter the model as numbers."""
        return self.type is not ColumnType.CATEGORICAL


@dataclass(frozen=True)
class Schema:
    """A dataset's columns, label and id, and the rules their values follow."""

    name: str
    version: str
    id_column: str
    label_column: str
    columns: tuple[Column, ...]
    min_rows: int = 50
    ignored_columns: tuple[str, ...] = ()
    description: str = ""
    format_version: int = SCHEMA_FORMAT_VERSION
    _by_name: dict[str, Column] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name.update({c.name: c for c in self.columns})

    def column(self, name: str) -> Column:
        return self._by_name[name]

    def features(self, include_protected: bool = False) -> tuple[Column, ...]:
        """Columns that feed the model, in schema order."""
        return tuple(c for c in self.columns if include_protected or not c.protected)

    @property
    def known_columns(self) -> frozenset[str]:
        return frozenset([self.id_column, self.label_column, *self._by_name, *self.ignored_columns])


_COLUMN_KEYS = {
    "name",
    "dimension",
    "type",
    "min",
    "max",
    "categories",
    "transform",
    "missing",
    "protected",
    "description",
    "reason_low",
    "reason_high",
    "group_edges",
}
_SCHEMA_KEYS = {
    "format_version",
    "name",
    "version",
    "description",
    "id_column",
    "label_column",
    "min_rows",
    "ignored_columns",
    "columns",
}


MAX_NAMES_SHOWN = 10


class _Where:
    """Error prefixes: the schema file and, where the text shows it cheaply, the TOML line."""

    def __init__(self, source: str, text: str | None) -> None:
        self.source = source
        self.text = text
        self.column_lines: list[int] = []

    def expect_columns(self, count: int) -> None:
        lines = array_table_lines(self.text, "columns") if self.text is not None else []
        self.column_lines = lines if len(lines) == count else []

    def _at(self, line: int | None) -> str:
        return f"{self.source}:{line}" if line else self.source

    def key(self, key: str) -> str:
        """Where top-level ``key`` is set."""
        return self._at(top_level_key_line(self.text, key) if self.text is not None else None)

    def column_line(self, index: int) -> int | None:
        return self.column_lines[index] if index < len(self.column_lines) else None

    def column(self, index: int) -> str:
        """Where the ``index``-th ``[[columns]]`` table starts."""
        return self._at(self.column_line(index))


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _names(names: list[str]) -> str:
    """``names`` as a bounded list: the first few, then how many more."""
    shown = "[" + ", ".join(_shown(n) for n in names[:MAX_NAMES_SHOWN]) + "]"
    more = len(names) - MAX_NAMES_SHOWN
    return shown + (f" and {more:,} more" if more > 0 else "")


def _enum(kind: type[StrEnum], value: Any, where: str) -> Any:
    try:
        return kind(value)
    except (ValueError, TypeError):
        allowed = ", ".join(repr(m.value) for m in kind)
        raise SchemaError(f"{where}: {_shown(value)} is not one of {allowed}") from None


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SchemaError(f"{where}: expected a number, got {_shown(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise SchemaError(f"{where}: {_shown(value)} is not a finite number; leave the bound out for none")
    return number


def _text(raw: dict[str, Any], key: str, where: str) -> str:
    value = raw.get(key, "")
    if not isinstance(value, str):
        raise SchemaError(f"{where}: expected a string, got {type(value).__name__}")
    return value


def _phrase(raw: dict[str, Any], key: str, where: str) -> str:
    """An optional plain-words key: absent, or a non-empty string."""
    if key not in raw:
        return ""
    value = raw[key]
    if not isinstance(value, str) or not value.strip():
        raise SchemaError(f"{where}: expected a non-empty string, got {_shown(value)}")
    return value


def _group_edges(raw: Any, lo: float | None, hi: float | None, where: str) -> tuple[float, ...]:
    if not isinstance(raw, list) or not raw:
        raise SchemaError(f"{where}: expected a non-empty array of numbers, got {_shown(raw)}")
    edges = tuple(_number(value, f"{where}[{i}]") for i, value in enumerate(raw))
    numbers = tuple(e for e in edges if e is not None)
    if any(b <= a for a, b in pairwise(numbers)):
        raise SchemaError(f"{where}: edges must be strictly increasing, got {_shown(list(numbers))}")
    for edge in numbers:
        if lo is not None and edge < lo:
            raise SchemaError(
                f"{where}: edge {edge} is below the column's min {lo}; edges lie within min and max"
            )
        if hi is not None and edge > hi:
            raise SchemaError(
                f"{where}: edge {edge} is above the column's max {hi}; edges lie within min and max"
            )
    return numbers


def _categories(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise SchemaError(f"{where}: expected an array of strings, got {type(raw).__name__}")
    for value in raw:
        # integer codes are read as their text, as a CSV cell holding them is
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise SchemaError(
                f"{where}: every category must be a string (or an integer code), got {_shown(value)}"
            )
    categories = tuple(str(c) for c in raw)
    if any(not c.strip() for c in categories):
        raise SchemaError(f"{where}: an empty category can never match: an empty cell is a missing value")
    return categories


def _parse_column(raw: Any, index: int, at: str) -> Column:
    where = f"{at}: columns[{index}]"
    if not isinstance(raw, dict):
        raise SchemaError(f"{where}: expected a table, got {type(raw).__name__}")
    unknown = set(raw) - _COLUMN_KEYS
    if unknown:
        raise SchemaError(f"{where}: unknown key(s) {_names(sorted(unknown))}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SchemaError(f"{where}: 'name' must be a non-empty string")
    where = f"{at}: column {_shown(name)}"
    for key in ("dimension", "type"):
        if key not in raw:
            raise SchemaError(f"{where}: missing required key {key!r}")
    ctype = _enum(ColumnType, raw["type"], f"{where}.type")
    categories = _categories(raw.get("categories", []), f"{where}.categories")
    lo = _number(raw.get("min"), f"{where}.min")
    hi = _number(raw.get("max"), f"{where}.max")
    if ctype is ColumnType.CATEGORICAL:
        if not categories:
            raise SchemaError(f"{where}: a categorical column needs a 'categories' list")
        if len(set(categories)) != len(categories):
            raise SchemaError(f"{where}: 'categories' has duplicates")
        if lo is not None or hi is not None:
            raise SchemaError(f"{where}: 'min'/'max' apply to numeric columns only")
    elif categories:
        raise SchemaError(f"{where}: 'categories' applies to categorical columns only")
    if ctype is ColumnType.BINARY:
        if lo not in (None, 0.0) or hi not in (None, 1.0):
            raise SchemaError(f"{where}: a binary column is always 0 or 1; leave out 'min'/'max'")
        lo, hi = 0.0, 1.0
    if lo is not None and hi is not None and lo > hi:
        raise SchemaError(f"{where}: min {lo} is greater than max {hi}")
    transform = _enum(Transform, raw.get("transform", "none"), f"{where}.transform")
    if transform is not Transform.NONE and ctype is not ColumnType.NUMERIC:
        raise SchemaError(f"{where}: 'transform' applies to numeric columns only, this one is {ctype.value}")
    if transform is Transform.LOG1P and (lo is None or lo < 0):
        raise SchemaError(f"{where}: transform 'log1p' needs min >= 0; use 'signed_log1p'")
    if transform is Transform.LOGIT and (lo is None or hi is None or lo < 0 or hi > 1):
        raise SchemaError(f"{where}: transform 'logit' is for rates: it needs min >= 0 and max <= 1")
    protected = raw.get("protected", False)
    if not isinstance(protected, bool):
        raise SchemaError(f"{where}.protected: expected true or false, got {_shown(protected)}")
    reason_low = _phrase(raw, "reason_low", f"{where}.reason_low")
    reason_high = _phrase(raw, "reason_high", f"{where}.reason_high")
    if ctype is ColumnType.CATEGORICAL and (reason_low or reason_high):
        raise SchemaError(
            f"{where}: 'reason_low'/'reason_high' apply to numeric and binary columns only; "
            "a categorical column's reason names its category"
        )
    group_edges: tuple[float, ...] = ()
    if "group_edges" in raw:
        if ctype is not ColumnType.NUMERIC or not protected:
            kind = "not protected" if ctype is ColumnType.NUMERIC else ctype.value
            raise SchemaError(
                f"{where}: 'group_edges' applies to protected numeric columns only, this one is {kind}"
            )
        group_edges = _group_edges(raw["group_edges"], lo, hi, f"{where}.group_edges")
    return Column(
        name=name,
        dimension=_enum(Dimension, raw["dimension"], f"{where}.dimension"),
        type=ctype,
        min=lo,
        max=hi,
        categories=categories,
        transform=transform,
        missing=_enum(MissingPolicy, raw.get("missing", "error"), f"{where}.missing"),
        protected=protected,
        description=_text(raw, "description", f"{where}.description"),
        reason_low=reason_low,
        reason_high=reason_high,
        group_edges=group_edges,
    )


def _ignored_columns(raw: Any, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise SchemaError(
            f"{where}: 'ignored_columns' must be an array of column names, got {type(raw).__name__}"
        )
    for value in raw:
        if not isinstance(value, str) or not value.strip():
            raise SchemaError(
                f"{where}: 'ignored_columns' entries must be non-empty strings, got {_shown(value)}"
            )
    twice = sorted({n for n in raw if raw.count(n) > 1})
    if twice:
        raise SchemaError(f"{where}: 'ignored_columns' lists {_names(twice)} twice")
    return tuple(raw)


def parse_schema(raw: dict[str, Any], source: str = "<schema>", text: str | None = None) -> Schema:
    """Build a :class:`Schema` from parsed TOML, raising :class:`SchemaError` on any flaw.

    ``text``, the TOML the table came from, lets errors name the line.
    """
    at = _Where(source, text)
    unknown = sorted(set(raw) - _SCHEMA_KEYS)
    if unknown:
        raise SchemaError(f"{at.key(unknown[0])}: unknown key(s) {_names(unknown)}")
    fmt = raw.get("format_version")
    if fmt != SCHEMA_FORMAT_VERSION:
        raise SchemaError(
            f"{at.key('format_version')}: format_version must be {SCHEMA_FORMAT_VERSION}, got {_shown(fmt)}"
        )
    for key in ("name", "version", "id_column", "label_column"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise SchemaError(f"{at.key(key)}: {key!r} must be a non-empty string")
    description = _text(raw, "description", f"{at.key('description')}: 'description'")
    id_column, label_column = raw["id_column"], raw["label_column"]
    if id_column == label_column:
        raise SchemaError(
            f"{at.key('label_column')}: id_column and label_column are both {_shown(id_column)}; "
            "the label cannot be the id"
        )
    raw_columns = raw.get("columns")
    if not isinstance(raw_columns, list) or not raw_columns:
        raise SchemaError(f"{at.key('columns')}: 'columns' must be a non-empty array of tables")
    at.expect_columns(len(raw_columns))
    columns = tuple(_parse_column(c, i, at.column(i)) for i, c in enumerate(raw_columns))
    names = [c.name for c in columns]
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise SchemaError(f"{at.column(i)}: column(s) declared twice: {_names(dupes)}")
        seen.add(name)
    for i, name in enumerate(names):
        if name in (id_column, label_column):
            role = "id" if name == id_column else "label"
            raise SchemaError(
                f"{at.column(i)}: column {_shown(name)} is the {role} column; it cannot also be a feature"
            )
    ignored_at = at.key("ignored_columns")
    ignored = _ignored_columns(raw.get("ignored_columns", []), ignored_at)
    for name in ignored:
        if name in seen:
            line = at.column_line(names.index(name))
            raise SchemaError(
                f"{ignored_at}: column {_shown(name)} is both in ignored_columns and a feature "
                f"([[columns]]{f' on line {line}' if line else ''}); keep it in one of them"
            )
        if name in (id_column, label_column):
            role = "id" if name == id_column else "label"
            raise SchemaError(f"{ignored_at}: the {role} column {_shown(name)} cannot be in ignored_columns")
    min_rows = raw.get("min_rows", 50)
    if isinstance(min_rows, bool) or not isinstance(min_rows, int) or min_rows < 1:
        raise SchemaError(
            f"{at.key('min_rows')}: 'min_rows' must be a positive integer, got {_shown(min_rows)}"
        )
    schema = Schema(
        name=raw["name"],
        version=raw["version"],
        id_column=id_column,
        label_column=label_column,
        columns=columns,
        min_rows=min_rows,
        ignored_columns=ignored,
        description=description,
    )
    if not schema.features():
        raise SchemaError(f"{source}: every column is protected; the model would have no input")
    return schema


def load_schema(path: str | Path) -> Schema:
    """Read and check a schema TOML file."""
    document = read_toml(path, "schema", SchemaError)
    return parse_schema(document.table, document.source, document.text)


def builtin_schema_path(name: str) -> Path:
    """Path of a schema shipped with FedCredit (``sme``, ``uci_raw``, ``uci_homo``)."""
    path = Path(str(resources.files("federation") / "schemas" / f"{name}.toml"))
    if not path.is_file():
        shipped = sorted(p.stem for p in path.parent.glob("*.toml"))
        raise SchemaError(f"no built-in schema {name!r}; shipped: {', '.join(shipped)}")
    return path


def resolve_schema(name_or_path: str | Path) -> Schema:
    """A built-in schema by name, or a schema file by path."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".toml" or candidate.exists() or len(candidate.parts) > 1:
        return load_schema(candidate)
    return load_schema(builtin_schema_path(str(name_or_path)))


def schema_to_dict(schema: Schema) -> dict[str, Any]:
    """The TOML-ready form of a schema, omitting keys that hold their default."""
    columns: list[dict[str, Any]] = []
    for c in schema.columns:
        entry: dict[str, Any] = {"name": c.name, "dimension": c.dimension.value, "type": c.type.value}
        if c.type is ColumnType.NUMERIC:
            if c.min is not None:
                entry["min"] = c.min
            if c.max is not None:
                entry["max"] = c.max
        if c.categories:
            entry["categories"] = list(c.categories)
        if c.transform is not Transform.NONE:
            entry["transform"] = c.transform.value
        if c.missing is not MissingPolicy.ERROR:
            entry["missing"] = c.missing.value
        if c.protected:
            entry["protected"] = True
        if c.group_edges:
            entry["group_edges"] = list(c.group_edges)
        if c.description:
            entry["description"] = c.description
        if c.reason_low:
            entry["reason_low"] = c.reason_low
        if c.reason_high:
            entry["reason_high"] = c.reason_high
        columns.append(entry)
    out: dict[str, Any] = {
        "format_version": schema.format_version,
        "name": schema.name,
        "version": schema.version,
        "id_column": schema.id_column,
        "label_column": schema.label_column,
        "min_rows": schema.min_rows,
    }
    if schema.description:
        out["description"] = schema.description
    if schema.ignored_columns:
        out["ignored_columns"] = list(schema.ignored_columns)
    out["columns"] = columns
    return out


def dump_schema(schema: Schema) -> str:
    """Serialize a schema to TOML; ``parse_schema(tomllib.loads(dump_schema(s)))`` equals ``s``."""
    return tomli_w.dumps(schema_to_dict(schema))
