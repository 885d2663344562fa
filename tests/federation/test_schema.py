from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from federation.errors import SchemaError
from federation.schema import ColumnType, Dimension, dump_schema, load_schema, parse_schema, resolve_schema

BUILTIN = ("sme", "uci_raw", "uci_homo")


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_schema_round_trips(name: str) -> None:
    schema = resolve_schema(name)
    text = dump_schema(schema)
    again = parse_schema(tomllib.loads(text))
    assert again == schema
    assert dump_schema(again) == text


def test_uci_homo_maps_columns_as_source_documents() -> None:
    schema = resolve_schema("uci_homo")
    # x14 = SEX and x16 = MARRIAGE are protected; x18 = PAY_0 is credit history
    assert schema.column("x14").protected and "SEX" in schema.column("x14").description
    assert schema.column("x16").protected and "MARRIAGE" in schema.column("x16").description
    assert schema.column("x18").dimension is Dimension.CREDIT
    assert "PAY_0" in schema.column("x18").description
    assert {c.name for c in schema.features()} == {f"x{i}" for i in range(23)} - {"x14", "x16"}


def test_sme_schema_covers_four_dimensions_and_protects_owner_attributes() -> None:
    schema = resolve_schema("sme")
    assert {c.dimension for c in schema.features()} == set(Dimension)
    protected = {c.name for c in schema.columns if c.protected}
    assert protected == {"owner_age", "owner_gender", "owner_marital_status"}
    assert schema.column("industry").type is ColumnType.CATEGORICAL


def _raw(**column: object) -> dict[str, object]:
    col = {"name": "a", "dimension": "credit", "type": "numeric"}
    col.update(column)
    return {
        "format_version": 1,
        "name": "t",
        "version": "1",
        "id_column": "id",
        "label_column": "y",
        "columns": [col],
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "unknown key(s) ['colour']"),
        ({"dimension": "mood"}, "column 'a'.dimension: 'mood' is not one of"),
        ({"type": "text"}, "column 'a'.type: 'text' is not one of"),
        ({"type": "categorical"}, "column 'a': a categorical column needs a 'categories' list"),
        ({"min": 5, "max": 1}, "column 'a': min 5.0 is greater than max 1.0"),
        ({"transform": "log1p", "min": -1}, "transform 'log1p' needs min >= 0"),
        ({"min": "zero"}, "column 'a'.min: expected a number, got 'zero'"),
        ({"protected": "yes"}, "column 'a'.protected: expected true or false"),
    ],
)
def test_bad_column_is_rejected_with_where_and_what(change: dict[str, object], message: str) -> None:
    with pytest.raises(SchemaError) as err:
        parse_schema(_raw(**change), "my.toml")
    assert message in str(err.value)
    assert str(err.value).startswith("my.toml")


def test_schema_level_errors() -> None:
    raw = _raw()
    raw["format_version"] = 2
    with pytest.raises(SchemaError, match="format_version must be 1, got 2"):
        parse_schema(raw)
    raw = _raw(protected=True)
    with pytest.raises(SchemaError, match="every column is protected"):
        parse_schema(raw)
    raw = _raw()
    raw["columns"].append({"name": "a", "dimension": "credit", "type": "numeric"})  # type: ignore[union-attr]
    with pytest.raises(SchemaError, match=r"declared twice: \['a'\]"):
        parse_schema(raw)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("name = \n")
    with pytest.raises(SchemaError, match=r"broken\.toml: invalid TOML"):
        load_schema(path)


def test_unknown_builtin_lists_what_is_shipped() -> None:
    with pytest.raises(SchemaError, match="no built-in schema 'nope'; shipped: sme, uci_homo, uci_raw"):
        resolve_schema("nope")


def test_a_schema_that_is_not_text_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'name = "x"\n\xff\xfe garbage')
    with pytest.raises(SchemaError, match=r"bad\.toml: not UTF-8 text \(byte 11\); a schema is a TOML file"):
        resolve_schema(path)
