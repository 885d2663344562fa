"""The scoring pipeline: requests that arrive together are scored together and audited together.

One thread takes every query waiting, scores them in one pass of the model (a single applicant
costs about as much model time as sixteen), appends their audit entries in one transaction
(group commit) and only then releases the answers. No query waits for a batch to fill: an idle
service handles a lone query at once. The event loops meanwhile parse and answer requests; while
they are still reading scoring requests (:class:`Arrivals`), the thread waits for those, up to
``GATHER_S``, so that queries arriving together share one pass and one commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from pydantic_core import to_json

from coordinator.service.applicants import encode_applicants
from coordinator.service.audit_writer import AuditUnavailable, AuditWriter, Query
from coordinator.service.scorer import MAX_REASONS, Scored, ServingModel, decide, score_batch
from federation.loading import EncodedData
from federation.reasons import reason_records
from policies.documents import ScoringRules

MAX_ROWS = 20_000  # applicants scored in one pass at most
GATHER_S = 0.002  # the longest a batch waits for requests that are still being read
NAP_S = 0.0001  # a short sleep that hands the GIL to the event loop reading them


class Arrivals:
    """Scoring requests that have arrived but are not yet queued for the pipeline (being read,
    authenticated, validated). Only the event loop changes the count; the pipeline reads it."""

    KEY = "fedcredit.arriving"

    def __init__(self) -> None:
        self.count = 0

    def arrived(self, scope: MutableMapping[str, Any]) -> None:
        scope[self.KEY] = True
        self.count += 1

    def left(self, scope: MutableMapping[str, Any]) -> None:
        """The request was queued, refused or failed: it no longer arrives (idempotent)."""
        if scope.pop(self.KEY, False):
            self.count = max(0, self.count - 1)


@dataclass
class Job:
    """One request: what to score, and what its audit entry says about it."""

    action: str  # score | score.batch | decision
    serving: ServingModel
    applicants: list[BaseModel]
    member: str
    purpose: str
    consent_reference: str
    input_sha256: str
    future: asyncio.Future[bytes] | None = field(default=None, repr=False)
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class Served:
    """What every answer names: the federation and the policy whose rules it follows."""

    federation: str
    policy_sha256: str


class Pipeline:
    def __init__(
        self,
        rules: ScoringRules,
        writer: AuditWriter,
        served: Served,
        on_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        self.rules = rules
        self.writer = writer
        self.served = served
        self.on_commit = on_commit  # (entries, seconds from the oldest query's arrival to its commit)
        self.arrivals = Arrivals()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="scoring-pipeline", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    async def run(self, job: Job) -> bytes:
        """The answer's JSON, once the job's audit entry is committed (else :class:`AuditUnavailable`)."""
        job.future = asyncio.get_running_loop().create_future()
        self._queue.put(job)
        return await job.future

    def _run(self) -> None:
        torch.set_num_threads(1)  # one thread of model work: the event loops keep the other cores
        try:
            self._serve()
        finally:
            self.writer.close()

    def _serve(self) -> None:
        held: list[Job] = []
        while True:
            first = held.pop(0) if held else self._queue.get()
            if first is None:
                return
            jobs, rows, stopping = [first], len(first.applicants), False
            deadline = time.perf_counter() + GATHER_S
            while rows < MAX_ROWS:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    if self.arrivals.count > 0 and time.perf_counter() < deadline:
                        time.sleep(NAP_S)
                        continue
                    break
                if job is None:
                    stopping = True
                    break
                if job.serving is not first.serving:  # another model version: its own batch
                    held.append(job)
                    continue
                jobs.append(job)
                rows += len(job.applicants)
            self._handle(jobs)
            if stopping:
                return

    def _handle(self, jobs: list[Job]) -> None:
        try:
            answers, queries = self._score(jobs)
        except Exception as exc:  # nothing is audited, nothing is served
            _settle([(job, exc) for job in jobs])
            return
        try:
            seqs = self.writer.write(queries)
        except AuditUnavailable as exc:
            _settle([(job, exc) for job in jobs])
            return
        if self.on_commit is not None:
            self.on_commit(len(jobs), time.perf_counter() - min(j.queued_at for j in jobs))
        for answer, seq in zip(answers, seqs, strict=True):
            answer["audit_entry"] = seq
        _settle([(job, to_json(answer)) for job, answer in zip(jobs, answers, strict=True)])

    def _score(self, jobs: list[Job]) -> tuple[list[dict[str, Any]], list[Query]]:
        serving = jobs[0].serving
        applicants = [a for job in jobs for a in job.applicants]
        given = [a.__dict__ for a in applicants]
        data = encode_applicants(applicants, serving.schema, serving.model.layout)
        result = score_batch(serving, data, self.rules, given)
        items = result.items()
        base = {
            "model": serving.identity(),
            "federation": self.served.federation,
            "federation_policy_sha256": self.served.policy_sha256,
        }
        answers, queries, start = [], [], 0
        for job in jobs:
            stop = start + len(job.applicants)
            if job.action == "score.batch":
                answer, outcome = {**base, "scores": items[start:stop]}, ""
            elif job.action == "decision":
                answer = {
                    **base,
                    **self._decision(serving, data, result, start, given),
                    "score": items[start],
                }
                outcome = str(answer["decision"])
            else:
                answer, outcome = {**base, "score": items[start]}, str(items[start]["grade"])
            answers.append(answer)
            queries.append(
                Query(
                    member=job.member,
                    action=job.action,
                    purpose=job.purpose,
                    consent_reference=job.consent_reference,
                    model_version=f"{self.served.federation}/{serving.version.label}",
                    policy_sha256=self.served.policy_sha256,
                    input_sha256=job.input_sha256,
                    applicants=len(job.applicants),
                    outcome=outcome,
                )
            )
            start = stop
        return answers, queries

    def _decision(
        self, serving: ServingModel, data: EncodedData, result: Scored, row: int, given: list[dict[str, Any]]
    ) -> dict[str, Any]:
        rules = self.rules.decision
        applicant = given[row]
        requested = (
            float(raw_values_of(applicant, rules.limit_feature)) if rules.limit_feature else float("nan")
        )
        verdict, limit = decide(float(result.pd[row]), requested, rules)
        adverse: list[dict[str, Any]] = []
        if verdict != "approve":
            one = data.subset(np.array([row]))
            adverse = reason_records(
                serving.model,
                serving.schema,
                one,
                result.effects[row : row + 1],
                MAX_REASONS,
                adverse=True,
                given=[applicant],
            )[0]
        return {"decision": verdict, "suggested_limit": round(limit, 2), "adverse_reasons": adverse}


def raw_values_of(applicant: dict[str, Any], name: str) -> float:
    """One field of one applicant as a float (nan when missing or not a number)."""
    value = applicant.get(name)
    return float(value) if isinstance(value, int | float) else float("nan")


def _settle(outcomes: list[tuple[Job, bytes | Exception]]) -> None:
    """Hand each job its answer or its error, with one wake-up per event loop for the whole batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[bytes], bytes | Exception]]] = {}
    for job, outcome in outcomes:
        if job.future is not None:
            by_loop.setdefault(job.future.get_loop(), []).append((job.future, outcome))
    for loop, settled in by_loop.items():

        def settle(settled: list[tuple[asyncio.Future[bytes], bytes | Exception]] = settled) -> None:
            for future, outcome in settled:
                if future.done():  # the client went away
                    continue
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle)
