"""``fedcredit``: the command line of FedCredit."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from clients.cli import node_app
from clients.policy_guard import NODE_DATA_INVALID
from coordinator.federation_policy import (
    DEMO_FEDERATION_POLICY,
    DEMO_FEDERATION_TRUST,
    Asked,
    apply_federation_policy,
    check_members,
    public_key_of,
    verify_federation_policy,
)
from federation.errors import FedCreditError
from federation.loading import encode_frame, load_dataset, read_table, write_table
from federation.model import ModelConfig, load_model
from federation.partition import assign_institutions, institution_profiles, write_partition
from federation.scenarios import Federation, sme_federation, uci_federation
from federation.schema import dump_schema, resolve_schema
from federation.scoring import score
from federation.synthetic import generate_sme
from federation.training import TrainConfig
from policies.audit import describe_db_error, mask_passwords, var_dir
from policies.cli import register as register_policy_commands
from policies.demo_keys import DEMO_COORDINATOR_KEY, EXAMPLES, demo_key_name
from policies.documents import FederationPolicy, PolicyError
from policies.signing import generate_keypair

if TYPE_CHECKING:  # Flower loads only when a federation actually runs
    from coordinator.server_app import RunSettings
    from coordinator.simulation import SimulatedNode

# Never print local variables in a traceback: they hold passwords, keys and applicants' data.
# (Typer applies the root app's setting to every sub-command.)
app = typer.Typer(
    help="FedCredit: train a four-dimension credit-risk model across institutions without pooling data.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(
    help="Generate, check and split datasets.", no_args_is_help=True, pretty_exceptions_show_locals=False
)
schema_app = typer.Typer(
    help="Inspect dataset schemas.", no_args_is_help=True, pretty_exceptions_show_locals=False
)
app.add_typer(data_app, name="data")
app.add_typer(schema_app, name="schema")
register_policy_commands(app)
app.add_typer(node_app, name="node")

console = Console()
EXAMPLE_APPLICANT = Path("examples/grocery_store_couple.csv")


class DatasetChoice(StrEnum):
    sme = "sme"
    uci = "uci"


class StrategyChoice(StrEnum):
    fedavg = "fedavg"
    fedprox = "fedprox"


DATASET_SCHEMAS = {DatasetChoice.sme: "sme", DatasetChoice.uci: "uci_homo"}


EXPECTED_ERRORS = (FedCreditError, PolicyError, OSError, SQLAlchemyError)


def error_line(exc: BaseException) -> str:
    """``exc`` as one line fit to print: a database error as the driver's first line (never the
    SQL or its parameters), and any password in a URL masked."""
    if isinstance(exc, SQLAlchemyError):
        return f"database: {describe_db_error(exc)}"
    text = ""
    for line in (raw.strip().removeprefix("- ") for raw in str(exc).splitlines()):
        if line:
            text += line if not text else (" " if text.endswith(":") else "; ") + line
    return mask_passwords(text or type(exc).__name__)


def _fail(exc: BaseException | str) -> typer.Exit:
    """One line on stderr (never wrapped, never markup), exit code 2."""
    typer.echo(f"error: {exc if isinstance(exc, str) else error_line(exc)}", err=True)
    return typer.Exit(code=2)


def _run_federation(
    federation: Federation, settings: RunSettings, nodes: list[SimulatedNode], run_dir: Path
) -> dict[str, object]:
    # Flower and Ray load only when a federation actually runs
    from coordinator.report import write_report
    from coordinator.simulation import run_simulated_federation

    started = time.perf_counter()
    with Progress(
        TextColumn("[bold]federated training"),
        BarColumn(),
        TextColumn("round {task.completed}/{task.total}"),
        TextColumn("{task.fields[auc]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("train", total=settings.rounds, auc="starting Flower simulation...")

        def on_round(server_round: int, metrics: dict[str, float]) -> None:
            progress.update(task, completed=server_round, auc=f"test AUC {metrics['auc']:.4f}")

        outcome = run_simulated_federation(nodes, settings, on_round=on_round)
    return write_report(
        run_dir,
        settings.run_id,
        settings,
        outcome,
        {"seconds": round(time.perf_counter() - started, 2), "dataset": federation.schema},
    )


def _print_report(report: dict[str, object], run_dir: Path) -> None:
    if report.get("demo"):
        console.print(f"[bold yellow]{report['demo']}[/]", highlight=False)
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
        what = "failed at" if NODE_DATA_INVALID in rules else "refused by"
        console.print(
            f"[bold red]{what}[/] [bold]{name}[/] ({', '.join(rules)}): "
            f"{failure['reason']}; the run went on without it"
        )
    table = Table(title=f"run {report['run_id']}")
    table.add_column("institution")
    table.add_column("train rows", justify="right")
    table.add_column("holdout AUC", justify="right")
    institutions = report["institutions"]
    assert isinstance(institutions, dict)
    spent = {
        name: max((r["epsilon_spent"] for r in inst["rounds"] if "epsilon_spent" in r), default=None)
        for name, inst in institutions.items()
    }
    with_dp = any(v is not None for v in spent.values())
    if with_dp:
        table.add_column("epsilon spent", justify="right")
    for name, inst in sorted(institutions.items()):
        last = inst["rounds"][-1] if inst["rounds"] else {}
        auc = last.get("auc")
        cells = [name, str(inst["train_rows"]), "-" if auc is None else f"{auc:.4f}"]
        if with_dp:
            cells.append("-" if spent[name] is None else f"{spent[name]:.3f}")
        table.add_row(*cells)
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
    rounds: Annotated[
        int | None,
        typer.Option(
            min=1, help="Federated rounds [default: 10, or the federation policy's].", show_default=False
        ),
    ] = None,
    strategy: Annotated[
        StrategyChoice | None,
        typer.Option(
            help="Aggregation strategy [default: fedavg, or the federation policy's].", show_default=False
        ),
    ] = None,
    min_institutions: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Institutions each round needs [default: 3 (or all, when fewer), or the federation policy's].",
            show_default=False,
        ),
    ] = None,
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
        bool | None,
        typer.Option(
            "--secure-aggregation/--no-secure-aggregation",
            help="SecAgg+: the coordinator sees only the sum of the institutions' updates "
            "[default: on, or as the federation policy says].",
            show_default=False,
        ),
    ] = None,
    federation_policy: Annotated[
        Path | None,
        typer.Option(
            help="Signed federation policy: sets members, strategy, rounds, minimum institutions, "
            "secure aggregation and DP; an option given that conflicts with it is an error."
        ),
    ] = None,
    trust: Annotated[
        Path | None, typer.Option(help="Public key file or folder trusted to sign the federation policy.")
    ] = None,
    coordinator_key: Annotated[
        Path | None,
        typer.Option(
            help="Private key that signs the training requests [default: var/keys/sandbox_coordinator.key, made on first use; "
            "with a federation policy, the demo coordinator's].",
            show_default=False,
        ),
    ] = None,
    node_keys: Annotated[
        Path | None,
        typer.Option(
            help="Folder with each institution's private key as <institution>.key: the keys its federation "
            "policy lists for the members [default: demo keys or keys made for the run].",
            show_default=False,
        ),
    ] = None,
    allow_demo_keys: Annotated[
        bool,
        typer.Option(
            "--allow-demo-keys",
            help="Run with FedCredit's published demo keys (policies/examples/keys), which anyone can "
            "sign with: for demos only; the report says DEMO.",
        ),
    ] = False,
) -> None:
    """Run a federated training on Flower's simulation engine and write a run report under var/runs/<id>/."""
    from coordinator.server_app import RunSettings, new_run_id
    from coordinator.simulation import SimulatedNode, members_of, with_policies

    run_id = new_run_id()
    run_dir = runs_dir() / run_id
    asked = Asked(strategy.value if strategy else None, rounds, min_institutions, secure_aggregation, epsilon)
    try:
        policy, signer = None, None
        if federation_policy is not None:
            if trust is None:
                raise PolicyError(
                    "--federation-policy needs --trust: the key(s) its signature is checked against"
                )
            policy, signer = verify_federation_policy(federation_policy, trust)
        planned = [p.name for p in institution_profiles(institutions)] if dataset is DatasetChoice.sme else []
        key = coordinator_key or (DEMO_COORDINATOR_KEY if policy is not None else None)
        coordinator = public_key_of(key) if key is not None else None
        # the example institution policies accept only the demo coordinator's requests
        use_examples = coordinator is not None and demo_key_name(coordinator) == "demo_coordinator"
        settings = RunSettings(
            schema=DATASET_SCHEMAS[dataset],
            rounds=asked.rounds or 10,
            strategy=asked.strategy or StrategyChoice.fedavg.value,
            train=TrainConfig(epochs=local_epochs),
            model=ModelConfig(),
            seed=seed,
            min_institutions=asked.min_institutions or min(3, institutions),
            run_id=run_id,
            epsilon=asked.epsilon,
            secure_aggregation=asked.secure_aggregation is not False,
            demo_keys=_demo_keys_in_use(
                allow_demo_keys, key, coordinator, federation_policy, signer, planned, use_examples
            ),
        )
        if policy is not None:  # everything the policy decides is checked before any data is made
            settings = apply_federation_policy(settings, policy, asked, planned, coordinator)
            _print_policy(policy, settings)
        if dataset is DatasetChoice.sme:
            federation = sme_federation(run_dir, institutions, rows, seed=seed, label_skew_alpha=label_skew)
        else:
            federation = uci_federation(run_dir, institutions, data_dir=data_dir, seed=seed)
            if policy is not None:
                check_members(policy, federation.institutions)
        if key is None:  # the operator's own sandbox: one coordinator key, made on first use
            key = sandbox_coordinator_key()
            coordinator = public_key_of(key)
        settings = replace(settings, coordinator_key=key, test_path=federation.test_path)
        nodes = with_policies(
            [
                SimulatedNode(name, path, federation.schema, node_key=_node_key(node_keys, name))
                for name, path in federation.institutions.items()
            ],
            run_dir,
            use_examples=use_examples,
            coordinator_key=coordinator,
        )
        if policy is None:  # the operator's own sandbox: its nodes are the members
            settings = replace(settings, members=members_of(nodes))
        report = _run_federation(federation, settings, nodes, run_dir)
    except (FedCreditError, PolicyError, OSError, ValueError) as exc:
        raise _fail(exc) from exc
    _print_report(report, run_dir)
    failed = node_failures(report)
    if failed:
        raise _fail(
            f"{len(failed)} node(s) failed and the run went on without them: {'; '.join(failed)} "
            f"(see {run_dir / 'report.json'})"
        )


