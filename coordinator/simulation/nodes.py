"""The virtual institutions of a simulated federation: what each SuperNode would be started with,
and the signed policy and key each one gets for a run."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from coordinator.federation_policy import public_key_of
from federation import protocol as P
from federation.schema import resolve_schema
from policies.demo_keys import DEMO_KEYS
from policies.demo_keys import EXAMPLES as EXAMPLE_POLICIES
from policies.signing import generate_keypair, read_public_keys, sign_policy


@dataclass(frozen=True)
class SimulatedNode:
    """A virtual SuperNode: what ``--node-config`` would hold on a real machine."""

    institution: str
    data_path: Path
    schema: str
    policy: Path | None = None
    trusted_policy_keys: Path | None = None
    audit_db: str = ""
    node_key: Path | None = None  # the institution's Ed25519 private key: signs its replies
    dp_seed: int | None = None  # only for reproducible DP experiments: the node seeds its own DP noise

    def node_config(self) -> dict[str, str]:
        cfg = {
            P.NODE_NAME: self.institution,
            P.NODE_DATA_PATH: str(self.data_path),
            P.NODE_SCHEMA: self.schema,
        }
        if self.policy is not None:
            cfg[P.NODE_POLICY] = str(self.policy)
        if self.trusted_policy_keys is not None:
            cfg[P.NODE_TRUSTED_POLICY_KEYS] = str(self.trusted_policy_keys)
        if self.audit_db:
            cfg[P.NODE_AUDIT_DB] = self.audit_db
        if self.node_key is not None:
            cfg[P.NODE_KEY] = str(self.node_key)
        if self.dp_seed is not None:
            cfg[P.NODE_DP_SEED] = str(self.dp_seed)
        return cfg


SIMULATION_POLICY = """# SIMULATION POLICY: written and signed by `fedcredit simulate` for one run.
format_version = 1
kind = "institution"
id = "simulation.{institution}"
version = 1
owner = "simulation"
institution = "{institution}"
effective = {today}
expires = {tomorrow}

[data]
allowed_schemas = ["{schema}"]
allowed_dimensions = ["operations", "credit", "behaviour", "scenario"]
allowed_features = ["*"]
forbidden_features = []
min_local_records = 50

[federation]
allowed_purposes = ["credit_underwriting", "risk_monitoring"]
require_secure_aggregation = false
min_institutions_per_round = 2
accepted_coordinator_keys = ["{coordinator}"]

[privacy]
delta = 1e-5
"""


def with_policies(
    nodes: Sequence[SimulatedNode],
    run_dir: Path,
    use_examples: bool = True,
    coordinator_key: str | None = None,
) -> list[SimulatedNode]:
    """Give every node a signed policy and its own key: the demo example policy and demo key
    for its institution when one exists (and ``use_examples``), else a simulation policy
    accepting ``coordinator_key`` (default: the demo coordinator's public key), signed with a
    key made for this run, and a node key made for this run, both under ``run_dir/keys``."""
    coordinator = coordinator_key or read_public_keys(DEMO_KEYS / "demo_coordinator.pub")[0]
    keys = run_dir / "keys"
    out = []
    for node in nodes:
        folder = run_dir / "policies" / node.institution  # never inside the institution's data folder
        folder.mkdir(parents=True, exist_ok=True)
        example = EXAMPLE_POLICIES / f"{node.institution}.toml"
        if use_examples and example.is_file():
            for source in EXAMPLE_POLICIES.glob(f"{node.institution}.toml*"):
                shutil.copy2(source, folder / source.name)
            trusted = DEMO_KEYS / f"demo_{node.institution}.pub"
            node_key = DEMO_KEYS / f"demo_{node.institution}.key"
        else:
            if not (keys / "simulation_compliance.key").is_file():
                generate_keypair(
                    keys, "simulation_compliance", comment="made by fedcredit simulate for one run"
                )
            text = SIMULATION_POLICY.format(
                institution=node.institution,
                schema=resolve_schema(node.schema).name,  # a schema is its name, wherever it was read from
                coordinator=coordinator,
                today=dt.date.today(),
                tomorrow=dt.date.today() + dt.timedelta(days=1),
            )
            (folder / f"{node.institution}.toml").write_text(text, encoding="utf-8")
            sign_policy(folder / f"{node.institution}.toml", keys / "simulation_compliance.key")
            trusted = keys / "simulation_compliance.pub"
            node_key = node.node_key or keys / f"node_{node.institution}.key"
            if not node_key.is_file():
                generate_keypair(keys, f"node_{node.institution}", comment="made by fedcredit simulate")
        out.append(
            replace(
                node,
                policy=folder / f"{node.institution}.toml",
                trusted_policy_keys=trusted,
                node_key=node.node_key or node_key,
                audit_db=node.audit_db
                or f"sqlite:///{(run_dir / 'audit' / f'node-{node.institution}.db').resolve()}",
            )
        )
    return out


def members_of(nodes: Sequence[SimulatedNode]) -> tuple[tuple[str, str], ...]:
    """(institution, public key) of every node that has its key."""
    return tuple((n.institution, public_key_of(n.node_key)) for n in nodes if n.node_key is not None)
