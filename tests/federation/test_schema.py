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
    with pytest.raises(SchemaError, match=r"broken\.toml: not valid TOML at line 1, column 8: invalid value"):
        load_schema(path)


def test_unknown_builtin_lists_what_is_shipped() -> None:
    with pytest.raises(SchemaError, match="no built-in schema 'nope'; shipped: sme, uci_homo, uci_raw"):
        resolve_schema("nope")


def test_a_schema_that_is_not_text_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'name = "x"\n\xff\xfe garbage')
    with pytest.raises(SchemaError, match=r"bad\.toml: not UTF-8 text \(byte 11\); a schema is a TOML file"):
        resolve_schema(path)


_SCHEMA_TOML = """format_version = 1
name = "t"
version = "1"
id_column = "id"
label_column = "y"
ignored_columns = ["note", "a"]

[[columns]]
name = "b"
dimension = "credit"
type = "numeric"

[[columns]]
name = "a"
dimension = "credit"
type = "numeric"
"""


def test_a_column_both_ignored_and_a_feature_is_refused_with_file_and_lines(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(_SCHEMA_TOML)
    with pytest.raises(SchemaError) as err:
        load_schema(path)
    assert str(err.value) == (
        f"{path}:6: column 'a' is both in ignored_columns and a feature ([[columns]] on line 13); "
        "keep it in one of them"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ignored_columns": ["y"]}, "my.toml: the label column 'y' cannot be in ignored_columns"),
        ({"ignored_columns": ["id"]}, "my.toml: the id column 'id' cannot be in ignored_columns"),
        ({"ignored_columns": ["n", "n"]}, "my.toml: 'ignored_columns' lists ['n'] twice"),
        ({"ignored_columns": "n"}, "my.toml: 'ignored_columns' must be an array of column names, got str"),
        ({"ignored_columns": [3]}, "my.toml: 'ignored_columns' entries must be non-empty strings, got 3"),
        ({"label_column": "id"}, "my.toml: id_column and label_column are both 'id'"),
        ({"description": 5}, "my.toml: 'description': expected a string, got int"),
    ],
)
def test_contradictory_schema_is_refused(change: dict[str, object], message: str) -> None:
    raw = _raw()
    raw.update(change)
    with pytest.raises(SchemaError) as err:
        parse_schema(raw, "my.toml")
    assert str(err.value).startswith(message)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"max": float("inf")}, "column 'a'.max: inf is not a finite number"),
        ({"min": float("-inf")}, "column 'a'.min: -inf is not a finite number"),
        ({"min": float("nan")}, "column 'a'.min: nan is not a finite number"),
        ({"min": 10**400}, "column 'a'.min: "),
        ({"type": "binary", "max": 5}, "column 'a': a binary column is always 0 or 1"),
        ({"type": "binary", "transform": "log1p"}, "column 'a': 'transform' applies to numeric columns only"),
        ({"type": "categorical", "categories": ["x"], "transform": "signed_log1p"}, "'transform' applies to"),
        ({"type": "categorical", "categories": "xy"}, "column 'a'.categories: expected an array of strings"),
        ({"type": "categorical", "categories": ["x", 1.5]}, "every category must be a string"),
        ({"type": "categorical", "categories": ["x", " "]}, "an empty category can never match"),
        ({"name": "y"}, "column 'y' is the label column; it cannot also be a feature"),
        ({"name": "id"}, "column 'id' is the id column; it cannot also be a feature"),
        ({"name": "  "}, "columns[0]: 'name' must be a non-empty string"),
        ({"reason_low": ""}, "column 'a'.reason_low: expected a non-empty string, got ''"),
        ({"reason_high": " "}, "column 'a'.reason_high: expected a non-empty string, got ' '"),
        ({"reason_high": 3}, "column 'a'.reason_high: expected a non-empty string, got 3"),
        (
            {"type": "categorical", "categories": ["x"], "reason_low": "Few"},
            "column 'a': 'reason_low'/'reason_high' apply to numeric and binary columns only",
        ),
        (
            {"group_edges": [5.0]},
            "column 'a': 'group_edges' applies to protected numeric columns only, this one is not protected",
        ),
        (
            {"type": "categorical", "categories": ["x"], "protected": True, "group_edges": [5.0]},
            "column 'a': 'group_edges' applies to protected numeric columns only, this one is categorical",
        ),
        ({"type": "binary", "protected": True, "group_edges": [0.5]}, "only, this one is binary"),
        (
            {"protected": True, "group_edges": []},
            "column 'a'.group_edges: expected a non-empty array of numbers",
        ),
        (
            {"protected": True, "group_edges": 35},
            "column 'a'.group_edges: expected a non-empty array of numbers",
        ),
        (
            {"protected": True, "group_edges": ["35"]},
            "column 'a'.group_edges[0]: expected a number, got '35'",
        ),
        (
            {"protected": True, "group_edges": [1, float("nan")]},
            "column 'a'.group_edges[1]: nan is not a finite",
        ),
        ({"protected": True, "group_edges": [5, 5]}, "'a'.group_edges: edges must be strictly increasing"),
        ({"protected": True, "group_edges": [6, 2]}, "edges must be strictly increasing, got [6.0, 2.0]"),
        (
            {"protected": True, "min": 0, "max": 10, "group_edges": [5, 11]},
            "edge 11.0 is above the column's max 10.0",
        ),
        ({"protected": True, "min": 18, "group_edges": [16]}, "edge 16.0 is below the column's min 18.0"),
    ],
)
def test_contradictory_column_is_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(SchemaError) as err:
        parse_schema(_raw(**change), "my.toml")
    assert message in str(err.value)
    assert str(err.value).startswith("my.toml")


