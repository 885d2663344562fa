"""``fedcredit score``: score applicants with a trained model, each dimension's part shown."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from coordinator.settings import coordinator_settings
from federation.errors import FedCreditError
from policies.cli_errors import fail

console = Console()
EXAMPLE_APPLICANT = Path(__file__).resolve().parents[1] / "examples" / "grocery_store_couple.csv"
SHOWN_APPLICANTS = 20


def _resolve_model_path(model: str) -> Path:
    if model == "latest":
        runs = sorted(p for p in coordinator_settings().runs_dir.glob("*/model.pt"))
        if not runs:
            raise FileNotFoundError(
                f"no runs under {coordinator_settings().runs_dir}; run `fedcredit simulate` first"
            )
        return runs[-1]
    path = Path(model)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        candidate = coordinator_settings().runs_dir / model / "model.pt"
        if candidate.is_file():
            return candidate
        raise FileNotFoundError(
            f"no model at {model!r} (give a model file, a run folder, a run id or 'latest')"
        )
    return path


def registered_sha256(model_path: Path) -> str | None:
    """The model's sha256 as its run's report recorded it (None outside a run folder)."""
    report = model_path.parent / "report.json"
    if not report.is_file():
        return None
    try:
        recorded = json.loads(report.read_text(encoding="utf-8"))["model"]["sha256"]
    except (ValueError, KeyError, TypeError):
        raise FedCreditError(f"{report}: not a run report, or it records no model sha256") from None
    return str(recorded)


def score_command(
    applicants: Annotated[
        Path,
        typer.Argument(
            help="CSV or Parquet file of applicants (no label needed).",
            show_default="examples/grocery_store_couple.csv",
        ),
    ] = EXAMPLE_APPLICANT,
    model: Annotated[str, typer.Option(help="Model file, run folder, run id, or 'latest'.")] = "latest",
    schema: Annotated[str | None, typer.Option(help="Schema name or file (default: the model's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    out: Annotated[
        Path | None,
        typer.Option(help="Write every score to this CSV or Parquet file (one row per applicant)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")] = False,
) -> None:
    """Score applicants with a trained model: probability of default, points, and each dimension's part.

    Up to 20 applicants are shown as tables; more are summarised (use --out or --json for all)."""
    import numpy as np

    from federation.loading import load_dataset, write_table
    from federation.model import load_model
    from federation.schema import resolve_schema
    from federation.scoring import score

    try:
        model_path = _resolve_model_path(model)
        net, card = load_model(model_path, expected_sha256=registered_sha256(model_path))
        trained = f"{card.schema_name} {card.schema_version}"
        given = resolve_schema(schema) if schema is not None else None
        used = card.schema(given, f"--schema {schema} (model {model_path})" if schema else "")
        data = load_dataset(applicants, used, require_label=False, min_rows=1)
        if data.layout != net.layout:
            raise FedCreditError(
                f"{applicants}: under schema {trained} the applicants' columns do not fit the model "
                f"{model_path}; check the file against `fedcredit schema show`"
            )
    except (FedCreditError, OSError, ValueError) as exc:
        raise fail(exc) from exc
    result = score(net, data)
    if out is not None:
        try:
            write_table(result.frame(), out, force)
        except (FedCreditError, OSError) as exc:
            raise fail(exc) from exc
        console.print(f"wrote {len(result.ids)} scores to {out}", highlight=False, soft_wrap=True)
    if as_json:
        sys.stdout.write(json.dumps({"model": str(model_path), "scores": result.records()}) + "\n")
        return
    if out is not None:
        return
    if len(result.ids) > SHOWN_APPLICANTS:
        pd_ = result.probability_of_default
        p5, p50, p95 = np.percentile(result.points, [5, 50, 95])
        console.print(
            f"scored {len(result.ids)} applicants (model {model_path}): mean probability of default "
            f"{pd_.mean():.2%}, points 5%/50%/95% {p5:.1f} / {p50:.1f} / {p95:.1f}; "
            "every score with --out FILE or --json",
            highlight=False,
        )
        return
    for i in range(len(result.ids)):
        row = result.row(i)
        table = Table(title=f"applicant {row['id']}  (model {model_path})")
        table.add_column("dimension")
        table.add_column("logit contribution", justify="right")
        table.add_column("effect")
        contributions = row["contributions"]
        assert isinstance(contributions, dict)
        for dim, value in contributions.items():
            table.add_row(dim, f"{value:+.3f}", "riskier than average" if value > 0 else "safer than average")
        table.add_row("average borrower (baseline)", f"{row['baseline']:+.3f}", "")
        console.print(table)
        console.print(
            f"probability of default [bold]{row['probability_of_default']:.2%}[/]   "
            f"points [bold]{row['points']}[/]"
        )


def register(app: typer.Typer) -> None:
    app.command("score")(score_command)
