"""The scoring pipeline runs in a process of its own: it scores, it ends with the service, and if it
dies the service scores nothing and says it is not ready (never a hang, never an unaudited score)."""

from __future__ import annotations

import os
import signal
import time

from sqlalchemy import func
from sqlmodel import Session, select

from policies.audit import AuditEntry, create_audit_engine

from .conftest import body


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _entries(url: str) -> int:
    with Session(create_audit_engine(url)) as session:
        return session.exec(select(func.count()).select_from(AuditEntry)).one()


def test_the_pipeline_is_a_process_of_its_own_and_ends_with_the_service(start_service) -> None:  # type: ignore[no-untyped-def]
    service = start_service()
    pipeline = service.client.app.state.service.pipeline
    pid = pipeline.pid
    assert pid is not None and pid != os.getpid() and not _gone(pid)
    scored = service.client.post("/v1/scores", json=body(), headers=service.headers("national_bank"))
    assert scored.status_code == 200, scored.text
    with Session(create_audit_engine(service.url)) as session:
        entry = session.get(AuditEntry, scored.json()["audit_entry"])
    assert entry is not None and entry.action == "query.score"

    service.client.__exit__(None, None, None)  # the service stops (the fixture's second stop is a no-op)
    assert _gone(pid)  # stopped and reaped with the service
    assert pipeline.pid is None


def test_a_pipeline_process_that_dies_means_no_score_and_not_ready(start_service) -> None:  # type: ignore[no-untyped-def]
    service = start_service()
    assert (
        service.client.post("/v1/scores", json=body(), headers=service.headers("national_bank")).status_code
        == 200
    )
    before = _entries(service.url)
    pipeline = service.client.app.state.service.pipeline
    os.kill(pipeline.pid, signal.SIGKILL)
    for _ in range(100):  # the service notices when the connection to the process closes
        if not pipeline.alive:
            break
        time.sleep(0.05)

    refused = service.client.post("/v1/scores", json=body(), headers=service.headers("national_bank"))
    assert refused.status_code == 503, refused.text
    assert refused.json()["type"].endswith("/scoring-unavailable") and "score" not in refused.json()
    ready = service.client.get("/readyz")
    assert ready.status_code == 503 and "pipeline" in ready.json()["detail"]
    assert _entries(service.url) == before
