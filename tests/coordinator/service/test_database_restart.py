"""A PostgreSQL server restarted while the scoring service is under load.

The test starts its own PostgreSQL (``initdb``/``pg_ctl``, its own folder and port, never the
machine's shared server), serves from it under uvicorn, keeps eight clients scoring, and stops
and restarts the server mid-load. While it is down requests fail cleanly (503, a problem
document); no answer carries a score without its committed audit entry; the service recovers by
itself; and the audit chain verifies afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session, select

from coordinator.local_deployment import free_port
from coordinator.service.app import create_app
from coordinator.service.demo import BackgroundServer
from coordinator.service.settings import ServiceSettings
from federation.model import FourDimensionModel
from policies.audit import AuditEntry, create_audit_engine, verify_chain
from policies.demo_keys import DEMO_COORDINATOR_KEY
from policies.signing import load_private_key, public_key_text

from .conftest import COUPLE, TRUST, issue_token, register_model, write_policy

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(PG_BIN is None or shutil.which("runuser") is None, reason="needs initdb and runuser"),
]


class ThrowawayPostgres:
    """A PostgreSQL server of the test's own: a data folder in /tmp, a free port, run as ``postgres``."""

    def __init__(self) -> None:
        assert PG_BIN is not None
        self.folder = Path(tempfile.mkdtemp(prefix="fedcredit-pg-"))
        self.port = free_port()
        self.data = self.folder / "data"
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.folder, pw.pw_uid, pw.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        command = [str(PG_BIN / tool), *args]
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"), "-w", "start"
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def postgres() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres()
    server.start()
    yield server
    server.remove()


def test_scoring_survives_a_database_restart_under_load(
    postgres: ThrowawayPostgres, tmp_path: Path, trained: FourDimensionModel
) -> None:
    url = postgres.url
    policy = write_policy(tmp_path, requests_per_minute="100000")
    register_model(url, trained, tmp_path / "runs")
    token = issue_token(url, policy, "national_bank", "member")
    settings = ServiceSettings(
        federation_policy=policy,
        trust=TRUST,
        coordinator_key=DEMO_COORDINATOR_KEY,
        allow_demo_keys=True,
        database_url=url,
        model_poll_seconds=0.5,
    )
    # (sent, answered, status, body, input sha256)
    answers: list[tuple[float, float, int, dict[str, object], str]] = []
    stop = threading.Event()

    def client(k: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            i = 0
            while not stop.is_set():
                payload = json.dumps(
                    {
                        "purpose": "credit_underwriting",
                        "consent_reference": f"c-{k}-{i}",
                        "applicant": {**COUPLE, "business_id": f"b-{k}-{i}"},
                    }
                ).encode()
                sent = time.monotonic()
                response = http.post(
                    "/v1/scores",
                    content=payload,
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                )
                answers.append(
                    (
                        sent,
                        time.monotonic(),
                        response.status_code,
                        response.json(),
                        hashlib.sha256(payload).hexdigest(),
                    )
                )
                i += 1

    server = BackgroundServer(create_app(settings))
    port = server.port
    with server:
        clients = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for thread in clients:
            thread.start()
        time.sleep(2)
        stopping_at = time.monotonic()
        postgres.stop()
        stopped_at = (
            time.monotonic()
        )  # pg_ctl has returned: the server is down (a loaded machine takes a while)
        time.sleep(3)
        restarting_at = time.monotonic()
        postgres.start()
        restarted_at = time.monotonic()
        time.sleep(6)
        stop.set()
        for thread in clients:
            thread.join(timeout=60)

    # by when a request was sent and answered: a reply that was slow to come back says nothing of
    # the database at the time it arrived
    before = [a for a in answers if a[1] < stopping_at]
    down = [a for a in answers if stopped_at < a[0] and a[1] < restarting_at]
    after = [a for a in answers if a[0] > restarted_at + 3]
    assert before and all(status == 200 for _, _, status, _, _ in before)
    # while the database is down: refused cleanly, never a score
    assert down, "no request was answered while the database was down"
    for _, _, status, body, _ in down:
        assert status == 503 and body["type"].endswith(("/audit-unavailable", "/database-unavailable")), body
        assert "score" not in body
    # back by itself: the last seconds are all scores again
    assert after and all(status == 200 for _, _, status, _, _ in after)
    # every score that left has its committed audit entry, for exactly the bytes sent
    served = {body["audit_entry"]: sha for _, _, status, body, sha in answers if status == 200}
    assert all("score" in body for _, _, status, body, _ in answers if status == 200)
    engine = create_audit_engine(url)
    with Session(engine) as session:
        entries = {
            e.seq: e.input_sha256 for e in session.exec(select(AuditEntry)) if e.action == "query.score"
        }
        report = verify_chain(
            session,
            [public_key_text(load_private_key(DEMO_COORDINATOR_KEY).public_key())],
            allow_open_run=True,
        )
    engine.dispose()
    assert {seq: entries.get(seq) for seq in served} == served
    assert report.ok, report.problem
