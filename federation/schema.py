"""Dataset schemas: which column feeds which of the four dimensions, and how.

A schema is a TOML file (see ``docs/data.md``). It is parsed into frozen
dataclasses, checked for consistency, and can be written back byte-stable with
:func:`dump_schema`, so a schema's text is a reliable identity.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w

from federation.errors import SchemaError

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


def _enum(kind: type[StrEnum], value: Any, where: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in kind)
        raise SchemaError(f"{where}: {value!r} is not one of {allowed}") from None


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise SchemaError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _parse_column(raw: Any, index: int, source: str) -> Column:
    where = f"{source}: columns[{index}]"
    if not isinstance(raw, dict):
        raise SchemaError(f"{where}: expected a table, got {type(raw).__name__}")
    unknown = set(raw) - _COLUMN_KEYS
    if unknown:
        raise SchemaError(f"{where}: unknown key(s) {sorted(unknown)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise SchemaError(f"{where}: 'name' must be a non-empty string")
    where = f"{source}: column {name!r}"
    for key in ("dimension", "type"):
        if key not in raw:
            raise SchemaError(f"{where}: missing required key {key!r}")
    ctype = _enum(ColumnType, raw["type"], f"{where}.type")
    categories = tuple(str(c) for c in raw.get("categories", ()))
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
        lo, hi = 0.0, 1.0
    if lo is not None and hi is not None and lo > hi:
        raise SchemaError(f"{where}: min {lo} is greater than max {hi}")
    transform = _enum(Transform, raw.get("transform", "none"), f"{where}.transform")
    if transform is Transform.LOG1P and (lo is None or lo < 0):
        raise SchemaError(f"{where}: transform 'log1p' needs min >= 0; use 'signed_log1p'")
    protected = raw.get("protected", False)
    if not isinstance(protected, bool):
        raise SchemaError(f"{where}.protected: expected true or false, got {protected!r}")
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
        description=str(raw.get("description", "")),
    )


def parse_schema(raw: dict[str, Any], source: str = "<schema>") -> Schema:
    """Build a :class:`Schema` from parsed TOML, raising :class:`SchemaError` on any flaw."""
    unknown = set(raw) - _SCHEMA_KEYS
    if unknown:
        raise SchemaError(f"{source}: unknown key(s) {sorted(unknown)}")
    fmt = raw.get("format_version")
    if fmt != SCHEMA_FORMAT_VERSION:
        raise SchemaError(f"{source}: format_version must be {SCHEMA_FORMAT_VERSION}, got {fmt!r}")
    for key in ("name", "version", "id_column", "label_column"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise SchemaError(f"{source}: {key!r} must be a non-empty string")
    raw_columns = raw.get("columns")
    if not isinstance(raw_columns, list) or not raw_columns:
        raise SchemaError(f"{source}: 'columns' must be a non-empty array of tables")
    columns = tuple(_parse_column(c, i, source) for i, c in enumerate(raw_columns))
    names = [c.name for c in columns]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SchemaError(f"{source}: column(s) declared twice: {dupes}")
    reserved = {raw["id_column"], raw["label_column"]} & set(names)
    if reserved:
        raise SchemaError(f"{source}: id/label column(s) {sorted(reserved)} also listed as features")
    min_rows = raw.get("min_rows", 50)
    if isinstance(min_rows, bool) or not isinstance(min_rows, int) or min_rows < 1:
        raise SchemaError(f"{source}: 'min_rows' must be a positive integer, got {min_rows!r}")
    schema = Schema(
        name=raw["name"],
        version=raw["version"],
        id_column=raw["id_column"],
        label_column=raw["label_column"],
        columns=columns,
        min_rows=min_rows,
        ignored_columns=tuple(str(c) for c in raw.get("ignored_columns", ())),
        description=str(raw.get("description", "")),
    )
    if not schema.features():
        raise SchemaError(f"{source}: every column is protected; the model would have no input")
    return schema


def load_schema(path: str | Path) -> Schema:
    """Read and check a schema TOML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SchemaError(f"{path}: cannot read schema ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise SchemaError(f"{path}: not UTF-8 text (byte {exc.start}); a schema is a TOML file") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SchemaError(f"{path}: invalid TOML: {exc}") from exc
    return parse_schema(raw, str(path))


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
    if candidate.suffix == ".toml" or candidate.exists():
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
        if c.description:
            entry["description"] = c.description
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
