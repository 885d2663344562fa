"""Faults in a deployed federation: a coordinator and three institution nodes on loopback, over
TLS with node authentication, driven by the real commands (``fedcredit coordinator start``,
``node start``, ``run start``, ``run resume``). Each fault is a crash (SIGKILL of the whole
process tree), not a clean stop:

1. a node dies mid-run: the rounds complete with the other two (the minimum is two);
2. the SuperLink dies mid-run and is started again on its state database: the completed run and
   its registered model are still there, and ``run resume`` continues the interrupted run from
   its last completed round;
3. two nodes die: the run fails with a message naming them; once they are back,
   ``run resume`` completes it.

Minutes of wall time (a node starts a process per message); it runs with ``make deployment-test``.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.local_deployment import LocalDeployment
from federation.processes import BIN

from ..deployed_federation import crash

FEDCREDIT = str(BIN / "fedcredit")
pytestmark = pytest.mark.deployment


class Deployment(LocalDeployment):
    """The local deployment, with crashes and a background ``run start``."""

    def crash(self, host: str) -> None:
        proc = self.running.pop(host)
        crash(proc.pid)
        proc.wait(timeout=30)

    def crash_superlink(self) -> None:
        """SIGKILL the SuperLink and the ServerApp it runs; its ``coordinator start`` then exits."""
        (superlink,) = [
            pid
            for pid in _pids()
            if "flower-superlink" in _cmdline(pid) and f"--port={self.port}" in _cmdline(pid)
        ]
        crash(superlink)
        self.running.pop("coordinator").wait(timeout=60)

    def submit(self, log_name: str) -> tuple[subprocess.Popen[bytes], Path]:
        """With every node online, ``run start`` in the background; the run's folder once it has one."""
        self.wait_online(3)
        before = set(self.runs.glob("*/")) if self.runs.is_dir() else set()
        log = self.root / log_name
        proc = self._start(self.run_command("start"), self.coordinator_env, log)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            new = (set(self.runs.glob("*/")) if self.runs.is_dir() else set()) - before
            if new:
                return proc, new.pop()
            assert proc.poll() is None, log.read_text(errors="replace")
            time.sleep(0.2)
        raise AssertionError("no run folder after 300 s: " + log.read_text(errors="replace"))

    def resume(self, run: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.run_command("resume", run.name),
            env=self.coordinator_env,
            capture_output=True,
            text=True,
            timeout=1900,
        )


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    made = Deployment(tmp_path)
    try:
        yield made
    finally:
        made.stop()


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _completed_round(run: Path) -> int:
    try:
        return int(json.loads((run / "checkpoint" / "checkpoint.json").read_text())["completed_round"])
    except (OSError, ValueError, KeyError):
        return 0


def _until(what: str, ready: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        assert time.monotonic() < deadline, f"{what}: not after {seconds} s"
        time.sleep(0.2)


def _report(run: Path) -> dict[str, Any]:
    return dict(json.loads((run / "report.json").read_text(encoding="utf-8")))


def _trained_rounds(report: dict[str, Any], institution: str) -> list[int]:
    rounds = report["institutions"].get(institution, {}).get("rounds", [])
    return [r["round"] for r in rounds if "train_loss" in r]


def _output(proc: subprocess.Popen[bytes], log: Path, seconds: float) -> tuple[int, str]:
    code = proc.wait(timeout=seconds)
    return code, log.read_text(errors="replace")


def test_runs_survive_a_dead_node_a_dead_superlink_and_resume_below_the_minimum(
    tmp_path: Path, deployment: Deployment
) -> None:
    bank1, bank2, bank3 = (n.institution for n in deployment.nodes)
    deployment.start_coordinator()
    for index in range(3):
        deployment.start_node(index)

    # 1. a node dies after round 1: rounds 2 and 3 complete with the other two
    follower, first = deployment.submit("run1.log")
    _until("round 1 of the first run", lambda: _completed_round(first) >= 1, 600)
    deployment.crash("bank3")
    code, said = _output(follower, tmp_path / "run1.log", 900)
    assert code == 0, said + deployment.coordinator_log.read_text(errors="replace")[-3000:]
    report = _report(first)
    assert [r["round"] for r in report["rounds"]] == [1, 2, 3]
    assert _trained_rounds(report, bank1) == _trained_rounds(report, bank2) == [1, 2, 3]
    assert _trained_rounds(report, bank3)[0] == 1 and 3 not in _trained_rounds(report, bank3)
    assert any("Node Unavailable" in f["reason"] for f in report["failures"])  # its round went on without it
    assert report["model"]["version"] == "v1"
    node_log = (tmp_path / "bank1" / "var" / "logs" / f"supernode-{bank1}.log").read_text(errors="replace")
    assert f"fedcredit node {bank1}: flwr run" in node_log and "train round 3: answered" in node_log

    # 2. the SuperLink dies in the middle of a run and is started again on its state
    deployment.start_node(2)
    follower, second = deployment.submit("run2.log")
    _until("round 1 of the second run", lambda: _completed_round(second) >= 1, 600)
    deployment.crash_superlink()
    follower.wait(timeout=120)  # the command following the run lost its SuperLink
    assert not (second / "report.json").exists()
    deployment.start_coordinator()
    status = subprocess.run(
        [FEDCREDIT, "run", "status"],
        env=deployment.coordinator_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0, status.stderr
    assert "finished:completed" in status.stdout  # the first run, from the SuperLink's state database
    assert f"fedcredit run {first.name}  completed" in status.stdout
    models = subprocess.run(
        [FEDCREDIT, "models", "list"],
        env=deployment.coordinator_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert models.returncode == 0 and "v1" in models.stdout, models.stdout + models.stderr
    resumed = deployment.resume(second)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "continuing with round" in resumed.stdout
    report = _report(second)
    rounds = [r["round"] for r in report["rounds"]]
    assert rounds[0] == 1 and rounds[-1] == 3 and rounds == sorted(set(rounds))
    assert report["model"]["version"] == "v2"

    # 3. two of three nodes die: below the minimum, the run fails naming them; resumed once they are back
    follower, third = deployment.submit("run3.log")
    _until("round 1 of the third run", lambda: _completed_round(third) >= 1, 600)
    deployment.crash("bank2")
    deployment.crash("bank3")
    code, said = _output(follower, tmp_path / "run3.log", 900)
    assert code == 2, said
    failure = said.strip().splitlines()[-1]
    assert f"run {third.name} failed after round" in failure, said
    assert bank2 in failure and bank3 in failure and "fedcredit run resume" in failure, failure
    assert "Traceback" not in said
    deployment.start_node(1)
    deployment.start_node(2)
    deployment.wait_online(3)
    resumed = deployment.resume(third)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    report = _report(third)
    assert [r["round"] for r in report["rounds"]][-1] == 3
    assert 3 in _trained_rounds(report, bank2)
