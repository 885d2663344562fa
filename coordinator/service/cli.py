"""``fedcredit serve`` and ``fedcredit keys issue|revoke|tokens``: the scoring service and its member tokens."""

from __future__ import annotations

import gc
import logging
import socket
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from sqlmodel import Session

from policies.cli_errors import fail
from policies.cli_options import DbOption, database, database_errors

console = Console()
PolicyOption = Annotated[
    Path, typer.Option("--federation-policy", help="The signed federation policy (TOML).")
]
TrustOption = Annotated[
    Path, typer.Option(help="Key(s) trusted to sign the federation policy (.pub or folder).")
]
DemoOption = Annotated[
    bool,
    typer.Option("--allow-demo-keys", help="Accept a policy signed with FedCredit's published demo keys."),
]


def serve_command(
    federation_policy: PolicyOption,
    trust: TrustOption,
    coordinator_key: Annotated[
        Path, typer.Option(help="The coordinator's private key: signs the audit log's head after each batch.")
    ],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    schema: Annotated[
        str | None, typer.Option(help="The federation's schema name or file \\[default: the policy's].")
    ] = None,
    institution_policies: Annotated[
        Path | None, typer.Option(help="Folder of institution policies auditors may review.")
    ] = None,
    db: DbOption = None,
    allow_demo_keys: DemoOption = False,
) -> None:
    """Start the scoring service (FastAPI under uvicorn): scores, decisions and the audit routes.

    Fails closed: without a valid signed federation policy the service does not start; without an
    active model version, or when the audit log cannot be written, it scores nothing. One process
    serves (the rate limits live in it) with its scoring pipeline process (scores, group commit of
    the audit entries); if that one dies, the service stops too (exit 2), for its supervisor to
    restart it."""
    import uvicorn

    from coordinator.service.app import create_app
    from coordinator.service.settings import ServiceSettings
    from coordinator.service.state import ServiceError

    url = database(db)
    try:
        settings = ServiceSettings(
            federation_policy=federation_policy,
            trust=trust,
            coordinator_key=coordinator_key,
            schema_ref=schema,
            institution_policies=institution_policies,
            allow_demo_keys=allow_demo_keys,
            database_url=url,
        )
        with database_errors(url, "opening the service database"):
            app = create_app(settings)
    except ServiceError as exc:
        raise fail(exc) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    gc.set_threshold(50_000, 20, 20)  # a batch allocates ~10^6 short-lived objects: collect less often
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, ws="none")
    )
    lost = []

    def pipeline_lost() -> None:
        lost.append(True)
        server.should_exit = True

    app.state.service.pipeline.on_lost = pipeline_lost
    listening = _listen(host, port)
    console.print(f"scoring service on http://{host}:{port} (OpenAPI at /openapi.json, docs at /docs)")
    server.run(sockets=[listening])
    if lost:
        raise fail(
            f"scoring service on port {port}: its scoring pipeline process stopped; restart the service"
        )


def _listen(host: str, port: int) -> socket.socket:
    """The service's socket, bound before the service starts: a port in use is one line, exit 2
    (uvicorn, binding it, would report it after start-up and exit 1)."""
    from coordinator.service.pipeline import keep_from_pipeline

    listening = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
    except OSError as exc:
        listening.close()
        raise fail(f"scoring service on {host}:{port}: cannot listen there ({exc.strerror or exc})") from None
    keep_from_pipeline(listening)
    return listening


def keys_issue(
    member: Annotated[str, typer.Option(help="The federation member the token is for.")],
    role: Annotated[
        str, typer.Option(help="member (scores, decides), auditor (reads the audit trail) or admin.")
    ],
    federation_policy: PolicyOption,
    trust: TrustOption,
    db: DbOption = None,
    allow_demo_keys: DemoOption = False,
) -> None:
    """Issue a scoring-service token; it is printed once, only its hash is stored."""
    from coordinator.service.state import ServiceError, verified_policy
    from policies.audit import create_audit_engine
    from policies.member_keys import TokenError, issue

    url = database(db)
    try:
        policy, _ = verified_policy(federation_policy, trust, allow_demo_keys)
    except ServiceError as exc:
        raise fail(exc) from None
    with (
        database_errors(url, "issuing the token"),
        Session(create_audit_engine(url), expire_on_commit=False) as session,
    ):
        try:
            token, row = issue(session, policy, member, role, actor="keys")
        except TokenError as exc:
            raise fail(exc) from None
        session.commit()
    console.print(
        f"token for {member} ({role}), key id {row.key_id}: shown once, store it now", highlight=False
    )
    typer.echo(token)


def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The token's key id (`fedcredit keys tokens` lists them).")],
    db: DbOption = None,
) -> None:
    """Revoke a scoring-service token (the service refuses it within seconds)."""
    from policies.audit import create_audit_engine
    from policies.member_keys import TokenError, revoke

    url = database(db)
    with (
        database_errors(url, "revoking the token"),
        Session(create_audit_engine(url), expire_on_commit=False) as session,
    ):
        try:
            row = revoke(session, key_id, actor="keys")
        except TokenError as exc:
            raise fail(exc) from None
        session.commit()
    console.print(f"revoked token {row.key_id} of {row.member} ({row.role})", highlight=False)


def keys_tokens(db: DbOption = None) -> None:
    """List the scoring-service tokens (key id, member, role, issued, revoked); never the tokens."""
    from rich.table import Table

    from policies.audit import create_audit_engine
    from policies.member_keys import tokens

    url = database(db)
    with (
        database_errors(url, "listing the tokens"),
        Session(create_audit_engine(url), expire_on_commit=False) as session,
    ):
        rows = tokens(session)
    table = Table(title="scoring-service tokens")
    for column in ("key id", "member", "role", "issued", "revoked"):
        table.add_column(column)
    for r in rows:
        table.add_row(r.key_id, r.member, r.role, r.created_at, r.revoked_at or "")
    console.print(table)


def register(app: typer.Typer, keys_app: typer.Typer) -> None:
    app.command("serve")(serve_command)
    keys_app.command("issue")(keys_issue)
    keys_app.command("revoke")(keys_revoke)
    keys_app.command("tokens")(keys_tokens)
