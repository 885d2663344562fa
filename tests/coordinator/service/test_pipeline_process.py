"""The scoring pipeline runs in a process of its own: it scores, it ends with the service, and if it
dies the service scores nothing and says it is not ready (never a hang, never an unaudited score)."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import time
import weakref
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func
from sqlmodel import select

from coordinator.service.app import create_app
from coordinator.service.applicants import request_models
from coordinator.service.pipeline import Job
from coordinator.service.settings import ServiceSettings
from coordinator.service.state import ServiceState
from federation.model import FourDimensionModel
from policies.audit import AuditEntry, SignedHead
from policies.demo_keys import DEMO_COORDINATOR_KEY
from tests.audit_db import session_on

from .conftest import TRUST, body, register_model, write_policy


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _registered(db_url: str, tmp_path: Path, trained: FourDimensionModel) -> ServiceSettings:
    """Settings of a service on ``db_url`` with ``trained`` registered as its model."""
    register_model(db_url, trained, tmp_path / "runs")
    return ServiceSettings(
        federation_policy=write_policy(tmp_path),
        trust=TRUST,
        coordinator_key=DEMO_COORDINATOR_KEY,
        allow_demo_keys=True,
        database_url=db_url,
    )


def _ready(settings: ServiceSettings) -> tuple[ServiceState, Any, int, int]:
    """A service state for ``settings`` with its model loaded (its pipeline not started), an
    applicant as the scoring routes pass it on, the model version's id and the entries so far."""
    state = ServiceState(settings)
    state.refresh_model()
    assert state.serving is not None and state.serving.version.id is not None
    single, _ = request_models(state.schema, 10)
    applicant = single.model_validate(body()).applicant  # type: ignore[attr-defined]
    return state, applicant, state.serving.version.id, _entries(settings.database_url)


def _entries(url: str) -> int:
    with session_on(url) as session:
        return session.exec(select(func.count()).select_from(AuditEntry)).one()


def test_the_pipeline_is_a_process_of_its_own_and_ends_with_the_service(start_service) -> None:  # type: ignore[no-untyped-def]
    service = start_service()
    pipeline = service.client.app.state.service.pipeline
    pid = pipeline.pid
    assert pid is not None and pid != os.getpid() and not _gone(pid)
    scored = service.client.post("/v1/scores", json=body(), headers=service.headers("national_bank"))
    assert scored.status_code == 200, scored.text
    with session_on(service.url) as session:
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


def test_stopping_answers_what_the_process_already_holds(db_url: str, tmp_path: Path, trained) -> None:  # type: ignore[no-untyped-def]
    state, applicant, version, before = _ready(_registered(db_url, tmp_path, trained))

    async def score_then_stop() -> list[object]:
        await state.pipeline.start(state.serving)
        asked = [
            asyncio.create_task(
                state.pipeline.run(
                    Job(
                        "score",
                        version,
                        [applicant],
                        "national_bank",
                        "credit_underwriting",
                        "c",
                        f"{i:064x}",
                    )
                )
            )
            for i in range(20)
        ]
        await asyncio.sleep(0)  # the requests are queued and sent
        await state.pipeline.stop()
        return await asyncio.gather(*asked, return_exceptions=True)

    answers = asyncio.run(score_then_stop())
    state.engine.dispose()
    assert all(isinstance(a, bytes) and b'"audit_entry"' in a for a in answers), answers
    assert _entries(db_url) == before + 20


def test_no_transaction_commits_more_than_the_audit_batch(
    db_url: str, tmp_path: Path, trained: FourDimensionModel
) -> None:
    """``FEDCREDIT_AUDIT_BATCH`` caps a commit: 7 queries sent together with a cap of 3 are
    committed in 3 transactions, each with its own signed head."""
    settings = _registered(db_url, tmp_path, trained).model_copy(update={"audit_batch": 3})
    state, applicant, version, before = _ready(settings)

    async def score_together() -> list[bytes]:
        await state.pipeline.start(state.serving)
        try:
            job = Job("score", version, [applicant], "national_bank", "credit_underwriting", "c", "0" * 64)
            together = asyncio.gather(*(state.pipeline.run(job) for _ in range(7)))  # one message
            return await asyncio.wait_for(together, 60)  # a query never answered fails, not hangs
        finally:
            await state.pipeline.stop()

    answers = asyncio.run(score_together())
    state.engine.dispose()
    seqs = sorted(json.loads(a)["audit_entry"] for a in answers)
    assert seqs == list(range(before + 1, before + 8))
    with session_on(db_url) as session:
        heads = session.exec(select(SignedHead.seq).where(SignedHead.seq > before)).all()
    assert sorted(heads) == [before + 3, before + 6, before + 7]


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_start_up_garbage_is_collected_and_nothing_stays_frozen_after_the_service(  # type: ignore[no-untyped-def]
    db_url: str, tmp_path: Path, trained
) -> None:
    """The service freezes what start-up made (the pipeline process is forked from it): garbage is
    collected first, and a stopped service hands everything back to the collector. Frozen garbage
    would keep, for instance, a dropped engine's database connection open for good."""
    app = create_app(_registered(db_url, tmp_path, trained))
    dropped = weakref.ref(_Cycle())  # unreachable, but only the cycle collector can free it
    assert dropped() is not None
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_freeze_count() > 0
        assert dropped() is None
    assert gc.get_freeze_count() == 0
