"""Errors a person can act on: each names the file, the column and the rows."""

from __future__ import annotations

from dataclasses import dataclass


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
        where = f"column {self.column!r}" if self.column else "file"
        if self.rows:
            shown = ", ".join(str(r) for r in self.rows)
            return f"{where}: {self.message} (first rows: {shown})"
        return f"{where}: {self.message}"


class DataValidationError(FedCreditError):
    """A data file does not satisfy its schema. Lists every problem found."""

    def __init__(self, source: str, problems: list[DataProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) with the data:\n{lines}")