def node_failures(report: dict[str, object]) -> list[str]:
    """Nodes that failed (not a policy's refusal): a node error, or data its schema refuses; each once."""
    failures = report.get("failures") or []
    assert isinstance(failures, list)
    seen: dict[str, str] = {}
    for f in failures:
        rules = f.get("rules")
        if rules is None or NODE_DATA_INVALID in rules:
            who = str(f.get("institution", "a node"))
            seen.setdefault(f"{who}: {f['reason']}", who)
    return list(seen)


def _node_key(folder: Path | None, institution: str) -> Path | None:
    if folder is None:
        return None
    path = folder / f"{institution}.key"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no private key for institution {institution} (--node-keys)")
    return path


SHOWN_APPLICANTS = 20


def runs_dir() -> Path:
    """Where runs are written: ``var/runs`` of the project (or of ``$FEDCREDIT_VAR_DIR``), from any folder."""
    return var_dir() / "runs"


def sandbox_coordinator_key() -> Path:
    """The coordinator key of the operator's own simulations (``var/keys/sandbox_coordinator.key``).

    Made once, so every sandbox run's audit heads verify against one public key.
    """
    keys = var_dir() / "keys"
    if not (keys / "sandbox_coordinator.key").is_file():
        generate_keypair(keys, "sandbox_coordinator", comment="made by fedcredit simulate for sandbox runs")
    return keys / "sandbox_coordinator.key"