def test_a_binary_column_may_spell_out_its_range() -> None:
    schema = parse_schema(_raw(type="binary", min=0, max=1))
    assert (schema.column("a").min, schema.column("a").max) == (0.0, 1.0)
    assert parse_schema(_raw(type="categorical", categories=[1, 2])).column("a").categories == ("1", "2")


def test_errors_name_the_line_of_the_column(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        _SCHEMA_TOML.replace('["note", "a"]', '["note"]').replace('type = "numeric"\n', "type = 1\n", 2)
    )
    with pytest.raises(SchemaError, match=rf"^{path}:8: column 'b'\.type: 1 is not one of"):
        load_schema(path)


def test_a_folder_or_missing_path_is_not_a_builtin_name(tmp_path: Path) -> None:
    (tmp_path / "schemas").mkdir()
    with pytest.raises(SchemaError) as err:
        resolve_schema(tmp_path / "schemas")
    assert str(err.value) == f"{tmp_path / 'schemas'}: is a folder, not a schema TOML file"
    with pytest.raises(SchemaError) as err:
        resolve_schema(tmp_path / "none" / "sme")
    assert str(err.value) == f"{tmp_path / 'none' / 'sme'}: no such file; expected a schema TOML file"


def test_an_empty_schema_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("# to be written\n")
    with pytest.raises(SchemaError) as err:
        load_schema(path)
    assert str(err.value) == f"{path}: is empty (no TOML keys); expected a schema"


def test_a_schema_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_bytes(b"\xef\xbb\xbf" + _SCHEMA_TOML.replace('["note", "a"]', '["note"]').encode())
    assert [c.name for c in load_schema(path).columns] == ["b", "a"]


_PLAIN = """format_version = 1
name = "t"
version = "1"
id_column = "id"
label_column = "y"
min_rows = 50

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
categories = [
    "x",
    "y",
]
"""


def test_reason_words_and_group_edges_parse_and_dump_byte_stably() -> None:
    assert dump_schema(parse_schema(tomllib.loads(_PLAIN))) == _PLAIN  # files without them: unchanged
    raw = tomllib.loads(_PLAIN)
    raw["columns"][0].update(reason_low="Few", reason_high="Many")
    raw["columns"].append(
        {"name": "age", "dimension": "behaviour", "type": "numeric", "min": 16, "max": 110}
        | {"protected": True, "group_edges": [35, 55.5]}
    )
    schema = parse_schema(raw)
    a, age = schema.column("a"), schema.column("age")
    assert (a.reason_low, a.reason_high, a.group_edges) == ("Few", "Many", ())
    assert age.group_edges == (35.0, 55.5) and (age.reason_low, age.reason_high) == ("", "")
    assert schema.column("kind").reason_low == "" and schema.column("kind").group_edges == ()
    text = dump_schema(schema)
    assert (
        'reason_low = "Few"\nreason_high = "Many"\n' in text
        and "group_edges = [\n    35.0,\n    55.5,\n]" in text
    )
    again = parse_schema(tomllib.loads(text))
    assert again == schema and dump_schema(again) == text
