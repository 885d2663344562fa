"""Reading a TOML file (a policy, a dataset schema) into a table, or a one-line error.

Every way a file can fail to be TOML is reported as one line that names the file
and, where TOML says so, the line: missing, a folder, unreadable, not UTF-8,
not valid TOML, empty. Callers pass their own error class, so a policy stays a
``PolicyError`` and a schema a ``SchemaError``; this module imports nothing of
FedCredit (``policies`` is the lowest package).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ErrorFactory = Callable[[str], Exception]

_BOM = "\ufeff"
_TOML_POSITION = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")
_TABLE_HEADER = re.compile(r"^\s*\[")


class TomlFileError(Exception):
    """A TOML file is missing, unreadable or not valid TOML (when the caller names no error class)."""


@dataclass(frozen=True)
class TomlFile:
    """A parsed TOML file: its bytes (a policy's identity is their sha256), text and table."""

    source: str
    data: bytes
    text: str
    table: dict[str, Any]


def read_bytes(
    path: str | Path, what: str, error: ErrorFactory = TomlFileError, missing: str | None = None
) -> bytes:
    """The bytes of the ``what`` TOML file at ``path``; ``missing`` replaces the not-found message."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{path}: is a folder, not a {what} TOML file")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: {missing or f'no such file; expected a {what} TOML file'}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} file ({exc.strerror or type(exc).__name__})") from None


def parse_toml(data: bytes, source: str, what: str, error: ErrorFactory = TomlFileError) -> TomlFile:
    """Decode and parse ``data``; every failure is one line naming ``source`` (and the line)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{source}: not UTF-8 text (byte {exc.start}); a {what} is a TOML file") from None
    # a byte-order mark is how some editors say "UTF-8"; TOML itself does not allow one
    body = text.removeprefix(_BOM)
    try:
        table = tomllib.loads(body)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{source}: {_toml_problem(str(exc), body)}") from None
    if not table:
        raise error(f"{source}: is empty (no TOML keys); expected a {what}")
    return TomlFile(source, data, body, table)


def read_toml(
    path: str | Path, what: str, error: ErrorFactory = TomlFileError, missing: str | None = None
) -> TomlFile:
    """Read and parse the ``what`` TOML file at ``path``."""
    return parse_toml(read_bytes(path, what, error, missing), str(path), what, error)


def load_toml(path: str | Path, what: str, error: ErrorFactory = TomlFileError) -> dict[str, Any]:
    """The table of the ``what`` TOML file at ``path``, or ``error`` with one line naming the file."""
    return read_toml(path, what, error).table


def _toml_problem(message: str, text: str) -> str:
    """``tomllib``'s message as "not valid TOML at line N, column M: what" (one line)."""
    first = message.splitlines()[0] if message else "invalid TOML"
    match = _TOML_POSITION.search(first)
    if match is None:
        return f"not valid TOML: {first}"
    reason = first[: match.start()]
    reason = reason[:1].lower() + reason[1:]
    if match.group(1) is None:
        return f"not valid TOML at the end of the file (line {max(1, len(text.splitlines()))}): {reason}"
    return f"not valid TOML at line {match.group(1)}, column {match.group(2)}: {reason}"


def top_level_key_line(text: str, key: str) -> int | None:
    """Line (from 1) where top-level ``key`` is set, if it is written as ``key = ...``."""
    pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        if _TABLE_HEADER.match(line):
            return None
        if pattern.match(line):
            return number
    return None


def array_table_lines(text: str, name: str) -> list[int]:
    """Lines (from 1) of each ``[[name]]`` header, in order."""
    pattern = re.compile(rf"^\s*\[\[\s*[\"']?{re.escape(name)}[\"']?\s*\]\]\s*(#.*)?$")
    return [n for n, line in enumerate(text.splitlines(), start=1) if pattern.match(line)]
