"""Run a federation on Flower's simulation engine (Ray), one virtual node per institution."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from flwr.app.typing import ConfigRecordValues
from flwr.clientapp.typing import Mod

from clients.client_app import build_client_app
from coordinator.checkpoint import Checkpoint
from coordinator.federation_policy import public_key_of
from coordinator.run_settings import RunSettings
from coordinator.server_app import RoundCallback, RunOutcome, build_server_app
from coordinator.settings import coordinator_settings
from coordinator.simulation.node_configs import SimulatedNodeConfigs
from coordinator.simulation.nodes import SimulatedNode, members_of
from coordinator.simulation.prompt_pickup import install_prompt_pickup


def flower_environment() -> None:
    """No telemetry, no update checks, Flower's state inside the project's ``var/`` (unless FLWR_HOME is set)."""
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("FLWR_HOME", str(coordinator_settings().flwr_home))
    Path(os.environ["FLWR_HOME"]).mkdir(parents=True, exist_ok=True)


def run_simulated_federation(
    nodes: Sequence[SimulatedNode],
    settings: RunSettings,
    on_round: RoundCallback | None = None,
    parallel_nodes: int = 2,
    quiet: bool = True,
    outer_mods: Sequence[Mod] = (),
    resume: Checkpoint | None = None,
) -> RunOutcome:
    """Train across ``nodes`` on Flower's simulation engine; returns what the coordinator saw.

    With ``resume`` (a checkpoint of this run), training continues after its last completed round."""
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
    server_app = build_server_app(settings, outcome, on_round, resume)
    client_app = build_client_app(SimulatedNodeConfigs(nodes), outer_mods)
    init_args: dict[str, ConfigRecordValues] = {"log_to_driver": not quiet, "logging_level": logging.ERROR}
    if os.environ.get("RAY_ADDRESS"):  # a Ray cluster already running: its machines' cores, not ours
        init_args["address"] = os.environ["RAY_ADDRESS"]
    else:
        init_args.update(num_cpus=max(1, min(parallel_nodes, os.cpu_count() or 1)), num_gpus=0)
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=len(nodes),
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": init_args},
    )
    if outcome.model is None:
        raise RuntimeError("the federated run ended without a model; see the log above")
    return outcome
