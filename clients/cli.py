"""`fedcredit node ...`: what an institution's operator runs on its own machine."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from clients.settings import NodeSettings
from federation.errors import FedCreditError
from policies.cli_errors import fail
from policies.documents import InstitutionPolicy, PolicyError
from policies.signing import (
    key_id,
    load_private_key,
    public_key_text,
    read_public_keys,
    verify_policy_of_kind,
)

console = Console()
node_app = typer.Typer(
    help="Checks an institution runs on its own node.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


DataOption = Annotated[Path, typer.Option(help="Folder with train.csv (and holdout.csv).")]
NodePolicyOption = Annotated[Path, typer.Option(help="The institution's signed policy.")]
NodeTrustOption = Annotated[
    Path, typer.Option(help="Public key(s) trusted to sign the policy (.pub file or folder).")
]
NodeKeyOption = Annotated[
    Path,
    typer.Option(
        help="The institution's Ed25519 private key (node config 'node-key'): signs its replies and audit log."
    ),
]
SchemaOption = Annotated[str, typer.Option(help="Schema name or TOML file.")]
AuditDbOption = Annotated[
    str | None,
    typer.Option(
        help="The node's audit database (node config 'audit-db') \\[default: "
        "node-<institution>.db in the audit folder of $FEDCREDIT_VAR_DIR or var/].",
        show_default=False,
    ),
]


@dataclass(frozen=True)
class CheckedNode:
    policy: InstitutionPolicy
    audit_url: str
    train_rows: int


def _check(
    data_path: Path, policy: Path, trust: Path, node_key: Path, schema: str, audit_db: str | None
) -> CheckedNode:
    """The node's policy, key and data checked, the outcome audited; exit 2 with one line if refused."""
    from clients.node_data import load_node_data
    from clients.policy_guard import node_record
    from policies.audit import create_audit_engine

    key, institution, problem = None, "", None
    try:
        key = load_private_key(node_key)
        policy_doc, signer = verify_policy_of_kind(
            policy, read_public_keys(trust), InstitutionPolicy, "a node"
        )
        institution = policy_doc.institution
        data = load_node_data(data_path, schema, institution)
        if len(data.train) < policy_doc.min_local_records:
            raise PolicyError(
                f"{data_path}: {len(data.train)} records, the policy requires {policy_doc.min_local_records}"
            )
    except (FedCreditError, PolicyError, OSError) as exc:
        problem = exc
    audit_url = audit_db or NodeSettings().node_audit_url(institution or "unknown")
    engine = create_audit_engine(audit_url)
    if problem is not None:
        node_record(
            engine,
            key,
            actor="node",
            action="node.check",
            resource=str(policy),
            decision="deny",
            rules=["deny.node_check_failed"],
        )
        typer.echo(f"error: refused to start: {' '.join(str(problem).split())}", err=True)
        raise typer.Exit(code=2)
    p = policy_doc
    assert key is not None  # loaded, or the check was refused above
    node_record(
        engine,
        key,
        actor=f"node:{p.institution}",
        action="node.check",
        resource=str(policy),
        decision="permit",
        policy_sha256=p.sha256,
    )
    console.print(
        f"[green]ready[/]: {p.institution} under {p.header.id} v{p.header.version} (signed by {key_id(signer)}), "
        f"{len(data.train)} training rows, schema {data.schema.name} {data.schema.version}, "
        f"node key {key_id(public_key_text(key.public_key()))}",
        highlight=False,
    )
    return CheckedNode(p, audit_url, len(data.train))


@node_app.command("check")
def node_check(
    data_path: DataOption,
    policy: NodePolicyOption,
    trust: NodeTrustOption,
    node_key: NodeKeyOption,
    schema: SchemaOption = "sme",
    audit_db: AuditDbOption = None,
) -> None:
    """Refuse to start a node whose policy or data is not valid: run before `flower-supernode`.

    Exit code 0 when the policy verifies (signed, trusted, unmodified, in force), the node
    key loads, and the data satisfies the schema and the policy's minimum records; 2
    otherwise. Audited either way (the log's head signed with the node key when it loads).
    """
    _check(data_path, policy, trust, node_key, schema, audit_db)


REFUSED_BY_SUPERLINK = "Exit Code: 305"  # Flower's words when the SuperLink does not admit the node


