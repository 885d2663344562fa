"""``fedcredit data`` and ``fedcredit schema``: make, check and split datasets; read schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from federation.errors import FedCreditError
from federation.schema import dump_schema, resolve_schema
from policies.cli_errors import fail

console = Console()
data_app = typer.Typer(
    help="Generate, check and split datasets.", no_args_is_help=True, pretty_exceptions_show_locals=False
)
schema_app = typer.Typer(
    help="Inspect dataset schemas.", no_args_is_help=True, pretty_exceptions_show_locals=False
)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
    app.add_typer(schema_app, name="schema")


@data_app.command("generate")
def data_generate(
    out: Annotated[Path, typer.Argument(help="Output CSV or Parquet file.")],
    rows: Annotated[int, typer.Option(min=100)] = 10_000,
    seed: Annotated[int, typer.Option()] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
) -> None:
    """Generate synthetic SME borrowers with their true probability of default."""
    from federation.datasets.synthetic import generate_sme
    from federation.loading import write_table

    frame = generate_sme(rows, seed=seed)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_table(frame, out, force)
    except (FedCreditError, OSError) as exc:
        raise fail(exc) from exc
    console.print(f"wrote {rows} rows to {out} (default rate {frame['default_12m'].mean():.2%})")


@data_app.command("validate")
def data_validate(
    path: Annotated[Path, typer.Argument(help="CSV or Parquet file.")],
    schema: Annotated[str, typer.Option(help="Schema name (sme, uci_raw, uci_homo) or TOML file.")] = "sme",
) -> None:
    """Check a data file against its schema; lists every problem with column and rows."""
    from federation.loading import load_dataset

    try:
        data = load_dataset(path, resolve_schema(schema))
    except FedCreditError as exc:
        raise fail(exc) from exc
    console.print(
        f"[green]ok[/]: {len(data)} rows, {data.layout.width} model inputs "
        f"in {len(data.layout.dimensions)} dimensions"
    )


@data_app.command("partition")
def data_partition(
    path: Annotated[Path, typer.Argument(help="SME CSV made by `fedcredit data generate`.")],
    out: Annotated[Path, typer.Argument(help="Folder to write one sub-folder per institution into.")],
    institutions: Annotated[int, typer.Option(min=2)] = 5,
    holdout: Annotated[
        float, typer.Option(help="Share of each institution's rows kept as its holdout.")
    ] = 0.25,
    seed: Annotated[int, typer.Option()] = 0,
    force: Annotated[bool, typer.Option("--force", help="Write into OUT even if it is not empty.")] = False,
) -> None:
    """Split SME borrowers into institutions with realistic size, region and industry skew."""
    from federation.datasets.partition import assign_institutions, institution_profiles, write_partition
    from federation.loading import encode_frame, read_table

    try:
        if not 0 <= holdout < 1:  # checked before any folder is made
            raise FedCreditError(f"--holdout {holdout}: the holdout share must be at least 0 and below 1")
        if out.is_file():
            raise FedCreditError(f"{out}: is a file; give a folder for the institutions")
        if out.is_dir() and any(out.iterdir()) and not force:
            raise FedCreditError(f"{out}: is not empty; pass --force to write the institutions into it")
        schema = resolve_schema("sme")
        frame = read_table(path, schema)
        encode_frame(frame, schema, str(path))  # refuse to split a file that is not valid SME data
        assignment = assign_institutions(frame, institutions, seed=seed)
        names = [p.name for p in institution_profiles(institutions)]
        folders = write_partition(frame, assignment, names, out, holdout, seed)
    except (FedCreditError, ValueError) as exc:
        raise fail(exc) from exc
    for k, (name, folder) in enumerate(folders.items()):
        console.print(f"{name:24s} {int((assignment == k).sum()):7d} rows -> {folder}")


@schema_app.command("show")
def schema_show(name: Annotated[str, typer.Argument(help="Schema name or TOML file.")] = "sme") -> None:
    """Print a schema: each column's dimension, type and range."""
    try:
        s = resolve_schema(name)
    except FedCreditError as exc:
        raise fail(exc) from exc
    table = Table(title=f"schema {s.name} {s.version}: id {s.id_column!r}, label {s.label_column!r}")
    for col in ("column", "dimension", "type", "range / categories", "transform", "missing", "protected"):
        table.add_column(col)
    for c in s.columns:
        rng = ", ".join(c.categories) if c.categories else value_range(c.min, c.max)
        table.add_row(c.name, c.dimension, c.type, rng, c.transform, c.missing, "yes" if c.protected else "")
    console.print(table)


def value_range(low: float | None, high: float | None) -> str:
    """A column's valid range in words: ``0 to 10``, ``at least 0``, ``at most 1``, ``any``."""

    def shown(v: float) -> str:
        return f"{v:,.0f}" if float(v).is_integer() else f"{v:g}"

    if low is None and high is None:
        return "any"
    if high is None:
        return f"at least {shown(low)}"  # type: ignore[arg-type]
    if low is None:
        return f"at most {shown(high)}"
    return f"{shown(low)} to {shown(high)}"


@schema_app.command("dump")
def schema_dump(name: Annotated[str, typer.Argument(help="Schema name or TOML file.")] = "sme") -> None:
    """Print a schema as canonical TOML (a starting point for your own dataset)."""
    try:
        typer.echo(dump_schema(resolve_schema(name)), nl=False)
    except FedCreditError as exc:
        raise fail(exc) from exc
