"""What the deployment tests share: a signed federation policy naming their nodes (the
``processes`` fixture that stops what they start is in ``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from coordinator.simulation.nodes import SimulatedNode
from policies.signing import read_public_keys, sign_policy

POLICY = """format_version = 1
kind = "federation"
id = "federation.{name}"
version = 1
owner = "test"
effective = 2026-01-01
expires = 2099-12-31

[[members]]
name = "coordinator"
role = "coordinator"
public_key = "{coordinator}"
{holders}
[dataset]
schema = "sme"
schema_version = "1.0.0"

[aggregation]
strategy = "fedavg"
rounds = {rounds}
max_rounds = 5
min_institutions = {min_institutions}

[privacy]
secure_aggregation = {secure_aggregation}
delta = 1e-5

[scoring]
allowed_members = [{scorers}]
allowed_purposes = ["credit_underwriting"]
require_consent_reference = false
requests_per_minute = 600
"""


def write_federation_policy(
    path: Path,
    signer: Path,
    coordinator: str,
    nodes: Sequence[SimulatedNode],
    *,
    name: str,
    rounds: int,
    min_institutions: int,
    secure_aggregation: bool,
    scorers: Sequence[str] = (),
) -> Path:
    """A federation policy naming ``nodes`` as data holders (by their node keys), signed by ``signer``."""
    holders = "".join(
        f'\n[[members]]\nname = "{n.institution}"\nrole = "data_holder"\n'
        f'public_key = "{read_public_keys(n.node_key.with_suffix(".pub"))[0]}"\n'  # type: ignore[union-attr]
        for n in nodes
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        POLICY.format(
            name=name,
            coordinator=coordinator,
            holders=holders,
            rounds=rounds,
            min_institutions=min_institutions,
            secure_aggregation=str(secure_aggregation).lower(),
            scorers=", ".join(f'"{s}"' for s in scorers),
        ),
        encoding="utf-8",
    )
    sign_policy(path, signer)
    return path
