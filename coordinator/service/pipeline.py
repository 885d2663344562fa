"""The scoring pipeline: a process of its own scores queries and commits their audit entries.

The service's event loop reads, authenticates and validates requests; the pipeline process
scores them and appends their audit entries. In one process the two shared one interpreter
lock, so the service used a single core however many it had; forked at start-up, the pipeline
works on a core of its own while the event loop answers.

Queries that arrive together travel together. Once per turn of the event loop, every query
read in that turn goes to the process as one message; the process takes every message waiting,
scores them in one pass of the model, appends their audit entries in one transaction (group
commit), and only then sends the answers back. No score leaves before its entry is committed.
An idle service handles a lone query at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import struct
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
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
_LENGTH = struct.Struct("!Q")  # every message: its length, then its pickle
STOP_TIMEOUT_S = 30.0
_SERVICE_ENDS: weakref.WeakSet[socket.socket] = weakref.WeakSet()  # the service's ends of the pipes


class PipelineStopped(Exception):
    """The pipeline process is gone: nothing can be scored (the service is not ready)."""


class ModelUnavailable(Exception):
    """The pipeline process could not load the model version a query was accepted for."""


@dataclass
class Job:
    """One request: what to score, and what its audit entry says about it."""

    action: str  # score | score.batch | decision
    version_id: int  # the registered model version the request was accepted for
    applicants: list[BaseModel]
    member: str
    purpose: str
    consent_reference: str
    input_sha256: str
    queued_at: float = field(default_factory=time.perf_counter)  # one clock for both processes

    def message(self, key: int) -> tuple[Any, ...]:
        """What goes to the pipeline process: plain values (a pickle of models costs far more)."""
        return (
            key,
            self.action,
            self.version_id,
            [a.__dict__ for a in self.applicants],
            self.member,
            self.purpose,
            self.consent_reference,
            self.input_sha256,
            self.queued_at,
        )


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
    """One message's worth of scored queries, waiting for their commit."""

    queries: list[_Query] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)
    audit: list[Query] = field(default_factory=list)
    replies: list[tuple[int, Reply]] = field(default_factory=list)  # failed before the commit


class Worker:
    """The pipeline process's work: score a batch, commit its audit entries, make the answers.

    Made in the service before the fork (so the process inherits the verified policy, the key and
    the model already loaded); it loads any other version by its registry id, checking its hash."""

    def __init__(
        self, rules: ScoringRules, writer: AuditWriter, served: Served, schema: Schema, engine: Engine
    ) -> None:
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
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service stops us by closing the socket
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        torch.set_num_threads(1)
        self.engine.dispose(close=False)  # the service's pooled connections stay the service's
        inbox = _Inbox(connection)
        try:
            while True:
                messages = inbox.receive()
                if messages is None:
                    return
                queries = [_Query(*item) for message in messages for item in pickle.loads(message)]
                replies, committed = self.commit([self.score(queries)])
                _send(connection, pickle.dumps((replies, committed), protocol=pickle.HIGHEST_PROTOCOL))
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

    def commit(self, scored: list[_Scored]) -> tuple[list[tuple[int, Reply]], list[tuple[int, float]]]:
        """Commit the audit records of ``scored`` in one transaction (group commit); each query's reply, and the
        commit as (entries, seconds since the oldest query arrived)."""
        replies = [r for s in scored for r in s.replies]
        queries = [q for s in scored for q in s.queries]
        if not queries:
            return replies, []
        try:
            seqs = self.writer.write([a for s in scored for a in s.audit])
        except AuditUnavailable as exc:
            return replies + [(q.key, ("audit", str(exc))) for q in queries], []
        lag = time.perf_counter() - min(q.queued_at for q in queries)
        answers = [a for s in scored for a in s.answers]
        for answer, seq in zip(answers, seqs, strict=True):
            answer["audit_entry"] = seq
        replies += [(q.key, to_json(a)) for q, a in zip(queries, answers, strict=True)]
        return replies, [(len(queries), lag)]

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


