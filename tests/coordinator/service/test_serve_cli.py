"""`fedcredit keys issue` and `fedcredit serve` as real processes: uvicorn on loopback, stopped by PID."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from coordinator.local_deployment import free_port
from federation.model import FourDimensionModel
from policies.audit import AuditEntry
from tests.audit_db import session_on

from .conftest import COUPLE, TRUST, body, register_model, write_policy

FEDCREDIT = str(Path(sys.executable).with_name("fedcredit"))
ROOT = Path(__file__).resolve().parents[3]


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FEDCREDIT, *args], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


def _serve_until_ready(common: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    """``fedcredit serve`` started in a session of its own, once ``/readyz`` answers 200, and its port
    (a free one; chosen again if another process took it before the service could bind it)."""
    for _ in range(5):
        port = free_port()
        server = _start(common, port, env)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for _ in range(300):
                with contextlib.suppress(httpx.TransportError):
                    if http.get("/readyz").status_code == 200:
                        return server, port
                if server.poll() is not None:
                    stderr = server.stderr.read().decode() if server.stderr else ""
                    if "cannot listen there" in stderr:
                        break  # taken meanwhile: another port
                    raise AssertionError(stderr or "the service stopped")
                time.sleep(0.1)
            else:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
                raise AssertionError("the service never became ready")
    raise AssertionError("no free port could be bound")


def _start(common: list[str], port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    key = ROOT / "policies" / "examples" / "keys" / "demo_coordinator.key"
    return subprocess.Popen(
        [FEDCREDIT, "serve", *common, "--coordinator-key", str(key), "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def _on_sqlite(tmp_path: Path, trained: FourDimensionModel) -> tuple[list[str], dict[str, str]]:
    """``serve``'s options for a SQLite database under ``tmp_path`` with ``trained`` registered, and
    its environment."""
    url = f"sqlite:///{tmp_path / 'fedcredit.db'}"
    register_model(url, trained, tmp_path / "runs")
    common = ["--federation-policy", str(write_policy(tmp_path)), "--trust", str(TRUST), "--allow-demo-keys"]
    return [*common, "--db", url], {**os.environ, "FEDCREDIT_VAR_DIR": str(tmp_path / "var")}


def _listening_inode(port: int) -> str:
    """The inode of the socket listening on 127.0.0.1:``port`` (from /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
            return fields[9]
    raise AssertionError(f"nothing listens on port {port}")


def _socket_inodes(pid: str) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_serve_starts_answers_and_stops(db_url: str, tmp_path: Path, trained) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "FEDCREDIT_VAR_DIR": str(tmp_path / "var")}
    policy = write_policy(tmp_path)
    register_model(db_url, trained, tmp_path / "runs")
    common = ["--federation-policy", str(policy), "--trust", str(TRUST), "--allow-demo-keys", "--db", db_url]
    issued = _run("keys", "issue", "--member", "national_bank", "--role", "member", *common, env=env)
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip().splitlines()[-1]
    assert token.startswith("fck_")
    refused = _run("keys", "issue", "--member", "coastal_credit_union", "--role", "member", *common, env=env)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "allowed_members" in refused.stderr

    server, port = _serve_until_ready(common, env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            document = http.get("/openapi.json").json()
            assert document["openapi"].startswith("3.1")
            decided = http.post("/v1/decisions", json=body(), headers={"Authorization": f"Bearer {token}"})
            assert decided.status_code == 200, decided.text
            assert decided.json()["decision"] in ("approve", "refer", "decline")
            assert "fedcredit_audited_queries_total 1" in http.get("/metrics").text
        (pipeline,) = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        # the service listens; its pipeline process, forked after the socket was bound, does not hold it
        listening = _listening_inode(port)
        assert listening in _socket_inodes(str(server.pid))
        assert listening not in _socket_inodes(pipeline)
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the whole group, as a supervisor or Ctrl-C would
        _, stderr = server.communicate(timeout=30)
    # a clean stop: the service ends its pipeline process itself, it does not see it die first
    assert server.returncode in (0, -signal.SIGTERM), stderr.decode()
    assert b"scoring pipeline process" not in stderr
    assert not Path(f"/proc/{pipeline}").exists()


def test_a_body_sent_in_chunks_is_read_whole_and_held_to_the_limit(tmp_path: Path, trained) -> None:  # type: ignore[no-untyped-def]
    """A scoring request whose body comes in pieces (no Content-Length) is scored on the whole body,
    the digest of every byte on record; one that grows past the limit is refused with 413."""
    common, env = _on_sqlite(tmp_path, trained)
    env["FEDCREDIT_MAX_BODY_BYTES"] = "20000"
    issued = _run("keys", "issue", "--member", "national_bank", "--role", "member", *common, env=env)
    assert issued.returncode == 0, issued.stderr
    headers = {
        "Authorization": f"Bearer {issued.stdout.strip().splitlines()[-1]}",
        "Content-Type": "application/json",
    }
    small = json.dumps(body()).encode()
    large = json.dumps(
        {"purpose": "credit_underwriting", "consent_reference": "c", "applicants": [COUPLE] * 100}
    ).encode()
    assert len(small) < 20_000 < len(large)

    def pieces(data: bytes, size: int) -> Iterator[bytes]:
        for start in range(0, len(data), size):
            time.sleep(0.005)  # apart, so that the server reads them apart
            yield data[start : start + size]

    server, port = _serve_until_ready(common, env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            scored = http.post("/v1/scores", content=pieces(small, 97), headers=headers)
            assert scored.status_code == 200, scored.text
            refused = http.post("/v1/scores/batch", content=pieces(large, 4096), headers=headers)
            assert refused.status_code == 413 and refused.json()["type"].endswith("/payload-too-large")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.communicate(timeout=30)
    with session_on(common[common.index("--db") + 1]) as session:
        queries = session.exec(select(AuditEntry).where(AuditEntry.action.startswith("query."))).all()  # type: ignore[attr-defined]
    assert [q.input_sha256 for q in queries] == [hashlib.sha256(small).hexdigest()]
    assert scored.json()["audit_entry"] == queries[0].seq


def test_serve_refuses_a_tampered_policy_in_one_line(tmp_path: Path) -> None:
    policy = write_policy(tmp_path)
    policy.write_text(policy.read_text().replace("max_batch = 10000", "max_batch = 20000"))
    env = {**os.environ, "FEDCREDIT_VAR_DIR": str(tmp_path / "var")}
    key = ROOT / "policies" / "examples" / "keys" / "demo_coordinator.key"
    done = _run(
        "serve",
        "--federation-policy",
        str(policy),
        "--trust",
        str(TRUST),
        "--coordinator-key",
        str(key),
        "--allow-demo-keys",
        "--port",
        str(free_port()),
        env=env,
    )
    assert done.returncode == 2
    assert (
        done.stderr.startswith("error: ") and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    )


def test_serve_stops_with_one_line_when_its_pipeline_process_dies(tmp_path: Path, trained) -> None:  # type: ignore[no-untyped-def]
    common, env = _on_sqlite(tmp_path, trained)
    server, port = _serve_until_ready(common, env)
    try:
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        assert len(children) == 1  # the pipeline process
        os.kill(int(children[0]), signal.SIGKILL)
        _, stderr = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    assert server.returncode == 2
    errors = [line for line in stderr.decode().splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: scoring service on port {port}: its scoring pipeline process stopped; restart the service"
    ]
    assert "Traceback" not in stderr.decode()


def test_serve_on_a_port_in_use_says_so_in_one_line(tmp_path: Path, trained) -> None:  # type: ignore[no-untyped-def]
    common, env = _on_sqlite(tmp_path, trained)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = _start(common, port, env)
        stdout, stderr = server.communicate(timeout=60)
    assert server.returncode == 2, stderr.decode()
    assert stderr.decode() == (
        f"error: scoring service on 127.0.0.1:{port}: cannot listen there (Address already in use)\n"
    )
    assert b"scoring service on http" not in stdout  # it never claimed to serve
