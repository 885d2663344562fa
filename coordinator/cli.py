"""``fedcredit``: the command line of FedCredit."""

from __future__ import annotations

import json
import secrets
import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from clients.cli import node_app
from coordinator.federation_policy import (
    DEMO_FEDERATION_POLICY,
    DEMO_FEDERATION_TRUST,
    load_federation_policy,
)
from federation.errors import FedCreditError
from federation.loading import encode_frame, load_dataset, read_table
from federation.model import ModelConfig, load_model
from federation.partition import assign_institutions, institution_profiles, write_partition
from federation.scenarios import Federation, sme_federation, uci_federation
from federation.schema import dump_schema, resolve_schema
from federation.scoring import score
from federation.synthetic import generate_sme
from federation.training import TrainConfig
from policies.cli import register as register_policy_commands
from policies.documents import FederationPolicy, PolicyError

app = typer.Typer(
    help="FedCredit: train a four-dimension credit-risk model across institutions without pooling data.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
data_app = typer.Typer(help="Generate, check and split datasets.", no_args_is_help=True)
schema_app = typer.Typer(help="Inspect dataset schemas.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(schema_app, name="schema")
register_policy_commands(app)
app.add_typer(node_app, name="node")

console = Console()
RUNS_DIR = Path("var/runs")
EXAMPLE_APPLICANT = Path("examples/grocery_store_couple.csv")


class DatasetChoice(StrEnum):
    sme = "sme"
    uci = "uci"


class StrategyChoice(StrEnum):
    fedavg = "fedavg"
    fedprox = "fedprox"


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[bold red]error:[/] {exc}")
    return typer.Exit(code=2)


def _new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def _run_federation(
    federation: Federation,
    run_dir: Path,
    run_id: str,
    rounds: int,
    strategy: str,
    seed: int,
    local_epochs: int,
    purpose: str = "credit_underwriting",
    min_institutions: int = 3,
    epsilon: float | None = None,
    secure_aggregation: bool = True,
    federation_policy: FederationPolicy | None = None,
) -> dict[str, object]:
    # Flower and Ray load only when a federation actually runs
    from coordinator.federation_policy import apply_federation_policy
    from coordinator.report import write_report
    from coordinator.server_app import RunSettings
    from coordinator.simulation import SimulatedNode, run_simulated_federation, with_policies

    settings = RunSettings(
        schema=federation.schema,
        rounds=rounds,
        strategy=strategy,
        train=TrainConfig(epochs=local_epochs),
        model=ModelConfig(),
        seed=seed,
        min_institutions=min(min_institutions, len(federation.institutions)),
        test_path=federation.test_path,
        run_id=run_id,
        purpose=purpose,
        epsilon=epsilon,
        secure_aggregation=secure_aggregation,
    )
    if federation_policy is not None:
        settings = apply_federation_policy(settings, federation_policy)
        console.print(
            f"federation policy {federation_policy.header.id} v{federation_policy.header.version}: "
            f"{settings.strategy}, at least {settings.min_institutions} institutions, "
            f"secure aggregation {'on' if settings.secure_aggregation else 'off'}"
            + (
                f", client-level DP (noise x{settings.client_dp.noise_multiplier:g})"
                if settings.client_dp
                else ""
            )
        )
    nodes = with_policies(
        [SimulatedNode(name, path, federation.schema) for name, path in federation.institutions.items()],
        run_dir,
    )
    started = time.perf_counter()
    with Progress(
        TextColumn("[bold]federated training"),
        BarColumn(),
        TextColumn("round {task.completed}/{task.total}"),
        TextColumn("{task.fields[auc]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("train", total=rounds, auc="starting Flower simulation...")

        def on_round(server_round: int, metrics: dict[str, float]) -> None:
            progress.update(task, completed=server_round, auc=f"test AUC {metrics['auc']:.4f}")

        outcome = run_simulated_federation(nodes, settings, on_round=on_round)
    return write_report(
        run_dir,
        run_id,
        settings,
        outcome,
        {"seconds": round(time.perf_counter() - started, 2), "dataset": federation.schema},
    )


def _print_report(report: dict[str, object], run_dir: Path) -> None:
    final = report.get("final_test_metrics") or {}
    assert isinstance(final, dict)
    failures = report.get("failures") or []
    assert isinstance(failures, list)
    refused: dict[str, dict[str, object]] = {}
    for failure in failures:
        if "institution" in failure:
            refused.setdefault(str(failure["institution"]), failure)
    for name, failure in sorted(refused.items()):
        rules = failure["rules"]
        assert isinstance(rules, list)
        console.print(
            f"[bold red]refused[/] by [bold]{name}[/]'s policy ({', '.join(rules)}): "
            f"{failure['reason']}; the run went on without it"
        )
    table = Table(title=f"run {report['run_id']}")
    table.add_column("institution")
    table.add_column("train rows", justify="right")
    table.add_column("holdout AUC", justify="right")
    institutions = report["institutions"]
    assert isinstance(institutions, dict)
    for name, inst in sorted(institutions.items()):
        last = inst["rounds"][-1] if inst["rounds"] else {}
        auc = last.get("auc")
        table.add_row(name, str(inst["train_rows"]), "-" if auc is None else f"{auc:.4f}")
    console.print(table)
    if final:
        console.print(
            f"test set: AUC {final['auc']:.4f}  KS {final['ks']:.4f}  "
            f"Brier {final['brier']:.4f}  ECE {final['ece']:.4f}"
        )
    console.print(
        f"report: {run_dir / 'report.json'}  plot: {run_dir / 'report.png'}  model: {run_dir / 'model.pt'}"
    )


@app.command()
def simulate(
    dataset: Annotated[
        DatasetChoice,
        typer.Option(help="sme: synthetic small businesses; uci: UCI Taiwan (FATE homo split)."),
    ] = DatasetChoice.sme,
    institutions: Annotated[int, typer.Option(min=2, help="Number of institutions (nodes).")] = 5,
    rounds: Annotated[int, typer.Option(min=1, help="Federated rounds.")] = 10,
    strategy: Annotated[StrategyChoice, typer.Option(help="Aggregation strategy.")] = StrategyChoice.fedavg,
    rows: Annotated[
        int, typer.Option(min=1000, help="sme only: borrowers to generate across all institutions.")
    ] = 30_000,
    label_skew: Annotated[
        float | None,
        typer.Option(help="sme only: split by Dirichlet(alpha) label skew instead of by market profile."),
    ] = None,
    local_epochs: Annotated[int, typer.Option(min=1, help="Local epochs per round.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed for data, split and training.")] = 0,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="uci only: folder with the FATE credit files (default: $FEDCREDIT_DATA_DIR)."),
    ] = None,
    epsilon: Annotated[
        float | None,
        typer.Option(
            help="Record-level differential privacy: epsilon per institution for the whole run (delta 1e-5)."
        ),
    ] = None,
    secure_aggregation: Annotated[
        bool, typer.Option(help="SecAgg+: the coordinator sees only the sum of the institutions' updates.")
    ] = True,
    federation_policy: Annotated[
        Path | None,
        typer.Option(
            help="Signed federation policy that sets strategy, minimum institutions, secure aggregation and DP."
        ),
    ] = None,
    trust: Annotated[
        Path | None, typer.Option(help="Public key file or folder trusted to sign the federation policy.")
    ] = None,
) -> None:
    """Run a federated training on Flower's simulation engine and write a run report under var/runs/<id>/."""
    run_id = _new_run_id()
    run_dir = RUNS_DIR / run_id
    try:
        policy = None
        if federation_policy is not None:
            if trust is None:
                raise PolicyError(
                    "--federation-policy needs --trust: the key(s) its signature is checked against"
                )
            policy = load_federation_policy(federation_policy, trust)
        if dataset is DatasetChoice.sme:
            federation = sme_federation(run_dir, institutions, rows, seed=seed, label_skew_alpha=label_skew)
        else:
            federation = uci_federation(run_dir, institutions, data_dir=data_dir, seed=seed)
        report = _run_federation(
            federation,
            run_dir,
            run_id,
            rounds,
            strategy.value,
            seed,
            local_epochs,
            epsilon=epsilon,
            secure_aggregation=secure_aggregation,
            federation_policy=policy,
        )
    except (FedCreditError, FileNotFoundError, ValueError, PolicyError) as exc:
        raise _fail(exc) from exc
    _print_report(report, run_dir)


def _resolve_model_path(model: str) -> Path:
    if model == "latest":
        runs = sorted(p for p in RUNS_DIR.glob("*/model.pt"))
        if not runs:
            raise FileNotFoundError(f"no runs under {RUNS_DIR}; run `fedcredit simulate` first")
        return runs[-1]
    path = Path(model)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        candidate = RUNS_DIR / model / "model.pt"
        if candidate.is_file():
            return candidate
        raise FileNotFoundError(
            f"no model at {model!r} (give a model file, a run folder, a run id or 'latest')"
        )
    return path


@app.command("score")
def score_command(
    applicants: Annotated[
        Path, typer.Argument(help="CSV or Parquet file of applicants (no label needed).")
    ] = EXAMPLE_APPLICANT,
    model: Annotated[str, typer.Option(help="Model file, run folder, run id, or 'latest'.")] = "latest",
    schema: Annotated[str | None, typer.Option(help="Schema name or file (default: the model's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Score applicants with a trained model: probability of default, points, and each dimension's part."""
    try:
        model_path = _resolve_model_path(model)
        net, meta = load_model(model_path)
        data = load_dataset(
            applicants, resolve_schema(schema or meta["schema"]), require_label=False, min_rows=1
        )
    except (FedCreditError, FileNotFoundError, ValueError) as exc:
        raise _fail(exc) from exc
    result = score(net, data)
    rows = [result.row(i) for i in range(len(result.ids))]
    if as_json:
        console.print_json(json.dumps({"model": str(model_path), "scores": rows}))
        return
    for row in rows:
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


@app.command()
def demo(
    rounds: Annotated[int, typer.Option(min=1)] = 10,
    rows: Annotated[int, typer.Option(min=1000)] = 30_000,
) -> None:
    """End-to-end demo: 5 institutions train on synthetic SME data, then the grocery couple is scored."""
    console.rule("FedCredit demo: 5 institutions, synthetic small-business data")
    simulate(
        dataset=DatasetChoice.sme,
        institutions=5,
        rounds=rounds,
        strategy=StrategyChoice.fedavg,
        rows=rows,
        label_skew=None,
        local_epochs=1,
        seed=0,
        data_dir=None,
        federation_policy=DEMO_FEDERATION_POLICY,
        trust=DEMO_FEDERATION_TRUST,
    )
    console.rule("Scoring the grocery-store couple (examples/grocery_store_couple.csv)")
    score_command(applicants=EXAMPLE_APPLICANT, model="latest", schema=None, as_json=False)


@data_app.command("generate")
def data_generate(
    out: Annotated[Path, typer.Argument(help="Output CSV or Parquet file.")],
    rows: Annotated[int, typer.Option(min=100)] = 10_000,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Generate synthetic SME borrowers with their true probability of default."""
    frame = generate_sme(rows, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() in (".parquet", ".pq"):
        frame.to_parquet(out, index=False)
    else:
        frame.to_csv(out, index=False)
    console.print(f"wrote {rows} rows to {out} (default rate {frame['default_12m'].mean():.2%})")


@data_app.command("validate")
def data_validate(
    path: Annotated[Path, typer.Argument(help="CSV or Parquet file.")],
    schema: Annotated[str, typer.Option(help="Schema name (sme, uci_raw, uci_homo) or TOML file.")] = "sme",
) -> None:
    """Check a data file against its schema; lists every problem with column and rows."""
    try:
        data = load_dataset(path, resolve_schema(schema))
    except FedCreditError as exc:
        raise _fail(exc) from exc
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
) -> None:
    """Split SME borrowers into institutions with realistic size, region and industry skew."""
    try:
        schema = resolve_schema("sme")
        frame = read_table(path, schema)
        encode_frame(frame, schema, str(path))  # refuse to split a file that is not valid SME data
        assignment = assign_institutions(frame, institutions, seed=seed)
        names = [p.name for p in institution_profiles(institutions)]
        folders = write_partition(frame, assignment, names, out, holdout, seed)
    except (FedCreditError, ValueError) as exc:
        raise _fail(exc) from exc
    for k, (name, folder) in enumerate(folders.items()):
        console.print(f"{name:24s} {int((assignment == k).sum()):7d} rows -> {folder}")


@schema_app.command("show")
def schema_show(name: Annotated[str, typer.Argument(help="Schema name or TOML file.")] = "sme") -> None:
    """Print a schema: each column's dimension, type and range."""
    try:
        s = resolve_schema(name)
    except FedCreditError as exc:
        raise _fail(exc) from exc
    table = Table(title=f"schema {s.name} {s.version}: id {s.id_column!r}, label {s.label_column!r}")
    for col in ("column", "dimension", "type", "range / categories", "transform", "missing", "protected"):
        table.add_column(col)
    for c in s.columns:
        rng = ", ".join(c.categories) if c.categories else f"[{c.min}, {c.max}]"
        table.add_row(c.name, c.dimension, c.type, rng, c.transform, c.missing, "yes" if c.protected else "")
    console.print(table)


@schema_app.command("dump")
def schema_dump(name: Annotated[str, typer.Argument(help="Schema name or TOML file.")] = "sme") -> None:
    """Print a schema as canonical TOML (a starting point for your own dataset)."""
    try:
        typer.echo(dump_schema(resolve_schema(name)), nl=False)
    except FedCreditError as exc:
        raise _fail(exc) from exc