def _print_policy(policy: FederationPolicy, settings: RunSettings) -> None:
    console.print(
        f"federation policy {policy.header.id} v{policy.header.version}: "
        f"{settings.strategy}, {settings.rounds} rounds, at least {settings.min_institutions} institutions, "
        f"secure aggregation {'on' if settings.secure_aggregation else 'off'}"
        + (
            f", client-level DP (noise x{settings.client_dp.noise_multiplier:g})"
            if settings.client_dp
            else ""
        ),
        highlight=False,
    )


def _demo_keys_in_use(
    allowed: bool,
    key: Path | None,
    coordinator: str | None,
    federation_policy: Path | None,
    signer: str | None,
    institutions: list[str],
    use_examples: bool,
) -> bool:
    """Whether the run uses the published demo keys; an error unless ``allowed`` (--allow-demo-keys):
    anyone can sign with them."""
    found = []
    if coordinator is not None and (name := demo_key_name(coordinator)):
        found.append(f"the coordinator key {key} is the demo key {name}")
    if signer is not None and (name := demo_key_name(signer)):
        found.append(f"the federation policy {federation_policy} is trusted via the demo key {name}")
    examples = [n for n in institutions if use_examples and (EXAMPLES / f"{n}.toml").is_file()]
    if examples:
        found.append(f"the example policies of {', '.join(examples)} are signed with demo keys")
    if found and not allowed:
        raise PolicyError(
            "refusing FedCredit's published demo keys, which anyone can sign with: "
            + "; ".join(found)
            + ". Pass --allow-demo-keys for a demo run, or use your own keys "
            "(`fedcredit keys generate`, then --coordinator-key and --trust)"
        )
    return bool(found)


