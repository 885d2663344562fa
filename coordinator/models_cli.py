"""``fedcredit models``: the model registry: list, show, promote, roll back (admins)."""

from __future__ import annotations

import getpass
import json
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlmodel import Session

from policies.cli_errors import fail
from policies.cli_options import DbOption, database, database_errors

models_app = typer.Typer(
    help="The model registry: every federated run's model, and the active version members are scored with.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console()

FederationOption = Annotated[
    str | None,
    typer.Option(help="Federation policy id \\[default: the only federation in the registry]."),
]


def admin_actor() -> str:
    """Who a registry change from the command line is recorded as."""
    try:
        return f"admin:{getpass.getuser()}"
    except (KeyError, OSError):
        return "admin"


def _federation(session: Session, given: str | None) -> str:
    from policies.registry import federations

    known = federations(session)
    if given is not None:
        if given not in known:
            raise fail(
                f"no model versions for federation {given!r} (registered: {', '.join(known) or 'none'})"
            )
        return given
    if not known:
        raise fail("the registry holds no model version yet: a federated run registers one")
    if len(known) > 1:
        raise fail(
            f"the registry holds {len(known)} federations ({', '.join(known)}): pick one with --federation"
        )
    return known[0]


@models_app.command("list")
def models_list(
    federation: FederationOption = None,
    db: DbOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every registered version, the active one marked."""
    from policies.audit import create_audit_engine
    from policies.registry import active_version, versions

    url = database(db)
    with database_errors(url, "reading the model registry"), Session(create_audit_engine(url)) as session:
        name = _federation(session, federation)
        found = versions(session, name)
        active = active_version(session, name)
    rows = [{**v.summary(), "active": active is not None and v.version == active.version} for v in found]
    if as_json:
        sys.stdout.write(json.dumps({"federation": name, "versions": rows}) + "\n")
        return
    table = Table(title=f"model versions of {name}")
    for column in ("version", "active", "created", "test AUC", "institutions", "epsilon", "run"):
        table.add_column(column)
    for row in rows:
        auc = row["metrics"]["global"].get("auc")
        table.add_row(
            row["version"] + (" (DEMO)" if row["demo"] else ""),
            "yes" if row["active"] else "",
            row["created_at"],
            "-" if auc is None else f"{auc:.4f}",
            str(len(row["institutions"])),
            "-" if row["epsilon"] is None else f"{row['epsilon']:.2f}",
            row["run_id"],
        )
    console.print(table)


@models_app.command("show")
def models_show(
    version: Annotated[str, typer.Argument(help="Version, e.g. v3 \\[default: the active one].")] = "",
    federation: FederationOption = None,
    db: DbOption = None,
) -> None:
    """One version as JSON: weights file and sha256, schema, policies, institutions, metrics."""
    from policies.audit import create_audit_engine
    from policies.registry import RegistryError, active_version, get_version, parse_version

    url = database(db)
    with database_errors(url, "reading the model registry"), Session(create_audit_engine(url)) as session:
        name = _federation(session, federation)
        try:
            found = (
                get_version(session, name, parse_version(version))
                if version
                else active_version(session, name)
            )
        except RegistryError as exc:
            raise fail(exc) from None
        if found is None:
            raise fail(f"federation {name!r} has no active version")
        active = active_version(session, name)
    shown = {
        **found.summary(),
        "model_path": found.model_path,
        "active": active is not None and active.id == found.id,
    }
    sys.stdout.write(json.dumps(shown, indent=2) + "\n")


def _change(federation: str | None, db: str | None, version: str | None) -> None:
    from federation.errors import FedCreditError
    from federation.model import load_model
    from policies.audit import create_audit_engine
    from policies.registry import RegistryError, get_version, parse_version, promote, rollback

    url = database(db)
    with (
        database_errors(url, "changing the active model"),
        Session(create_audit_engine(url), expire_on_commit=False) as session,
    ):
        name = _federation(session, federation)
        try:
            if version is None:
                target = rollback(session, name, admin_actor())
            else:
                target = get_version(session, name, parse_version(version))
            load_model(target.model_path, expected_sha256=target.model_sha256)  # refuse a changed file
            if version is not None:
                promote(session, name, target.version, admin_actor())
        except (RegistryError, FedCreditError) as exc:
            raise fail(exc) from None
        session.commit()
    verb = "rolled back to" if version is None else "promoted"
    console.print(
        f"{name}: {verb} {target.label} (run {target.run_id}); the scoring service uses it within seconds"
    )


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="The version to make active, e.g. v3.")],
    federation: FederationOption = None,
    db: DbOption = None,
) -> None:
    """Make a version the active one (its weights file is checked against its sha256 first)."""
    _change(federation, db, version)


@models_app.command("rollback")
def models_rollback(federation: FederationOption = None, db: DbOption = None) -> None:
    """Re-activate the version that was active before the current one."""
    _change(federation, db, None)
