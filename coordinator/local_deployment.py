"""A coordinator and its institution nodes on this one machine (loopback), each with its own folders,
started with the real commands: ``fedcredit coordinator start`` and ``fedcredit node start``.

For trying a deployment before spreading it over machines, for ``benchmarks/deployment.py`` and for
the deployment tests. The institutions are synthetic SME lenders with signed node policies
(``coordinator.simulation.nodes.with_policies``); the federation policy names them as its data
holders and is signed by a consortium key made here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.pki import PkiLayout, add_node, init_pki
from coordinator.simulation.nodes import SimulatedNode, with_policies
from federation.datasets.scenarios import sme_federation
from federation.errors import FedCreditError
from federation.processes import BIN, start, stop
from policies.signing import generate_keypair, read_public_keys, sign_policy

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalDeployment:
    """One coordinator and ``institutions`` nodes under ``root``; ``stop`` ends every process started."""

    root: Path
    institutions: int = 3
    rows: int = 3000
    rounds: int = 3
    min_institutions: int = 2
    secure_aggregation: bool = False
    seed: int = 7
    stock_flower: bool = False  # nodes run Flower's SuperNode as shipped (``node start --stock-flower``)
    port: int = field(default_factory=free_port)
    running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.keys = self.root / "coordinator" / "keys"
        generate_keypair(self.keys, "coordinator")
        generate_keypair(self.keys, "consortium")
        coordinator_pub = read_public_keys(self.keys / "coordinator.pub")[0]
        federation = sme_federation(
            self.root / "data", self.institutions, self.rows, seed=self.seed, test_rows=1000
        )
        self.test_path = federation.test_path
        self.nodes = with_policies(
            [SimulatedNode(n, p, "sme") for n, p in sorted(federation.institutions.items())],
            self.root / "policies",
            use_examples=False,
            coordinator_key=coordinator_pub,
        )
        self.policy = write_federation_policy(
            self.root / "coordinator" / "federation.toml",
            self.keys / "consortium.key",
            coordinator_pub,
            self.nodes,
            name="local",
            rounds=self.rounds,
            min_institutions=self.min_institutions,
            secure_aggregation=self.secure_aggregation,
        )
        self.pki: PkiLayout = init_pki(self.root / "coordinator" / "pki", ["127.0.0.1"])
        for node in self.nodes:
            add_node(self.pki.folder, node.institution)
        self.base_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "FLWR_HOME")}
        self.coordinator_env = {**self.base_env, "FEDCREDIT_VAR_DIR": str(self.root / "coordinator" / "var")}
        self.runs = self.root / "coordinator" / "var" / "runs"
        self.coordinator_log = self.root / "coordinator.log"

    def _start(self, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        proc = start(args, env, log)
        self.started.append(proc)
        return proc

    def start_coordinator(self, timeout_s: float = 180) -> subprocess.Popen[bytes]:
        """``fedcredit coordinator start``; returns once it listens and has registered the nodes' keys."""
        log = self.coordinator_log
        before = log.read_text(errors="replace").count("admitted:") if log.exists() else 0
        proc = self._start(
            [
                str(BIN / "fedcredit"),
                "coordinator",
                "start",
                f"--federation-policy={self.policy}",
                f"--trust={self.keys / 'consortium.pub'}",
                f"--pki={self.pki.folder}",
                f"--address=127.0.0.1:{self.port}",
                "--listen=127.0.0.1",
                f"--state={self.root / 'coordinator' / 'superlink.db'}",
            ],
            self.coordinator_env,
            log,
        )
        deadline = time.monotonic() + timeout_s
        while log.read_text(errors="replace").count("admitted:") <= before:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise FedCreditError(
                    f"the coordinator did not start: {log.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.3)
        self.running["coordinator"] = proc
        return proc

    def start_node(self, index: int) -> subprocess.Popen[bytes]:
        """``fedcredit node start`` for institution ``index`` (host ``bank{index + 1}``)."""
        node = self.nodes[index]
        host = f"bank{index + 1}"
        self.running[host] = self._start(
            [
                str(BIN / "fedcredit"),
                "node",
                "start",
                f"--data-path={node.data_path}",
                f"--policy={node.policy}",
                f"--trust={node.trusted_policy_keys}",
                f"--node-key={node.node_key}",
                "--schema=sme",
                f"--superlink=127.0.0.1:{self.port}",
                f"--ca={self.pki.ca_cert}",
                f"--auth-key={self.pki.node_key(node.institution)}",
                f"--port={free_port()}",
                *(["--stock-flower"] if self.stock_flower else []),
            ],
            {**self.base_env, "FEDCREDIT_VAR_DIR": str(self.root / host / "var")},
            self.root / f"{host}.log",
        )
        return self.running[host]

    def online(self) -> int:
        """How many SuperNodes the SuperLink counts online now."""
        listed = subprocess.run(
            [str(BIN / "flwr"), "supernode", "list", "fedcredit", "--format", "json"],
            env={**self.base_env, "FLWR_HOME": str(self.root / "coordinator" / "var" / "flwr")},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        try:
            nodes = json.loads(listed.stdout)["nodes"]
        except (ValueError, KeyError, TypeError):
            return 0
        return sum(1 for n in nodes if n.get("status") == "online")

    def wait_online(self, count: int, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while self.online() < count:
            if time.monotonic() > deadline:
                raise FedCreditError(f"{self.online()} of {count} nodes online after {timeout_s:g} s")
            time.sleep(1)

    def run_command(
        self, *args: str, evaluate_on_nodes: bool = False, join_timeout_s: float = 90
    ) -> list[str]:
        """``fedcredit run ARGS`` under this federation's policy and coordinator key."""
        return [
            str(BIN / "fedcredit"),
            "run",
            *args,
            f"--federation-policy={self.policy}",
            f"--trust={self.keys / 'consortium.pub'}",
            f"--coordinator-key={self.keys / 'coordinator.key'}",
            f"--test-path={self.test_path}",
            "--evaluate-on-nodes" if evaluate_on_nodes else "--no-evaluate-on-nodes",
            f"--join-timeout={join_timeout_s:g}",
            "--timeout=1800",
        ]

    def stop(self) -> None:
        """Stop every process started here, by PID, newest first."""
        for proc in reversed(self.started):
            stop(proc)
        self.running.clear()
