"""``fedcredit``: the root command. Each package owns its command group; this only composes them."""

from __future__ import annotations

import typer
from sqlalchemy.exc import SQLAlchemyError

from clients.cli import node_app
from coordinator import score_cli
from coordinator.deploy_cli import coordinator_app, run_app
from coordinator.models_cli import models_app
from coordinator.pki_cli import pki_app
from coordinator.service import cli as service_cli
from coordinator.simulation import cli as simulation_cli
from federation import cli as data_cli
from federation.errors import FedCreditError
from policies import cli as policy_cli
from policies.cli_errors import error_line
from policies.db_cli import db_app
from policies.documents import PolicyError


def schema_identity(reference: str) -> tuple[str, str]:
    """A schema's (name, version), from its name or its file."""
    from federation.schema import resolve_schema

    schema = resolve_schema(reference)
    return schema.name, schema.version


# Never print local variables in a traceback: they hold passwords, keys and applicants' data.
# (Typer applies the root app's setting to every sub-command.)
app = typer.Typer(
    help="FedCredit: train a four-dimension credit-risk model across institutions without pooling data.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_show_locals=False,
)
simulation_cli.register(app)
score_cli.register(app)
data_cli.register(app)
policy_cli.register(app, schema_identity=schema_identity)
service_cli.register(app, policy_cli.keys_app)
app.add_typer(models_app, name="models")
app.add_typer(node_app, name="node")
app.add_typer(db_app, name="db")
app.add_typer(pki_app, name="pki")
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(run_app, name="run")

EXPECTED_ERRORS = (FedCreditError, PolicyError, OSError, SQLAlchemyError)


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
