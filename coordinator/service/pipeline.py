"""The scoring pipeline: a process of its own scores queries and commits their audit entries.

This module is the service's side (:class:`Pipeline`); the process's is :mod:`.pipeline_worker`.

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
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from coordinator.service.audit_writer import AuditUnavailable
from coordinator.service.pipeline_worker import LENGTH, Worker
from coordinator.service.scorer import ServingModel

log = logging.getLogger("fedcredit.service")
STOP_TIMEOUT_S = 30.0
# sockets a pipeline process closes as it starts: the service's ends of the pipes (held there, they
# would keep a pipeline from seeing its service go) and the service's listening socket
_SERVICE_ENDS: weakref.WeakSet[socket.socket] = weakref.WeakSet()


def keep_from_pipeline(listening: socket.socket) -> None:
    """``listening`` (a service's socket, bound before its pipeline forks) stays out of the pipeline
    process: a service that ends stops listening, whatever its pipeline still finishes."""
    _SERVICE_ENDS.add(listening)


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
                for end in list(_SERVICE_ENDS):
                    end.close()
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
        """End the process: it answers what it holds, sees the connection close and exits; then reap it."""
        self._flush()  # what is queued goes first
        self._closing = True
        if self._writer is not None:
            with contextlib.suppress(OSError, RuntimeError):
                self._writer.write_eof()
        if self._reader_task is not None:
            with contextlib.suppress(Exception):  # on time-out the reader is cancelled
                await asyncio.wait_for(self._reader_task, STOP_TIMEOUT_S)
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
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
        if not pending:
            return
        if self._stopped or self._closing or self._writer is None:
            for key, _ in pending:
                future = self._waiting.pop(key, None)
                if future is not None:
                    _resolve(future, PipelineStopped(self._stopped or "the scoring pipeline is stopping"))
            return
        message = pickle.dumps([job.message(key) for key, job in pending], protocol=pickle.HIGHEST_PROTOCOL)
        self._writer.write(LENGTH.pack(len(message)) + message)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                (length,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
                replies, committed = pickle.loads(await reader.readexactly(length))
                if self.on_commit is not None:
                    for entries, lag in committed:
                        self.on_commit(entries, lag)
                for key, reply in replies:
                    future = self._waiting.pop(key, None)
                    if future is not None:
                        _resolve(future, reply if isinstance(reply, bytes) else _failure(*reply))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the process has ended
        except Exception as exc:  # a reply it cannot read: no answer can be trusted to come
            log.error("reading the scoring pipeline failed: %s", type(exc).__name__)
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
    loop = future.get_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is running:
        _settle(future, outcome)
    else:
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
            loop.call_soon_threadsafe(_settle, future, outcome)


def _settle(future: asyncio.Future[bytes], outcome: bytes | Exception) -> None:
    if future.done():
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _failure(kind: str, detail: str) -> Exception:
    if kind == "audit":
        return AuditUnavailable(detail)
    if kind == "model":
        return ModelUnavailable(detail)
    return RuntimeError(f"scoring failed: {detail}")


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
