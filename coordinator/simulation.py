"""Run a federation on Flower's simulation engine (Ray), one virtual node per institution."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from flwr.clientapp.typing import Mod
from flwr.common import Context

from clients.client_app import build_client_app
from coordinator.federation_policy import public_key_of
from coordinator.prompt_pickup import install_prompt_pickup
from coordinator.server_app import RoundCallback, RunOutcome, RunSettings, build_server_app
from federation import protocol as P
from policies.demo_keys import DEMO_KEYS
from policies.demo_keys import EXAMPLES as EXAMPLE_POLICIES
from policies.signing import generate_keypair, read_public_keys, sign_policy

PROJECT_VAR = Path("var")


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
        folder = node.data_path / "policy"
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
                schema=node.schema,
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


class SimulatedNodeConfigs:
    """Gives each virtual node its own node config.

    Flower's simulation engine only numbers its virtual nodes (``partition-id``);
    this maps that number to the node config a real SuperNode would be started
    with, so the client code reads ``data-path`` exactly as in deployment.
    """

    def __init__(self, nodes: Sequence[SimulatedNode]) -> None:
        self.configs = [n.node_config() for n in nodes]

    def __call__(self, context: Context) -> Mapping[str, str]:
        return self.configs[int(context.node_config["partition-id"])]


def flower_environment(var_dir: Path = PROJECT_VAR) -> None:
    """No telemetry, no update checks, Flower's state inside the project's ``var/``."""
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("FLWR_HOME", str((var_dir / "flwr").resolve()))
    Path(os.environ["FLWR_HOME"]).mkdir(parents=True, exist_ok=True)


def run_simulated_federation(
    nodes: Sequence[SimulatedNode],
    settings: RunSettings,
    on_round: RoundCallback | None = None,
    parallel_nodes: int = 2,
    quiet: bool = True,
    outer_mods: Sequence[Mod] = (),
) -> RunOutcome:
    """Train across ``nodes`` on Flower's simulation engine; returns what the coordinator saw."""
    if len(nodes) < settings.min_institutions:
        raise ValueError(f"{len(nodes)} node(s), but the run needs at least {settings.min_institutions}")
    if not settings.members:  # the operator's own sandbox: its nodes are the members
        settings = replace(settings, members=members_of(nodes))
    if settings.members:
        members = set(settings.members)
        strangers = [
            n.institution
            for n in nodes
            if n.node_key is None or (n.institution, public_key_of(n.node_key)) not in members
        ]
        if strangers:
            raise ValueError(
                f"node(s) {', '.join(strangers)} not among the run's members "
                f"({', '.join(name for name, _ in settings.members)}) with their member key"
            )
    flower_environment()
    from flwr.simulation import run_simulation  # imports Ray: keep it off the CLI's start-up path

    install_prompt_pickup()

    if quiet:
        logging.getLogger("flwr").setLevel(logging.ERROR)
    outcome = RunOutcome()
    server_app = build_server_app(settings, outcome, on_round)
    client_app = build_client_app(SimulatedNodeConfigs(nodes), outer_mods)
    cpus = max(1, min(parallel_nodes, os.cpu_count() or 1))
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=len(nodes),
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": cpus,
                "num_gpus": 0,
                "log_to_driver": not quiet,
                "logging_level": logging.ERROR,
            },
        },
    )
    if outcome.model is None:
        raise RuntimeError("the federated run ended without a model; see the log above")
    return outcome
