"""Errors a person can act on: each names the file, the column and the rows."""

from __future__ import annotations

from dataclasses import dataclass

MAX_PROBLEMS_SHOWN = 10  # a message lists this many problems, then says how many more
MAX_NAME_SHOWN = 60  # characters of a column name (from a file: any length) shown in a message


def short_name(name: str) -> str:
    """``repr(name)``, cut to a readable length."""
    text = repr(name)
    return text if len(text) <= MAX_NAME_SHOWN else text[: MAX_NAME_SHOWN - 4] + "...'"


class FedCreditError(Exception):
    """Base class of every error FedCredit raises on purpose."""


class SchemaError(FedCreditError):
    """A schema file is malformed or inconsistent."""


@dataclass(frozen=True)
class DataProblem:
    """One thing wrong with a data file."""

    column: str
    message: str
    rows: tuple[int, ...] = ()  # 1-based data rows (header excluded)

    def __str__(self) -> str:
        where = f"column {short_name(self.column)}" if self.column else "file"
        if self.rows:
            shown = ", ".join(str(r) for r in self.rows)
            return f"{where}: {self.message} (first rows: {shown})"
        return f"{where}: {self.message}"


class DataValidationError(FedCreditError):
    """A data file does not satisfy its schema. Lists every problem found (the first few in the message)."""

    def __init__(self, source: str, problems: list[DataProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"  - {p}" for p in problems[:MAX_PROBLEMS_SHOWN]]
        if len(problems) > MAX_PROBLEMS_SHOWN:
            lines.append(f"  - ... and {len(problems) - MAX_PROBLEMS_SHOWN:,} more problem(s)")
        text = "\n".join(lines)
        super().__init__(f"{source}: {len(problems):,} problem(s) with the data:\n{text}")

    def __reduce__(self) -> tuple[object, ...]:  # pickled across processes (a simulation's nodes)
        return (DataValidationError, (self.source, self.problems))


class DataFileError(DataValidationError):
    """A data file cannot be read as a table at all: absent, a folder, the wrong format, damaged.

    One line: ``<file>: <what is wrong>``. It is a :class:`DataValidationError` with one
    whole-file problem, so callers that summarise ``problems`` keep working.
    """

    def __init__(self, source: str, message: str, rows: tuple[int, ...] = ()) -> None:
        self.source = source
        self.problems = [DataProblem("", message, rows)]
        shown = f" (first rows: {', '.join(str(r) for r in rows)})" if rows else ""
        FedCreditError.__init__(self, f"{source}: {message}{shown}")

    def __reduce__(self) -> tuple[object, ...]:
        problem = self.problems[0]
        return (DataFileError, (self.source, problem.message, problem.rows))
