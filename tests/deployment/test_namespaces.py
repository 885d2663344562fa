"""A coordinator and its institutions on separate hosts: one Linux network namespace each.

Every host has its own address on a bridge and its own data folder; they talk only over the
network, over TLS, and the SuperLink admits only the nodes registered for the federation
policy's data holders. With the real commands (``fedcredit pki``, ``coordinator start``,
``node start``, ``run start``, ``keys issue``):

* a 3-round SecAgg+ run completes with the three permitting institutions and registers a model
  that the coordinator's scoring service then serves over HTTP;
* a node whose key the coordinator never registered is turned away;
* a node whose own policy denies the run (it does not accept this coordinator's key) answers
  with its refusal only, recorded in its own audit log, and the run goes on without it.

Needs root and ``ip netns``; it runs outside ``make test`` (``pytest -m deployment``), from ``.ci/run``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from coordinator.local_deployment import write_federation_policy
from coordinator.pki import add_node, init_pki
from coordinator.score_cli import EXAMPLE_APPLICANT
from coordinator.service.demo import applicant_from_file
from coordinator.simulation.nodes import SimulatedNode, with_policies
from federation.datasets.scenarios import sme_federation
from policies.audit import AuditEntry
from policies.signing import generate_keypair, read_public_keys, sign_policy
from tests.audit_db import session_on

from ..deployed_federation import reachable, wait_until

BIN = Path(sys.executable).parent
SUBNET = "10.231.0"
COORDINATOR_IP = f"{SUBNET}.1"
pytestmark = [
    pytest.mark.deployment,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2 (ip netns)"
    ),
]


@dataclass
class Hosts:
    """Network namespaces on one bridge: name -> (namespace, address)."""

    tag: str
    bridge: str
    hosts: dict[str, tuple[str, str]]

    def exec(self, host: str) -> list[str]:
        return ["ip", "netns", "exec", self.hosts[host][0]]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    tag = uuid.uuid4().hex[:5]
    bridge = f"fcb{tag}"
    names = ["coordinator", "bank1", "bank2", "bank3", "denier", "stranger"]
    made = Hosts(tag, bridge, {n: (f"fc{tag}{i}", f"{SUBNET}.{i + 1}") for i, n in enumerate(names)})
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("link", "set", bridge, "up")
        _ip("addr", "add", f"{SUBNET}.254/24", "dev", bridge)
        for i, (namespace, address) in enumerate(made.hosts.values()):
            inside, outside = f"fc{tag}v{i}", f"fc{tag}b{i}"
            _ip("netns", "add", namespace)
            _ip("link", "add", inside, "type", "veth", "peer", "name", outside)
            _ip("link", "set", inside, "netns", namespace)
            _ip("link", "set", outside, "master", bridge, "up")
            _ip("netns", "exec", namespace, "ip", "addr", "add", f"{address}/24", "dev", inside)
            _ip("netns", "exec", namespace, "ip", "link", "set", inside, "up")
            _ip("netns", "exec", namespace, "ip", "link", "set", "lo", "up")
        yield made
    finally:
        for namespace, _ in made.hosts.values():
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)


def test_three_institutions_on_their_own_hosts_train_over_tls_and_the_model_is_served(
    hosts: Hosts, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    keys = tmp_path / "coordinator" / "keys"
    generate_keypair(keys, "coordinator")
    generate_keypair(keys, "consortium")
    coordinator_pub = read_public_keys(keys / "coordinator.pub")[0]
    federation = sme_federation(tmp_path / "data", 4, 4000, seed=5, test_rows=2000)
    names = sorted(federation.institutions)
    nodes = with_policies(
        [SimulatedNode(n, federation.institutions[n], "sme") for n in names],
        tmp_path / "policies",
        use_examples=False,
        coordinator_key=coordinator_pub,
    )
    # the fourth institution's compliance officer accepts another coordinator only: its node denies
    denier = nodes[3]
    assert denier.policy is not None
    generate_keypair(tmp_path / "other", "other_coordinator")
    other = read_public_keys(tmp_path / "other" / "other_coordinator.pub")[0]
    denier.policy.write_text(denier.policy.read_text().replace(coordinator_pub, other), encoding="utf-8")
    sign_policy(denier.policy, tmp_path / "policies" / "keys" / "simulation_compliance.key")

    policy = write_federation_policy(
        tmp_path / "coordinator" / "federation.toml",
        keys / "consortium.key",
        coordinator_pub,
        nodes,
        name="namespaces",
        rounds=3,
        min_institutions=3,
        secure_aggregation=True,
        scorers=[nodes[0].institution],
    )
    pki = init_pki(tmp_path / "coordinator" / "pki", [COORDINATOR_IP])
    for node in nodes:
        add_node(pki.folder, node.institution)
    add_node(pki.folder, "stranger")  # the same PKI made it, but no member of the policy owns it

    base_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "FLWR_HOME")}
    coordinator_env = {**base_env, "FEDCREDIT_VAR_DIR": str(tmp_path / "coordinator" / "var")}
    fedcredit = str(BIN / "fedcredit")
    coordinator_log = tmp_path / "coordinator.log"
    coordinator = subprocess.Popen(
        [
            *hosts.exec("coordinator"),
            fedcredit,
            "coordinator",
            "start",
            f"--federation-policy={policy}",
            f"--trust={keys / 'consortium.pub'}",
            f"--pki={pki.folder}",
            f"--address={COORDINATOR_IP}:9091",
            f"--listen={COORDINATOR_IP}",
            "--serve-port=8000",
            f"--coordinator-key={keys / 'coordinator.key'}",
        ],
        env=coordinator_env,
        stdout=coordinator_log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    processes.append(coordinator)
    wait_until("coordinator", lambda: reachable(COORDINATOR_IP, 8000), coordinator, coordinator_log, 180)

    def node_start(host: str, node: SimulatedNode, auth_key: Path) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp_path / f"{host}.log"
        proc = subprocess.Popen(
            [
                *hosts.exec(host),
                fedcredit,
                "node",
                "start",
                f"--data-path={node.data_path}",
                f"--policy={node.policy}",
                f"--trust={node.trusted_policy_keys}",
                f"--node-key={node.node_key}",
                "--schema=sme",
                f"--superlink={COORDINATOR_IP}:9091",
                f"--ca={pki.ca_cert}",
                f"--auth-key={auth_key}",
            ],
            env={**base_env, "FEDCREDIT_VAR_DIR": str(tmp_path / host / "var")},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        processes.append(proc)
        return proc, log

    for host, node in zip(["bank1", "bank2", "bank3", "denier"], nodes, strict=True):
        node_start(host, node, pki.node_key(node.institution))
    stranger, stranger_log = node_start("stranger", nodes[0], pki.node_key("stranger"))

    ran = subprocess.run(
        [
            *hosts.exec("coordinator"),
            fedcredit,
            "run",
            "start",
            f"--federation-policy={policy}",
            f"--trust={keys / 'consortium.pub'}",
            f"--coordinator-key={keys / 'coordinator.key'}",
            f"--test-path={federation.test_path}",
            "--no-evaluate-on-nodes",
            "--timeout=2400",
        ],
        env=coordinator_env,
        capture_output=True,
        text=True,
        timeout=2500,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr + coordinator_log.read_text(errors="replace")[-3000:]
    assert "finished:completed" in ran.stdout

    # the unregistered node was turned away with one line, exit 2
    assert stranger.wait(timeout=120) == 2
    assert "did not admit" in stranger_log.read_text(errors="replace")

    reports = list((tmp_path / "coordinator" / "var" / "runs").glob("*/report.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text(encoding="utf-8"))
    assert report["engine"] == "deployment"
    assert report["settings"]["secure_aggregation"] is True
    assert [r["round"] for r in report["rounds"]] == [1, 2, 3]
    trained = {n for n, inst in report["institutions"].items() if inst.get("train_rows", 0) > 0}
    assert trained == {n.institution for n in nodes[:3]}

    # the denying node said no, in its own audit log, and trained nothing
    denier_db = tmp_path / "denier" / "var" / "audit" / f"node-{denier.institution}.db"
    with session_on(f"sqlite:///{denier_db}") as session:
        decisions = {e.decision for e in session.exec(select(AuditEntry)) if e.action != "node.check"}
    assert decisions == {"deny"}

    # the coordinator's scoring service serves the registered model over the network
    issued = subprocess.run(
        [
            fedcredit,
            "keys",
            "issue",
            f"--member={nodes[0].institution}",
            "--role=member",
            f"--federation-policy={policy}",
            f"--trust={keys / 'consortium.pub'}",
        ],
        env=coordinator_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip().splitlines()[-1]
    applicant = applicant_from_file(EXAMPLE_APPLICANT)
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=f"http://{COORDINATOR_IP}:8000", timeout=30) as http:
        while True:
            answer = http.post(
                "/v1/scores",
                json={"purpose": "credit_underwriting", "applicant": applicant},
                headers={"Authorization": f"Bearer {token}"},
            )
            if answer.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(1)  # the service picks the new version up within its poll interval
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"]["version"] == "v1"
