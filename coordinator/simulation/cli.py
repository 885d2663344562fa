"""``fedcredit simulate`` and ``fedcredit demo``: a federation on Flower's simulation engine."""

from __future__ import annotations

import time
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from coordinator.federation_policy import (
    DEMO_FEDERATION_POLICY,
    DEMO_FEDERATION_TRUST,
    Asked,
    apply_federation_policy,
    check_members,
    public_key_of,
    verify_federation_policy,
)
from coordinator.score_cli import EXAMPLE_APPLICANT
from coordinator.settings import coordinator_settings
from federation.errors import FedCreditError
from federation.protocol import NODE_DATA_INVALID
from policies.cli_errors import fail
from policies.demo_keys import DEMO_COORDINATOR_KEY, EXAMPLES, demo_key_name
from policies.documents import STRATEGIES, FederationPolicy, PolicyError
from policies.signing import generate_keypair

if TYPE_CHECKING:  # Flower loads only when a federation actually runs
    from coordinator.run_settings import RunSettings
    from coordinator.simulation.nodes import SimulatedNode
    from federation.datasets.scenarios import Federation

console = Console()


class DatasetChoice(StrEnum):
    sme = "sme"
    uci = "uci"


# the strategies a federation policy may name, as the CLI's choices
StrategyChoice = StrEnum("StrategyChoice", {name: name for name in STRATEGIES})  # type: ignore[misc]


DATASET_SCHEMAS = {DatasetChoice.sme: "sme", DatasetChoice.uci: "uci_homo"}


UCI_BANKS = 3  # FATE's homo split of the UCI Taiwan data


def own_folders(
    pairs: list[str],
    dataset: DatasetChoice | None,
    schema: str | None,
    test: Path | None,
    institutions: int | None,
    label_skew: float | None,
    data_dir: Path | None,
) -> Federation | None:
    """The federation of ``--institution NAME=FOLDER`` options; None when there are none.

    Options that only generated data takes are an error beside them, never silently ignored."""
    from federation.datasets.scenarios import own_federation

    if not pairs:
        own_only: tuple[tuple[str, object], ...] = (("--schema", schema), ("--test", test))
        for option, given in own_only:
            if given is not None:
                raise FedCreditError(f"{option} goes with --institution NAME=FOLDER (your own data)")
        return None
    generated_only: tuple[tuple[str, object], ...] = (
        ("--dataset", dataset),
        ("--institutions", institutions),
        ("--label-skew", label_skew),
        ("--data-dir", data_dir),
    )
    for option, given in generated_only:
        if given is not None:
            raise FedCreditError(
                f"{option} is for generated data; with --institution your folders are the data"
            )
    folders: dict[str, Path] = {}
    for pair in pairs:
        name, sep, folder = pair.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise FedCreditError(f"--institution {pair!r}: write NAME=FOLDER, e.g. city_bank=data/city_bank")
        if name.strip() in folders:
            raise FedCreditError(f"--institution {name.strip()}: named twice")
        folders[name.strip()] = Path(folder.strip())
    return own_federation(folders, schema or "sme", test)


def _generated_federation(
    dataset: DatasetChoice,
    run_dir: Path,
    count: int,
    rows: int,
    seed: int,
    label_skew: float | None,
    data_dir: Path | None,
) -> Federation:
    from federation.datasets.scenarios import sme_federation, uci_federation

    if dataset is DatasetChoice.sme:
        if data_dir is not None:
            raise FedCreditError("--data-dir is for --dataset uci")
        return sme_federation(run_dir, count, rows, seed=seed, label_skew_alpha=label_skew)
    if label_skew is not None:
        raise FedCreditError("--label-skew is for --dataset sme")
    if count != UCI_BANKS:
        console.print(
            f"re-splitting the rows of FATE's {UCI_BANKS} UCI banks into {count} institutions at random",
            highlight=False,
        )
    return uci_federation(run_dir, count, data_dir=data_dir, seed=seed)


def _run_federation(
    federation: Federation, settings: RunSettings, nodes: list[SimulatedNode], run_dir: Path
) -> dict[str, object]:
    # Flower and Ray load only when a federation actually runs
    from coordinator.report import write_report
    from coordinator.simulation.engine import run_simulated_federation

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


