"""The scoring pipeline process's side: it scores queries and commits their audit entries.

Forked by the service (:mod:`.pipeline`), it reads length-prefixed pickled messages of queries
from its socket, takes every message waiting, scores them in one pass of the model, appends
their audit entries in one transaction (group commit), and only then sends the answers back.
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import signal
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic_core import to_json
from sqlalchemy.engine import Engine
from sqlmodel import Session

from coordinator.service.applicants import encode_applicants
from coordinator.service.audit_writer import AuditUnavailable, AuditWriter, Query
from coordinator.service.scorer import MAX_REASONS, Scored, ServingModel, decide, score_batch
from federation.loading import EncodedData
from federation.reasons import reason_records
from federation.schema import Schema
from policies.documents import ScoringRules
from policies.registry import ModelVersion

log = logging.getLogger("fedcredit.service")
MAX_ROWS = 20_000  # applicants scored in one pass at most
LENGTH = struct.Struct("!Q")  # every message: its length, then its pickle


@dataclass(frozen=True)
class Served:
    """What every answer names: the federation and the policy whose rules it follows."""

    federation: str
    policy_sha256: str


Reply = bytes | tuple[str, str]  # an answer's JSON, or a failure: (kind, detail)


@dataclass
class _Query:
    """A job as the pipeline process receives it."""

    key: int
    action: str
    version_id: int
    given: list[dict[str, Any]]
    member: str
    purpose: str
    consent_reference: str
    input_sha256: str
    queued_at: float


@dataclass
class _Scored:
    """Scored queries waiting for their commit, and the replies of those that failed before it."""

    queries: list[_Query] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)
    audit: list[Query] = field(default_factory=list)
    replies: list[tuple[int, Reply]] = field(default_factory=list)  # failed before the commit


class Worker:
    """The pipeline process's work: score a batch, commit its audit entries, make the answers.

    Made in the service before the fork (so the process inherits the verified policy, the key and
    the model already loaded); it loads any other version by its registry id, checking its hash."""

    def __init__(
        self,
        rules: ScoringRules,
        writer: AuditWriter,
        served: Served,
        schema: Schema,
        engine: Engine,
        max_commit: int,
    ) -> None:
        self.max_commit = max_commit  # queries committed in one transaction at most
        self.rules = rules
        self.writer = writer
        self.served = served
        self.schema = schema
        self.engine = engine
        self.models: dict[int, ServingModel] = {}

    def adopt(self, serving: ServingModel | None) -> None:
        if serving is not None and serving.version.id is not None:
            self.models[serving.version.id] = serving

    def serve(self, connection: socket.socket) -> None:
        """Answer messages on ``connection`` until the service closes it (in the forked process).

        One thread does it all, in turn: a second one committing while this one scored was slower
        (the two then contend for the interpreter lock across cores)."""
        # the service stops us by closing the socket, after its last answers: a SIGINT or SIGTERM
        # sent to the whole process group (Ctrl-C, a supervisor) is for the service to handle
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        torch.set_num_threads(1)
        self.engine.dispose(close=False)  # the service's pooled connections stay the service's
        inbox = _Inbox(connection)
        try:
            while True:
                messages = inbox.receive()
                if messages is None:
                    return
                queries = [_Query(*item) for message in messages for item in pickle.loads(message)]
                for start in range(0, len(queries), self.max_commit):
                    replies, committed = self.commit(self.score(queries[start : start + self.max_commit]))
                    send(connection, pickle.dumps((replies, committed), protocol=pickle.HIGHEST_PROTOCOL))
        finally:
            self.writer.close()

    def score(self, queries: list[_Query]) -> _Scored:
        """Answers (without their entry numbers yet) and audit records; failures answered as such."""
        out = _Scored()
        for batch in _batches(queries):
            try:
                serving = self.model(batch[0].version_id)
            except Exception as exc:
                log.error("model version %s cannot be loaded: %s", batch[0].version_id, exc)
                out.replies += [(q.key, ("model", f"{type(exc).__name__}")) for q in batch]
                continue
            try:
                answers, audit = self._score(serving, batch)
            except Exception as exc:  # nothing is audited, nothing is served
                log.error("scoring failed: %s: %s", type(exc).__name__, exc)
                out.replies += [(q.key, ("error", type(exc).__name__)) for q in batch]
                continue
            out.queries += batch
            out.answers += answers
            out.audit += audit
        return out

    def commit(self, scored: _Scored) -> tuple[list[tuple[int, Reply]], list[tuple[int, float]]]:
        """Commit the audit records of ``scored`` in one transaction (group commit); each query's
        reply, and the commit as (entries, seconds since the oldest query arrived)."""
        if not scored.queries:
            return scored.replies, []
        try:
            seqs = self.writer.write(scored.audit)
        except AuditUnavailable as exc:
            return scored.replies + [(q.key, ("audit", str(exc))) for q in scored.queries], []
        lag = time.perf_counter() - min(q.queued_at for q in scored.queries)
        for answer, seq in zip(scored.answers, seqs, strict=True):
            answer["audit_entry"] = seq
        answered = [(q.key, to_json(a)) for q, a in zip(scored.queries, scored.answers, strict=True)]
        return scored.replies + answered, [(len(scored.queries), lag)]

    def model(self, version_id: int) -> ServingModel:
        serving = self.models.get(version_id)
        if serving is None:
            with Session(self.engine) as session:
                version = session.get(ModelVersion, version_id)
            if version is None:
                raise LookupError(f"no model version with id {version_id}")
            serving = ServingModel.load(version, self.schema)  # refuses a changed weights file
            self.models = {version_id: serving}  # versions change rarely: keep the latest only
        return serving

    def _score(
        self, serving: ServingModel, queries: list[_Query]
    ) -> tuple[list[dict[str, Any]], list[Query]]:
        given = [g for q in queries for g in q.given]
        data = encode_applicants(given, serving.schema, serving.model.layout)
        result = score_batch(serving, data, self.rules, given)
        items = result.items()
        base = {
            "model": serving.identity(),
            "federation": self.served.federation,
            "federation_policy_sha256": self.served.policy_sha256,
        }
        model_version = f"{self.served.federation}/{serving.version.label}"
        answers, audit, start = [], [], 0
        for query in queries:
            stop = start + len(query.given)
            if query.action == "score.batch":
                answer, outcome = {**base, "scores": items[start:stop]}, ""
            elif query.action == "decision":
                answer = {
                    **base,
                    **self._decision(serving, data, result, start, given),
                    "score": items[start],
                }
                outcome = str(answer["decision"])
            else:
                answer, outcome = {**base, "score": items[start]}, str(items[start]["grade"])
            answers.append(answer)
            audit.append(
                Query(
                    member=query.member,
                    action=query.action,
                    purpose=query.purpose,
                    consent_reference=query.consent_reference,
                    model_version=model_version,
                    policy_sha256=self.served.policy_sha256,
                    input_sha256=query.input_sha256,
                    applicants=len(query.given),
                    outcome=outcome,
                )
            )
            start = stop
        return answers, audit

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
                compiled=serving.towers,
            )[0]
        return {"decision": verdict, "suggested_limit": round(limit, 2), "adverse_reasons": adverse}


def _batches(queries: list[_Query]) -> list[list[_Query]]:
    """Consecutive queries of one model version, up to ``MAX_ROWS`` applicants a batch."""
    batches: list[list[_Query]] = []
    rows = 0
    for query in queries:
        if not batches or query.version_id != batches[-1][0].version_id or rows + len(query.given) > MAX_ROWS:
            batches.append([])
            rows = 0
        batches[-1].append(query)
        rows += len(query.given)
    return batches


def raw_values_of(applicant: dict[str, Any], name: str) -> float:
    """One field of one applicant as a float (nan when missing or not a number)."""
    value = applicant.get(name)
    return float(value) if isinstance(value, int | float) else float("nan")


class _Inbox:
    """Length-prefixed messages from a blocking socket: waits for one, then takes all that wait."""

    def __init__(self, connection: socket.socket) -> None:
        self.connection = connection
        self.buffer = bytearray()

    def receive(self) -> list[bytes] | None:
        """The messages waiting (at least one); None once the service has closed the socket."""
        while True:
            messages = self._complete()
            if messages:
                return messages
            chunk = self.connection.recv(1 << 20)
            if not chunk:
                return None
            self.buffer += chunk
            with contextlib.suppress(BlockingIOError):  # and whatever else is there already
                while chunk := self.connection.recv(1 << 20, socket.MSG_DONTWAIT):
                    self.buffer += chunk

    def _complete(self) -> list[bytes]:
        messages, start = [], 0
        while len(self.buffer) - start >= LENGTH.size:
            (length,) = LENGTH.unpack_from(self.buffer, start)
            end = start + LENGTH.size + length
            if len(self.buffer) < end:
                break
            messages.append(bytes(self.buffer[start + LENGTH.size : end]))
            start = end
        del self.buffer[:start]
        return messages


def send(connection: socket.socket, message: bytes) -> None:
    connection.sendall(LENGTH.pack(len(message)) + message)
