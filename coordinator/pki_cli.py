"""``fedcredit pki``: the consortium CA, the coordinator's TLS certificate, institutions' node keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from policies.cli_errors import fail

pki_app = typer.Typer(
    help="The consortium's PKI: a CA, the coordinator's TLS certificate and each institution's node key.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

DirOption = Annotated[
    Path | None,
    typer.Option("--dir", help="The PKI folder \\[default: var/pki].", file_okay=False),
]


def _folder(given: Path | None) -> Path:
    from policies.settings import FedCreditSettings

    return (given or FedCreditSettings().var_dir / "pki").resolve()


@pki_app.command("init")
def init_command(
    host: Annotated[
        list[str],
        typer.Option(help="A host name or IP address nodes use to reach the coordinator (repeat for more)."),
    ],
    directory: DirOption = None,
    organization: Annotated[str, typer.Option(help="The consortium's name, in the certificates.")] = (
        "FedCredit consortium"
    ),
    ca_days: Annotated[int, typer.Option(min=1, help="How long the CA is valid, in days.")] = 3650,
    days: Annotated[
        int, typer.Option(min=1, help="How long the coordinator's certificate is valid, in days.")
    ] = 397,
) -> None:
    """Make the consortium CA and the coordinator's TLS certificate (keys written 0600)."""
    from coordinator.pki import PkiError, init_pki

    console = Console()
    folder = _folder(directory)
    try:
        layout = init_pki(folder, host, organization=organization, ca_days=ca_days, cert_days=days)
    except PkiError as exc:
        raise fail(exc) from None
    console.print(f"consortium CA        {layout.ca_cert}  (give it to every institution)", highlight=False)
    console.print(f"coordinator TLS cert {layout.cert}  for {', '.join(host)}", highlight=False)
    console.print(
        f"private keys         {layout.ca_key}, {layout.key}  (0600; keep them here)", highlight=False
    )


@pki_app.command("add-node")
def add_node_command(
    name: Annotated[str, typer.Argument(help="The institution's name, as in the federation policy.")],
    directory: DirOption = None,
) -> None:
    """Make an institution's SuperNode authentication key (NIST P-384, OpenSSH format)."""
    from coordinator.pki import PkiError, add_node

    console = Console()
    try:
        private, public = add_node(_folder(directory), name)
    except PkiError as exc:
        raise fail(exc) from None
    console.print(f"private key {private}  (0600: hand it to {name}'s node only)", highlight=False)
    console.print(f"public key  {public}  (the coordinator registers it)", highlight=False)


@pki_app.command("status")
def status_command(
    directory: DirOption = None,
    warn_days: Annotated[int, typer.Option(min=0, help="Warn this many days before an expiry.")] = 30,
) -> None:
    """Every certificate and key: expiry, signature, permissions. Exit 2 when one is expired or invalid."""
    from coordinator.pki import PkiError, status

    console = Console()  # made here: the terminal's width now, not when the module loaded
    try:
        items = status(_folder(directory), warn_days)
    except PkiError as exc:
        raise fail(exc) from None
    table = Table(title=f"PKI in {_folder(directory)}")
    for column in ("file", "what", "expires", "days left", "state", "detail"):
        table.add_column(column, overflow="fold")  # wrap, never cut a path or a fingerprint
    colour = {"ok": "green", "expiring": "yellow", "expired": "red", "invalid": "red"}
    for item in items:
        table.add_row(
            item.file,
            item.what,
            item.expires,
            "" if item.days_left is None else str(item.days_left),
            f"[{colour[item.state]}]{item.state}[/]",
            item.detail,
        )
    console.print(table)
    for item in items:
        if item.state == "expiring":
            typer.echo(f"warning: {item.file} expires on {item.expires} ({item.days_left} days)", err=True)
    bad = [i for i in items if i.state in ("expired", "invalid")]
    if bad:
        raise fail("; ".join(f"{i.file}: {i.state} ({i.detail or i.expires})" for i in bad))