@node_app.command("start")
def node_start(
    data_path: DataOption,
    policy: NodePolicyOption,
    trust: NodeTrustOption,
    node_key: NodeKeyOption,
    superlink: Annotated[str, typer.Option(help="The coordinator's SuperLink, HOST:PORT.")],
    ca: Annotated[Path, typer.Option(help="The consortium CA certificate (ca.pem from the coordinator).")],
    auth_key: Annotated[
        Path, typer.Option(help="This node's SuperNode authentication key (from `fedcredit pki add-node`).")
    ],
    schema: SchemaOption = "sme",
    audit_db: AuditDbOption = None,
    port: Annotated[int, typer.Option(help="Local port of the SuperNode's app runtime.")] = 9094,
    stock_flower: Annotated[
        bool,
        typer.Option(
            help="Run Flower's SuperNode as shipped: a new interpreter per message, running the app "
            "the coordinator submitted, Flower's own waits (for comparison; slower, see docs/deployment.md)."
        ),
    ] = False,
) -> None:
    """Check the node (as `node check`), then run Flower's SuperNode over TLS with its key.

    The data folder, schema, policy and keys come from these options, never from the
    coordinator. Each message runs the node's own installed code, forked from a warm process
    (clients.warm_executor). Stops what it started (by PID) on Ctrl-C or SIGTERM."""
    from federation import protocol as P
    from federation.processes import BIN, Stopped, flower_env, start, stop, supervise

    for given, what in ((ca, "--ca"), (auth_key, "--auth-key")):
        if not given.is_file():
            raise fail(f"{what} {given}: no such file")
    checked = _check(data_path, policy, trust, node_key, schema, audit_db)
    institution = checked.policy.institution
    schema_ref = str(Path(schema).resolve()) if Path(schema).suffix == ".toml" else schema
    config = {
        P.NODE_NAME: institution,
        P.NODE_DATA_PATH: str(data_path.resolve()),
        P.NODE_SCHEMA: schema_ref,
        P.NODE_POLICY: str(policy.resolve()),
        P.NODE_TRUSTED_POLICY_KEYS: str(trust.resolve()),
        P.NODE_KEY: str(node_key.resolve()),
        P.NODE_AUDIT_DB: checked.audit_url,
    }
    settings = NodeSettings()
    log = settings.var_dir / "logs" / f"supernode-{institution}.log"
    flower = [str(BIN / "flower-supernode")] if stock_flower else [sys.executable, "-m", "clients.supernode"]
    supernode = start(
        [
            *flower,
            f"--superlink={superlink}",
            f"--root-certificates={ca.resolve()}",
            f"--auth-supernode-private-key={auth_key.resolve()}",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--isolation={'subprocess' if stock_flower else 'process'}",  # process: clients.warm_executor
            "--node-config=" + " ".join(f'{k}="{v}"' for k, v in config.items()),
        ],
        flower_env(settings.var_dir / "flwr"),
        log,
    )
    started = [(supernode, log)]
    if not stock_flower:
        started.append((_warm_executor(supernode.pid, port, config, institution), log))
    console.print(
        f"SuperNode of {institution} connecting to {superlink} (TLS), log {log}",
        highlight=False,
        soft_wrap=True,
    )
    try:
        supervise(started)
    except Stopped as exc:
        if REFUSED_BY_SUPERLINK in log.read_text(errors="replace"):
            raise fail(
                f"the SuperLink at {superlink} did not admit {institution}: its key {auth_key} is not "
                "registered there (the coordinator runs `fedcredit pki add-node`), or it cannot be reached"
            ) from None
        raise fail(exc) from None
    finally:
        for process, _ in reversed(started):
            stop(process)


def _warm_executor(
    supernode_pid: int, port: int, config: dict[str, str], institution: str
) -> subprocess.Popen[bytes]:
    """``clients.warm_executor`` for the SuperNode on ``port``: its tasks forked, the data read once."""
    from federation import protocol as P
    from federation.processes import flower_env, start

    settings = NodeSettings()
    return start(
        [
            sys.executable,
            "-m",
            "clients.warm_executor",
            f"--runtime-api-address=127.0.0.1:{port}",
            f"--parent-pid={supernode_pid}",
            f"--data-path={config[P.NODE_DATA_PATH]}",
            f"--schema={config[P.NODE_SCHEMA]}",
            f"--institution={institution}",
        ],
        flower_env(settings.var_dir / "flwr"),
        settings.var_dir / "logs" / f"supernode-{institution}.log",
    )