def simulate(
    dataset: Annotated[
        DatasetChoice | None,
        typer.Option(
            help="sme: synthetic small businesses; uci: UCI Taiwan (FATE's split into 3 banks) "
            "\\[default: sme, unless --institution names your own folders].",
            show_default=False,
        ),
    ] = None,
    institution: Annotated[
        list[str] | None,
        typer.Option(
            help="Your own data: NAME=FOLDER, one per institution (repeat), each folder with train.csv "
            "(and optionally holdout.csv) under --schema.",
            show_default=False,
        ),
    ] = None,
    schema: Annotated[
        str | None,
        typer.Option(
            help="Schema name or TOML file of the --institution folders \\[default: sme].", show_default=False
        ),
    ] = None,
    test: Annotated[
        Path | None,
        typer.Option(help="With --institution: a labelled CSV or Parquet file the coordinator tests on."),
    ] = None,
    institutions: Annotated[
        int | None,
        typer.Option(
            min=2,
            help="Number of institutions \\[default: 5 for sme; 3 for uci, FATE's banks; "
            "another number re-splits their rows].",
            show_default=False,
        ),
    ] = None,
    rounds: Annotated[
        int | None,
        typer.Option(
            min=1, help="Federated rounds \\[default: 10, or the federation policy's].", show_default=False
        ),
    ] = None,
    strategy: Annotated[
        StrategyChoice | None,
        typer.Option(
            help="Aggregation strategy \\[default: fedavg, or the federation policy's].", show_default=False
        ),
    ] = None,
    min_institutions: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Institutions each round needs \\[default: 3 (or all, when fewer), or the federation policy's].",
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
            "\\[default: on, or as the federation policy says].",
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
            help="Private key that signs the training requests \\[default: var/keys/sandbox_coordinator.key, made on first use; "
            "with a federation policy, the demo coordinator's].",
            show_default=False,
        ),
    ] = None,
    node_keys: Annotated[
        Path | None,
        typer.Option(
            help="Folder with each institution's private key as <institution>.key: the keys its federation "
            "policy lists for the members \\[default: demo keys or keys made for the run].",
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
    """Run a federated training on Flower's simulation engine and write a run report under var/runs/<id>/.

    On generated data (--dataset) or on your own folders (--institution NAME=FOLDER --schema FILE)."""
    from federation.datasets.partition import institution_profiles
    from policies.decisions import new_run_id

    run_id = new_run_id()
    run_dir = coordinator_settings().runs_dir / run_id
    asked = Asked(strategy.value if strategy else None, rounds, min_institutions, secure_aggregation, epsilon)
    try:
        own = own_folders(institution or [], dataset, schema, test, institutions, label_skew, data_dir)
        if own is None:
            dataset = dataset or DatasetChoice.sme
            if dataset is DatasetChoice.sme:
                count = institutions or 5
                planned = [p.name for p in institution_profiles(count)]
            else:
                count = institutions or UCI_BANKS
                planned = []
        else:
            count, planned = len(own.institutions), list(own.institutions)
        if min_institutions is not None and min_institutions > count:
            raise FedCreditError(
                f"--min-institutions {min_institutions}: the federation has only {count} institutions"
            )
        policy, signer = None, None
        if federation_policy is not None:
            if trust is None:
                raise PolicyError(
                    "--federation-policy needs --trust: the key(s) its signature is checked against"
                )
            policy, signer = verify_federation_policy(federation_policy, trust)
        key = coordinator_key or (DEMO_COORDINATOR_KEY if policy is not None else None)
        coordinator = public_key_of(key) if key is not None else None
        # the example institution policies accept only the demo coordinator's requests
        use_examples = coordinator is not None and demo_key_name(coordinator) == "demo_coordinator"
        # plain values: Flower and torch load only when the federation runs
        from coordinator.run_settings import RunSettings
        from coordinator.simulation.nodes import SimulatedNode, members_of, with_policies
        from federation.hyperparameters import ModelConfig, TrainConfig

        settings = RunSettings(
            schema=own.schema if own is not None else DATASET_SCHEMAS[dataset or DatasetChoice.sme],
            rounds=asked.rounds or 10,
            strategy=asked.strategy or STRATEGIES[0],
            train=TrainConfig(epochs=local_epochs),
            model=ModelConfig(),
            seed=seed,
            min_institutions=asked.min_institutions or min(3, count),
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
        federation = own or _generated_federation(
            dataset or DatasetChoice.sme, run_dir, count, rows, seed, label_skew, data_dir
        )
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
        raise fail(exc) from exc
    _print_report(report, run_dir)
    failed = node_failures(report)
    if failed:
        raise fail(
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


def sandbox_coordinator_key() -> Path:
    """The coordinator key of the operator's own simulations (``var/keys/sandbox_coordinator.key``).

    Made once, so every sandbox run's audit heads verify against one public key.
    """
    keys = coordinator_settings().keys_dir
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


def demo(
    rounds: Annotated[
        int | None,
        typer.Option(min=1, help="Rounds \\[default: the consortium policy's 10].", show_default=False),
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
    console.rule("The scoring service: a member bank decides on the grocery-store couple over HTTP")
    from coordinator.service.demo import applicant_from_file, promote_latest, serve_and_decide
    from coordinator.service.settings import ServiceSettings

    settings = ServiceSettings(
        federation_policy=DEMO_FEDERATION_POLICY,
        trust=DEMO_FEDERATION_TRUST,
        coordinator_key=DEMO_COORDINATOR_KEY,
        allow_demo_keys=True,
    )
    federation = verify_federation_policy(DEMO_FEDERATION_POLICY, DEMO_FEDERATION_TRUST)[0].header.id
    version = promote_latest(settings.audit_url, federation, "demo")
    console.print(
        f"the consortium's admin promotes this run's model ({version}) for scoring", highlight=False
    )
    serve_and_decide(console, settings, "national_bank", applicant_from_file(EXAMPLE_APPLICANT))


def register(app: typer.Typer) -> None:
    app.command()(simulate)
    app.command()(demo)
