"""`fedcredit node ...`: what an institution's operator runs on its own machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from clients.node_data import load_node_data
from federation.errors import FedCreditError
from policies.audit import create_audit_engine, record
from policies.documents import InstitutionPolicy, PolicyError
from policies.signing import key_id, read_public_keys, verify_policy

console = Console()
node_app = typer.Typer(help="Checks an institution runs on its own node.", no_args_is_help=True)


@node_app.command("check")
def node_check(
    data_path: Annotated[Path, typer.Option(help="Folder with train.csv (and holdout.csv).")],
    policy: Annotated[Path, typer.Option(help="The institution's signed policy.")],
    trust: Annotated[
        Path, typer.Option(help="Public key(s) trusted to sign the policy (.pub file or folder).")
    ],
    schema: Annotated[str, typer.Option(help="Schema name or TOML file.")] = "sme",
    audit_db: Annotated[
        str, typer.Option(envvar="DATABASE_URL", help="The node's audit database.")
    ] = "sqlite:///var/audit/node.db",
) -> None:
    """Refuse to start a node whose policy or data is not valid: run before `flower-supernode`.

    Exit code 0 when the policy verifies (signed, trusted, unmodified, in force) and the
    data satisfies the schema and the policy's minimum records; 2 otherwise. Audited either way.
    """
    engine = create_audit_engine(audit_db)
    try:
        verified = verify_policy(policy, read_public_keys(trust))
        if not isinstance(verified.policy, InstitutionPolicy):
            raise PolicyError(
                f"{policy}: a node needs an institution policy, got a {verified.policy.kind} policy"
            )
        data = load_node_data(data_path, schema)
        if len(data.train) < verified.policy.min_local_records:
            raise PolicyError(
                f"{data_path}: {len(data.train)} records, the policy requires {verified.policy.min_local_records}"
            )
    except (FedCreditError, PolicyError) as exc:
        record(
            engine,
            actor="node",
            action="node.check",
            resource=str(policy),
            decision="deny",
            rules=["deny.node_check_failed"],
        )
        console.print(f"[bold red]refused to start:[/] {exc}", highlight=False)
        raise typer.Exit(code=2) from exc
    p = verified.policy
    record(
        engine,
        actor=f"node:{p.institution}",
        action="node.check",
        resource=str(policy),
        decision="permit",
        policy_sha256=p.sha256,
    )
    console.print(
        f"[green]ready[/]: {p.institution} under {p.header.id} v{p.header.version} (signed by {key_id(verified.signed_by)}), "
        f"{len(data.train)} training rows, schema {data.schema.name} {data.schema.version}",
        highlight=False,
    )