def _resolve_model_path(model: str) -> Path:
    if model == "latest":
        runs = sorted(p for p in runs_dir().glob("*/model.pt"))
        if not runs:
            raise FileNotFoundError(f"no runs under {runs_dir()}; run `fedcredit simulate` first")
        return runs[-1]
    path = Path(model)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        candidate = runs_dir() / model / "model.pt"
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
    out: Annotated[
        Path | None,
        typer.Option(help="Write every score to this CSV or Parquet file (one row per applicant)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")] = False,
) -> None:
    """Score applicants with a trained model: probability of default, points, and each dimension's part.

    Up to 20 applicants are shown as tables; more are summarised (use --out or --json for all)."""
    try:
        model_path = _resolve_model_path(model)
        try:
            net, meta = load_model(model_path)
        except (OSError, ValueError):
            raise
        except Exception as exc:  # torch raises several unrelated types for a file that is not a model
            raise FedCreditError(f"{model_path}: not a FedCredit model file ({type(exc).__name__})") from None
        used = resolve_schema(schema or meta["schema"])
        data = load_dataset(applicants, used, require_label=False, min_rows=1)
        if data.layout != net.layout:
            raise FedCreditError(
                f"{applicants}: read under schema {used.name} {used.version}, the applicants do not fit "
                f"the model {model_path} (trained under schema {meta['schema']}); score under the model's schema"
            )
    except (FedCreditError, OSError, ValueError) as exc:
        raise _fail(exc) from exc
    result = score(net, data)
    if out is not None:
        try:
            write_table(result.frame(), out, force)
        except (FedCreditError, OSError) as exc:
            raise _fail(exc) from exc
        console.print(f"wrote {len(result.ids)} scores to {out}", highlight=False)
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


@app.command()
def demo(
    rounds: Annotated[
        int | None,
        typer.Option(min=1, help="Rounds [default: the consortium policy's 10].", show_default=False),
    ] = None,
    rows: Annotated[int, typer.Option(min=1000)] = 30_000,
) -> None:
    """End-to-end demo: 5 institutions train on synthetic SME data, then the grocery couple is scored.
    Uses the published demo keys, and says so."""
    console.rule("FedCredit demo: 5 institutions, synthetic small-business data")
    simulate(
        dataset=DatasetChoice.sme,
        institutions=5,
        rounds=rounds,
        rows=rows,
        federation_policy=DEMO_FEDERATION_POLICY,
        trust=DEMO_FEDERATION_TRUST,
        allow_demo_keys=True,
    )
    console.rule("Scoring the grocery-store couple (examples/grocery_store_couple.csv)")
    score_command(applicants=EXAMPLE_APPLICANT, model="latest", schema=None, as_json=False)


@data_app.command("generate")
def data_generate(
    out: Annotated[Path, typer.Argument(help="Output CSV or Parquet file.")],
    rows: Annotated[int, typer.Option(min=100)] = 10_000,
    seed: Annotated[int, typer.Option()] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")] = False,
) -> None:
    """Generate synthetic SME borrowers with their true probability of default."""
    frame = generate_sme(rows, seed=seed)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_table(frame, out, force)
    except (FedCreditError, OSError) as exc:
        raise _fail(exc) from exc
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
    force: Annotated[bool, typer.Option("--force", help="Write into OUT even if it is not empty.")] = False,
) -> None:
    """Split SME borrowers into institutions with realistic size, region and industry skew."""
    try:
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
        raise _fail(exc) from exc


def main() -> None:
    """The ``fedcredit`` console script. An expected failure (a dead database, a bad file, a bad
    policy) is one line on stderr and exit code 2; an unexpected one a short traceback, never
    with local variables."""
    try:
        app()
    except EXPECTED_ERRORS as exc:
        typer.echo(f"error: {error_line(exc)}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
