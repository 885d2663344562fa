"""The module-level apps under Flower's own deployment engine: a local SuperLink, two SuperNodes,
and ``flwr run`` of this project, on loopback over TLS with SuperNode authentication (the PKI from
``fedcredit pki``); a node whose key was never registered is refused."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordinator.local_deployment import free_port, write_federation_policy
from coordinator.pki import add_node, init_pki
from coordinator.simulation.nodes import SimulatedNode, with_policies
from federation.datasets.scenarios import sme_federation
from federation.model import load_model
from policies.signing import generate_keypair, read_public_keys

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _toml(config: dict[str, str]) -> str:
    return " ".join(f'{k}="{v}"' for k, v in config.items())


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise AssertionError(f"nothing listens on {port}: " + log.read_text(errors="replace")[-3000:])


@pytest.mark.parametrize("registration", ["own", "swapped"])
def test_flwr_run_trains_over_tls_with_registered_nodes_only(
    registration: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    """``swapped``: each node's key registered under the other member's name. A node is who its
    registered key says, so replies signed by the other member's key stop the run."""
    env = {
        **os.environ,
        "FLWR_HOME": str(tmp_path / "flwr"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FEDCREDIT_VAR_DIR": str(tmp_path / "var"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # flower-superexec, flwr-serverapp
    }
    keys = tmp_path / "keys"
    generate_keypair(keys, "coordinator")
    generate_keypair(keys, "consortium")
    coordinator_pub = read_public_keys(keys / "coordinator.pub")[0]
    federation = sme_federation(tmp_path / "data", 2, 3000, seed=3)
    nodes = with_policies(
        [SimulatedNode(name, path, "sme") for name, path in federation.institutions.items()],
        tmp_path / "nodes",
        use_examples=False,
        coordinator_key=coordinator_pub,
    )
    policy = write_federation_policy(
        tmp_path / "federation.toml",
        keys / "consortium.key",
        coordinator_pub,
        nodes,
        name="test-deployment",
        rounds=1,
        min_institutions=2,
        secure_aggregation=False,
    )

    pki = init_pki(tmp_path / "pki", ["127.0.0.1", "localhost"])
    node_keys = {n.institution: add_node(pki.folder, n.institution) for n in nodes}
    stranger_key, _ = add_node(pki.folder, "stranger")  # made by the same PKI, never registered
    port = free_port()  # Flower 1.42 serves its runtime, fleet and control APIs on one HTTP port
    log = (tmp_path / "superlink.log").open("wb")
    processes.append(
        subprocess.Popen(
            [
                str(BIN / "flower-superlink"),
                f"--ssl-ca-certfile={pki.ca_cert}",
                f"--ssl-certfile={pki.cert}",
                f"--ssl-keyfile={pki.key}",
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
                "--host=127.0.0.1",
                f"--port={port}",
                f"--database={tmp_path / 'superlink.db'}",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    )
    (tmp_path / "flwr").mkdir(exist_ok=True)
    (tmp_path / "flwr" / "config.toml").write_text(
        f'[superlink]\ndefault = "test"\n\n[superlink.test]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{pki.ca_cert}"\n',
        encoding="utf-8",
    )
    _wait_for_port(port, processes[0], tmp_path / "superlink.log")
    names = list(node_keys) if registration == "own" else list(reversed(node_keys))
    for name, (_, public) in zip(names, node_keys.values(), strict=True):  # members' nodes only
        registered = subprocess.run(
            [str(BIN / "flwr"), "supernode", "register", str(public), "test", "--name", name],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert registered.returncode == 0, registered.stdout + registered.stderr

    def supernode(key: Path, config: str, log_name: str, *extra: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                str(BIN / "flower-supernode"),
                f"--root-certificates={pki.ca_cert}",
                f"--auth-supernode-private-key={key}",
                f"--superlink=127.0.0.1:{port}",
                "--host=127.0.0.1",
                f"--port={free_port()}",
                f"--node-config={config}",
                *extra,
            ],
            env=env,
            stdout=(tmp_path / log_name).open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    for k, node in enumerate(nodes):
        processes.append(supernode(node_keys[node.institution][0], _toml(node.node_config()), f"node{k}.log"))
    stranger = supernode(stranger_key, _toml(nodes[0].node_config()), "stranger.log", "--max-retries=2")
    processes.append(stranger)
    run_config = _toml(
        {
            "federation-policy": str(policy),
            "federation-trust": str(keys / "consortium.pub"),
            "coordinator-key": str(keys / "coordinator.key"),
            "test-path": str(federation.test_path),
            "runs-dir": str(tmp_path / "runs"),
        }
    )
    run_config += " evaluate-on-nodes=false"  # one message round less: a node process per message
    submitted = subprocess.run(
        [str(BIN / "flwr"), "run", str(ROOT), "test", "--run-config", run_config],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    if registration == "swapped":
        status: dict[str, str] = {}
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and status.get("status") != "failed":
            time.sleep(0.5)
            found = list((tmp_path / "runs").glob("*/status.json"))
            status = json.loads(found[0].read_text()) if found else {}
        assert status.get("status") == "failed", status
        assert "registered as" in status["detail"] and "signed by" in status["detail"], status["detail"]
        assert not list((tmp_path / "runs").glob("*/report.json"))
        return
    deadline = time.monotonic() + 240
    reports: list[Path] = []
    while time.monotonic() < deadline and not reports:
        time.sleep(0.5)
        reports = list((tmp_path / "runs").glob("*/report.json"))
        assert processes[0].poll() is None, (tmp_path / "superlink.log").read_text(errors="replace")[-3000:]
    assert reports, (
        "no run report; superlink log:\n" + (tmp_path / "superlink.log").read_text(errors="replace")[-4000:]
    )
    report = json.loads(reports[0].read_text(encoding="utf-8"))
    assert report["engine"] == "deployment"
    assert sorted(report["institutions"]) == sorted(federation.institutions)
    assert [r["round"] for r in report["rounds"]] == [1]
    for name, institution in report["institutions"].items():  # each node trained on its own rows
        assert institution["train_rows"] > 0, name
        assert institution["rounds"][0]["train_loss"] > 0, name
        assert "auc" not in institution["rounds"][0], name  # evaluate-on-nodes=false: no holdout scoring
    _model, card = load_model(reports[0].parent / "model.pt", expected_sha256=report["model"]["sha256"])
    assert sorted(card.institutions) == sorted(federation.institutions)
    assert card.federation_policy_sha256 is not None
    # the node with an unregistered key was turned away: it never joined, and it said so
    assert stranger.wait(timeout=60) != 0
    assert "Failed to activate SuperNode" in (tmp_path / "stranger.log").read_text(errors="replace")
