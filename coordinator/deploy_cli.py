"""``fedcredit coordinator start`` and ``fedcredit run start|status|stop|resume``: the deployment engine.

The coordinator runs Flower's SuperLink over TLS with SuperNode authentication, admits the nodes
of the federation policy's data holders only (their keys from ``fedcredit pki add-node``), keeps
Flower's state in a database, installs nothing at run time, and can start the scoring service
beside it. ``run start`` submits a training run of this project under the signed federation
policy and follows it to the end.
"""

from __future__ import annotations

import json
import subprocess
import time
import tomllib
from pathlib import Path
from typing import Annotated, Any

import tomli_w
import typer
from rich.console import Console

from coordinator.service.cli import DemoOption, PolicyOption, TrustOption
from policies.cli_errors import fail

coordinator_app = typer.Typer(
    help="The coordinator: the SuperLink (TLS, node authentication) and the scoring service.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
run_app = typer.Typer(
    help="Federated training runs on the coordinator's SuperLink.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console(soft_wrap=True)  # paths are never broken across lines
CONNECTION = "fedcredit"  # the SuperLink connection's name in $FLWR_HOME/config.toml
PROJECT = Path(__file__).resolve().parents[1]  # the Flower app: pyproject.toml's [tool.flwr.app]
FINISHED = "finished"
POLL_S = 5.0  # each look starts the flwr command line (about a second of CPU)

PkiOption = Annotated[
    Path, typer.Option("--pki", help="The PKI folder (`fedcredit pki init`).", file_okay=False)
]


def write_connection(flwr_home: Path, address: str, ca: Path) -> Path:
    """Name the SuperLink in ``$FLWR_HOME/config.toml`` (other connections kept); the file."""
    path = flwr_home / "config.toml"
    config: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    links = config.setdefault("superlink", {})
    links.setdefault("default", CONNECTION)
    links[CONNECTION] = {"address": address, "root-certificates": str(ca.resolve())}
    tmp = path.with_name(".config.toml.tmp")
    tmp.write_text(tomli_w.dumps(config), encoding="utf-8")
    tmp.replace(path)
    return path


def flwr(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    from federation.processes import BIN

    return subprocess.run(
        [str(BIN / "flwr"), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def register_members(holders: list[str], pki: Path, env: dict[str, str]) -> tuple[list[str], list[str]]:
    """Register each data holder's node key with the SuperLink; (admitted, without a key)."""
    from coordinator.pki import PkiLayout

    layout = PkiLayout(pki)
    admitted, missing = [], []
    for name in holders:
        public = layout.node_public_key(name)
        if not public.is_file():
            missing.append(name)
            continue
        done = flwr(env, "supernode", "register", str(public), CONNECTION, "--name", name)
        if done.returncode != 0 and "already in use" not in done.stdout + done.stderr:
            raise fail(f"registering {name}'s node key {public}: {_last(done.stdout + done.stderr)}")
        admitted.append(name)
    return admitted, missing


def _last(text: str) -> str:
    from federation.processes import clean

    lines = [clean(line) for line in text.splitlines() if clean(line)]
    return lines[-1] if lines else "(no output)"


@coordinator_app.command("start")
def coordinator_start(
    federation_policy: PolicyOption,
    trust: TrustOption,
    pki: PkiOption,
    address: Annotated[
        str, typer.Option(help="HOST:PORT the nodes dial: a name or address in the TLS certificate.")
    ],
    listen: Annotated[str, typer.Option(help="Interface the SuperLink listens on.")] = "0.0.0.0",
    state: Annotated[
        Path | None,
        typer.Option(help="Flower's state database \\[default: var/superlink.db].", dir_okay=False),
    ] = None,
    serve_port: Annotated[
        int | None,
        typer.Option(help="Also start the scoring service on this port (needs --coordinator-key)."),
    ] = None,
    coordinator_key: Annotated[
        Path | None, typer.Option(help="The coordinator's Ed25519 key (signs the service's audit heads).")
    ] = None,
    allow_demo_keys: DemoOption = False,
) -> None:
    """Run the SuperLink with TLS and node authentication, admit the policy's data holders, serve.

    Stops everything it started (by PID) on Ctrl-C or SIGTERM, or when the SuperLink stops."""
    from coordinator.pki import PkiError, PkiLayout, status
    from coordinator.service.state import ServiceError, verified_policy
    from coordinator.settings import coordinator_settings
    from federation.errors import FedCreditError
    from federation.processes import BIN, flower_env, start, stop, supervise, wait_for_port

    settings = coordinator_settings()
    try:
        policy, _ = verified_policy(federation_policy, trust, allow_demo_keys)
        layout = PkiLayout(pki.resolve())
        bad = [i for i in status(layout.folder) if i.state in ("expired", "invalid")]
    except (ServiceError, PkiError) as exc:
        raise fail(exc) from None
    if bad:
        raise fail("the PKI is not usable: " + "; ".join(f"{i.file}: {i.state} ({i.detail})" for i in bad))
    if serve_port is not None and coordinator_key is None:
        raise fail("--serve-port needs --coordinator-key (the service signs its audit log with it)")
    host, _, port_text = address.rpartition(":")
    if not host or not port_text.isdigit():
        raise fail(f"--address {address!r}: give HOST:PORT, e.g. coordinator.example:9091")
    port = int(port_text)
    env = flower_env(settings.flwr_home)
    logs = settings.var_dir / "logs"
    database = (state or settings.var_dir / "superlink.db").resolve()
    superlink_log = logs / "superlink.log"
    started: list[subprocess.Popen[bytes]] = []
    try:
        superlink = start(
            [
                str(BIN / "flower-superlink"),
                f"--ssl-ca-certfile={layout.ca_cert}",
                f"--ssl-certfile={layout.cert}",
                f"--ssl-keyfile={layout.key}",
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                f"--database={database}",
                f"--host={listen}",
                f"--port={port}",
            ],
            env,
            superlink_log,
        )
        started.append(superlink)
        wait_for_port("127.0.0.1" if listen in ("0.0.0.0", "::") else listen, port, superlink, superlink_log)
        write_connection(settings.flwr_home, address, layout.ca_cert)
        holders = [m.name for m in policy.members if m.role == "data_holder"]
        admitted, missing = register_members(holders, layout.folder, env)
        console.print(
            f"SuperLink on {address} (TLS, node authentication), state {database}, log {superlink_log}",
            highlight=False,
        )
        console.print(f"admitted: {', '.join(admitted) or 'nobody'}", highlight=False)
        for name in missing:
            typer.echo(
                f"warning: {name} is a data holder of the policy but has no key in {layout.nodes} "
                f"(fedcredit pki add-node {name})",
                err=True,
            )
        if serve_port is not None:
            service_log = logs / "service.log"
            service = start(
                [
                    str(BIN / "fedcredit"),
                    "serve",
                    f"--federation-policy={federation_policy.resolve()}",
                    f"--trust={trust.resolve()}",
                    f"--coordinator-key={coordinator_key.resolve()}",  # type: ignore[union-attr]
                    f"--host={listen}",
                    f"--port={serve_port}",
                    *(["--allow-demo-keys"] if allow_demo_keys else []),
                ],
                env,
                service_log,
            )
            started.append(service)
            wait_for_port(
                "127.0.0.1" if listen in ("0.0.0.0", "::") else listen, serve_port, service, service_log
            )
            console.print(f"scoring service on port {serve_port}, log {service_log}", highlight=False)
        supervise([(superlink, superlink_log), *([(service, service_log)] if serve_port is not None else [])])
        console.print("stopping", highlight=False)
    except FedCreditError as exc:
        raise fail(exc) from None
    finally:
        for process in reversed(started):
            stop(process)


def _runs(env: dict[str, str], run_id: str | None = None) -> list[dict[str, Any]]:
    args = ["ls", CONNECTION, "--format", "json", *(["--run-id", run_id] if run_id else [])]
    done = flwr(env, *args)
    try:
        payload = json.loads(done.stdout)
    except ValueError:
        raise fail(f"flwr ls: {_last(done.stdout + done.stderr)}") from None
    if not payload.get("success", False):
        raise fail(f"flwr ls: {_last(str(payload.get('error-message') or done.stdout + done.stderr))}")
    return list(payload.get("runs", []))


KeyOption = Annotated[Path, typer.Option(help="The coordinator's Ed25519 private key.", dir_okay=False)]
TestPathOption = Annotated[
    Path | None, typer.Option(help="A labelled test file the coordinator scores each round.")
]
RunsDirOption = Annotated[
    Path | None,
    typer.Option(help="Where runs keep their report, model and checkpoint \\[default: var/runs]."),
]
EvaluateOption = Annotated[bool, typer.Option(help="Nodes score each round's model on their holdout rows.")]
WaitOption = Annotated[bool, typer.Option(help="Follow the run to its end.")]
TimeoutOption = Annotated[float, typer.Option(help="Seconds to follow the run before giving up.")]
JoinTimeoutOption = Annotated[
    float,
    typer.Option(
        help="Seconds a round waits for the policy's minimum of institutions before the run fails, "
        "naming who is missing.",
        min=1,
    ),
]


def _submit(
    federation_policy: Path,
    trust: Path,
    coordinator_key: Path,
    test_path: Path | None,
    runs_dir: Path | None,
    evaluate_on_nodes: bool,
    wait: bool,
    timeout: float,
    join_timeout: float,
    allow_demo_keys: bool,
    resume_run: str | None = None,
) -> None:
    """``flwr run`` of this project under the signed federation policy; follow it when ``wait``."""
    from coordinator.settings import coordinator_settings
    from federation.processes import flower_env

    settings = coordinator_settings()
    env = flower_env(settings.flwr_home)
    runs = (runs_dir or settings.runs_dir).resolve()
    config = {
        "federation-policy": str(federation_policy.resolve()),
        "federation-trust": str(trust.resolve()),
        "coordinator-key": str(coordinator_key.resolve()),
        "runs-dir": str(runs),
    }
    if test_path is not None:
        config["test-path"] = str(test_path.resolve())
    if resume_run is not None:
        config["resume-run"] = resume_run
    run_config = " ".join(f'{k}="{v}"' for k, v in config.items())
    run_config += f" evaluate-on-nodes={str(evaluate_on_nodes).lower()}"
    run_config += f" allow-demo-keys={str(allow_demo_keys).lower()}"
    run_config += f" join-timeout={join_timeout:g}"
    done = flwr(env, "run", str(PROJECT), CONNECTION, "--run-config", run_config, "--format", "json")
    try:
        answer = json.loads(done.stdout)
        flower_id = answer["run-id"] if answer.get("success", True) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise fail(f"flwr run: {_last(done.stdout + done.stderr)}") from None
    if flower_id is None and answer.get("error-message"):
        raise fail(f"flwr run: {_last(str(answer['error-message']))}")
    if flower_id is None:
        raise fail(f"the SuperLink refused the run: {_last(done.stdout + done.stderr)}")
    console.print(f"flwr run {flower_id} submitted", highlight=False)
    if wait:
        _follow(env, str(flower_id), runs, timeout)


def _fedcredit_run(runs: Path, flower_id: str) -> tuple[str, dict[str, Any]] | None:
    """The FedCredit run (its id and status.json) that Flower's run ``flower_id`` is carrying out."""
    from coordinator.deployment import read_status

    for folder in runs.glob("*/"):
        status = read_status(folder)
        if status is not None and status.get("flwr_run") == flower_id:
            return folder.name, status
    return None


def _follow(env: dict[str, str], flower_id: str, runs: Path, timeout: float) -> None:
    deadline, shown, named = time.monotonic() + timeout, "", None
    while time.monotonic() < deadline:
        found = _runs(env, flower_id)
        now = found[0]["status"] if found else "unknown"
        if now != shown:
            console.print(f"flwr run {flower_id}: {now}", highlight=False)
            shown = now
        ours = _fedcredit_run(runs, flower_id)
        if ours is not None and named is None:
            named = ours[0]
            console.print(f"fedcredit run {named}, folder {runs / named}", highlight=False)
        if now.startswith(FINISHED):
            if now == f"{FINISHED}:completed":
                return
            ours = _fedcredit_run(runs, flower_id) or ours
            if ours is not None and ours[1].get("status") == "failed":
                raise fail(
                    f"run {ours[0]} failed after round {ours[1].get('last_completed_round', 0)}: "
                    f"{ours[1].get('detail')}; once fixed: fedcredit run resume {ours[0]}"
                )
            raise fail(
                f"flwr run {flower_id} {now}: {found[0].get('status-details') or 'see the SuperLink log'}"
            )
        time.sleep(POLL_S)
    raise fail(
        f"flwr run {flower_id} did not finish within {timeout:.0f} s (still {shown}); "
        f"`fedcredit run stop {flower_id}`"
    )


@run_app.command("start")
def run_start(
    federation_policy: PolicyOption,
    trust: TrustOption,
    coordinator_key: KeyOption,
    test_path: TestPathOption = None,
    runs_dir: RunsDirOption = None,
    evaluate_on_nodes: EvaluateOption = True,
    wait: WaitOption = True,
    timeout: TimeoutOption = 3600,
    join_timeout: JoinTimeoutOption = 600,
    allow_demo_keys: DemoOption = False,
) -> None:
    """Submit a training run under the signed federation policy to the SuperLink and follow it.

    The coordinator saves the global model after every round; a run stopped by a fault
    continues with `fedcredit run resume RUN`."""
    _submit(
        federation_policy, trust, coordinator_key, test_path, runs_dir, evaluate_on_nodes,
        wait, timeout, join_timeout, allow_demo_keys,
    )  # fmt: skip


@run_app.command("resume")
def run_resume(
    run: Annotated[str, typer.Argument(help="The FedCredit run id (its folder under the runs folder).")],
    federation_policy: PolicyOption,
    trust: TrustOption,
    coordinator_key: KeyOption,
    test_path: TestPathOption = None,
    runs_dir: RunsDirOption = None,
    evaluate_on_nodes: EvaluateOption = True,
    wait: WaitOption = True,
    timeout: TimeoutOption = 3600,
    join_timeout: JoinTimeoutOption = 600,
    allow_demo_keys: DemoOption = False,
) -> None:
    """Continue a run stopped by a fault from its last completed round (same policy, same key).

    Nodes answer each round once, so a round that had begun when the fault came is skipped."""
    from coordinator.checkpoint import CheckpointError, load_checkpoint, next_round
    from coordinator.settings import coordinator_settings

    folder = (runs_dir or coordinator_settings().runs_dir).resolve() / run
    try:
        checkpoint = load_checkpoint(folder / "checkpoint")
    except CheckpointError as exc:
        raise fail(f"run {run}: {exc}") from None
    if (folder / "report.json").is_file():
        raise fail(f"run {run} completed already ({folder / 'report.json'}); nothing to resume")
    console.print(
        f"run {run}: round {checkpoint.completed_round} of {checkpoint.rounds} completed; "
        f"continuing with round {next_round(checkpoint)}",
        highlight=False,
    )
    _submit(
        federation_policy, trust, coordinator_key, test_path, runs_dir, evaluate_on_nodes,
        wait, timeout, join_timeout, allow_demo_keys, resume_run=run,
    )  # fmt: skip


@run_app.command("status")
def run_status(
    run_id: Annotated[str | None, typer.Argument(help="One Flower run \\[default: all].")] = None,
    runs_dir: RunsDirOption = None,
) -> None:
    """The SuperLink's runs and their status, then the coordinator's own runs and how far each got."""
    from coordinator.deployment import read_status
    from coordinator.settings import coordinator_settings
    from federation.processes import flower_env

    settings = coordinator_settings()
    for run in _runs(flower_env(settings.flwr_home), run_id):
        console.print(
            f"flwr run {run['run-id']}  {run['status']:<22} {run.get('elapsed', '')}  "
            f"{run.get('status-details', '')}",
            highlight=False,
        )
    if run_id is not None:
        return
    runs = (runs_dir or settings.runs_dir).resolve()
    for folder in sorted(runs.glob("*/")):
        status = read_status(folder)
        if status is not None:
            console.print(
                f"fedcredit run {folder.name}  {status.get('status', '?'):<9} after round "
                f"{status.get('last_completed_round', 0)}  flwr run {status.get('flwr_run', '?')}  "
                f"{status.get('detail', '')}",
                highlight=False,
            )


@run_app.command("stop")
def run_stop(run_id: Annotated[str, typer.Argument(help="The run to stop.")]) -> None:
    """Stop a run on the SuperLink."""
    from coordinator.settings import coordinator_settings
    from federation.processes import flower_env

    done = flwr(flower_env(coordinator_settings().flwr_home), "stop", run_id, CONNECTION)
    if done.returncode != 0:
        raise fail(f"flwr stop {run_id}: {_last(done.stdout + done.stderr)}")
    console.print(f"run {run_id} stopped", highlight=False)