class Pipeline:
    """The service's side: forks the pipeline process, sends it jobs, hands each request its answer."""

    def __init__(self, worker: Worker, on_commit: Callable[[int, float], None] | None = None) -> None:
        self.worker = worker
        self.on_commit = on_commit  # (entries, seconds from the oldest query's arrival to its commit)
        self._pid: int | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: list[tuple[int, Job]] = []
        self._waiting: dict[int, asyncio.Future[bytes]] = {}
        self._next_key = 0
        self._flush_scheduled = False
        self._stopped = "the scoring pipeline has not started"
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.on_lost: Callable[[], None] | None = None  # the process ended while the service runs

    async def start(self, serving: ServingModel | None) -> None:
        """Fork the pipeline process (it starts with ``serving`` loaded)."""
        self.worker.adopt(serving)
        ours, theirs = socket.socketpair()
        _SERVICE_ENDS.add(ours)
        pid = os.fork()
        if pid == 0:  # the pipeline process: never returns into the server's code
            code = 1
            try:
                for end in list(_SERVICE_ENDS):  # ours, and any other pipeline's in this process:
                    end.close()  # held here, they would keep that pipeline from seeing its service go
                self.worker.serve(theirs)
                code = 0
            except BaseException as exc:  # reported, then the process ends
                log.error("the scoring pipeline process failed: %s", type(exc).__name__)
            finally:
                os._exit(code)
        theirs.close()
        self._pid = pid
        reader, self._writer = await asyncio.open_connection(sock=ours)
        self._loop = asyncio.get_running_loop()
        self._stopped = ""
        self._reader_task = asyncio.create_task(self._read(reader))

    async def stop(self) -> None:
        """Close the connection (the process ends when it has answered what it holds) and wait."""
        self._closing = True
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._reader_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader_task, STOP_TIMEOUT_S)
            self._reader_task.cancel()
        if self._pid is not None:
            await asyncio.to_thread(_reap, self._pid)
            self._pid = None
        self._fail_all("the scoring pipeline has stopped")

    @property
    def alive(self) -> bool:
        return not self._stopped

    @property
    def pid(self) -> int | None:
        """The pipeline process (None before it starts and after it is reaped)."""
        return self._pid

    @property
    def backlog(self) -> int:
        return len(self._waiting)

    async def run(self, job: Job) -> bytes:
        """The answer's JSON, once the job's audit entry is committed (else :class:`AuditUnavailable`,
        :class:`ModelUnavailable` or :class:`PipelineStopped`)."""
        if self._stopped or self._loop is None:
            raise PipelineStopped(self._stopped)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if loop is self._loop:
            self._enqueue(job, future)
        else:  # a request served on another event loop (a test client's): hand it over safely
            self._loop.call_soon_threadsafe(self._enqueue, job, future)
        return await future

    def _enqueue(self, job: Job, future: asyncio.Future[bytes]) -> None:
        if self._stopped:
            _resolve(future, PipelineStopped(self._stopped))
            return
        key, self._next_key = self._next_key, self._next_key + 1
        self._waiting[key] = future
        self._pending.append((key, job))
        if not self._flush_scheduled:  # after this turn of the loop: every query read in it, at once
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        if self._stopped or self._writer is None or not pending:
            return
        message = pickle.dumps([job.message(key) for key, job in pending], protocol=pickle.HIGHEST_PROTOCOL)
        self._writer.write(_LENGTH.pack(len(message)) + message)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
                replies, committed = pickle.loads(await reader.readexactly(length))
                if self.on_commit is not None:
                    for entries, lag in committed:
                        self.on_commit(entries, lag)
                for key, reply in replies:
                    future = self._waiting.pop(key, None)
                    if future is not None:
                        _resolve(future, reply if isinstance(reply, bytes) else _failure(*reply))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._fail_all("the scoring pipeline process has stopped")
            if not self._closing:
                log.error("the scoring pipeline process has stopped")
                if self.on_lost is not None:
                    self.on_lost()

    def _fail_all(self, why: str) -> None:
        self._stopped = self._stopped or why
        waiting, self._waiting, self._pending = self._waiting, {}, []
        for future in waiting.values():
            _resolve(future, PipelineStopped(why))


def _resolve(future: asyncio.Future[bytes], outcome: bytes | Exception) -> None:
    """Settle ``future`` with its answer or its error, from any thread (once; a request whose
    client went away is already cancelled)."""

    def settle() -> None:
        if future.done():
            return
        if isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    loop = future.get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is running:
        settle()
    else:
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
            loop.call_soon_threadsafe(settle)


def _failure(kind: str, detail: str) -> Exception:
    if kind == "audit":
        return AuditUnavailable(detail)
    if kind == "model":
        return ModelUnavailable(detail)
    return RuntimeError(f"scoring failed: {detail}")


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
        while len(self.buffer) - start >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self.buffer, start)
            end = start + _LENGTH.size + length
            if len(self.buffer) < end:
                break
            messages.append(bytes(self.buffer[start + _LENGTH.size : end]))
            start = end
        del self.buffer[:start]
        return messages


def _send(connection: socket.socket, message: bytes) -> None:
    connection.sendall(_LENGTH.pack(len(message)) + message)


def _reap(pid: int) -> None:
    """Wait for the process to end; kill it if it will not."""
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
