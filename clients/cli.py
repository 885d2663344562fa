"""`fedcredit node ...`: what an institution's operator runs on its own machine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from clients.settings import NodeSettings
from federation.errors import FedCreditError
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


@node_app.command("check")
def node_check(
    data_path: Annotated[Path, typer.Option(help="Folder with train.csv (and holdout.csv).")],
    policy: Annotated[Path, typer.Option(help="The institution's signed policy.")],
    trust: Annotated[
        Path, typer.Option(help="Public key(s) trusted to sign the policy (.pub file or folder).")
    ],
    node_key: Annotated[
        Path,
        typer.Option(
            help="The institution's Ed25519 private key (node config 'node-key'): signs its replies and audit log."
        ),
    ],
    schema: Annotated[str, typer.Option(help="Schema name or TOML file.")] = "sme",
    audit_db: Annotated[
        str | None,
        typer.Option(
            help="The node's audit database (node config 'audit-db') \\[default: "
            "node-<institution>.db in the audit folder of $FEDCREDIT_VAR_DIR or var/].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Refuse to start a node whose policy or data is not valid: run before `flower-supernode`.

    Exit code 0 when the policy verifies (signed, trusted, unmodified, in force), the node
    key loads, and the data satisfies the schema and the policy's minimum records; 2
    otherwise. Audited either way (the log's head signed with the node key when it loads).
    """
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
    engine = create_audit_engine(audit_db or NodeSettings().node_audit_url(institution or "unknown"))
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
