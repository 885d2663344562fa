"""Scoring service throughput and latency, every query audited and committed, against a bare floor.

    python benchmarks/scoring.py [--json FILE] [--db URL] [--requests 5000] [--connections 16]
                                 [--busy-connections 64] [--rounds 5]

Starts the scoring service (``fedcredit serve``, uvicorn, one process) on loopback over a
fresh database (SQLite by default) with a registered SME model and a member token, and beside
it, with the same server settings, a bare FastAPI endpoint that returns a constant (the floor).
A small keep-alive HTTP/1.1 load generator in this process drives both:

* single: ``--requests`` scores over ``--connections`` connections as fast as they answer
  (and again over ``--busy-connections``, service and floor alike: ``single_busy``). Service
  and floor take turns, in ``--rounds`` rounds, so that a shared machine speeding up or slowing
  down during the run touches both alike; ``ratio_by_round`` shows how far the rounds agree;
* at_200_rps: scores sent at 200 requests/s (open loop) for ``--seconds``; latency p99;
* batch: ``POST /v1/scores/batch`` with 10,000 applicants, ``--batches`` times;
* in_process: parsing, encoding, scores, reason codes and the answer's JSON for 10,000
  applicants, as the service does them, without HTTP or audit.

Every 200 is checked to carry an audit entry; the entries are counted in the database at the end.
cpu_us_per_request: CPU time (user + system, from /proc) per request in the single phase, of the
service (its event loop process and its pipeline process), the floor, and this load generator
(they share the machine's cores). at_200_rps also counts the audit commits of that phase and
those that took over 25 ms (from the service's commit-lag histogram): an answer waits for its
commit, and so for the disk's sync.
Targets: ratio_to_floor >= 0.5, at_200_rps p99 <= 25 ms, batch >= 20,000 applicants/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI
from pydantic_core import to_json
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlmodel import Session, func, select

from benchmarks.proc_stats import cpu_seconds
from coordinator.local_deployment import free_port
from federation.datasets.synthetic import generate_sme
from federation.errors import FedCreditError
from federation.loading import encode_frame
from federation.model import FourDimensionModel, save_model
from federation.model_card import ModelCard, schema_sha256
from federation.normalization import local_moments, stats_from_moments
from federation.processes import start, stop, wait_for_port
from federation.schema import resolve_schema
from federation.training import mean_raw_contributions
from policies.audit import AuditEntry, create_audit_engine
from policies.demo_keys import DEMO_COORDINATOR_KEY, EXAMPLES
from policies.documents import FederationPolicy, load_policy
from policies.member_keys import issue
from policies.registry import Registration, register
from policies.signing import sign_policy

ROOT = Path(__file__).resolve().parents[1]
BATCH = 10_000
LAG = "fedcredit_audit_commit_lag_seconds"
MEMBER = "national_bank"

# the floor: the same server, the same settings, a constant answer
floor_app = FastAPI()


@floor_app.post("/v1/scores")
async def constant() -> dict[str, float]:
    return {"probability_of_default": 0.01}


def own_schema(url: str) -> tuple[str, str | None]:
    """``url`` itself for SQLite; for PostgreSQL, the URL of a new schema of its own (and its name)."""
    if make_url(url).get_backend_name() != "postgresql":
        return url, None
    schema = f"fedcredit_bench_{uuid.uuid4().hex[:10]}"
    with create_engine(url).begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}", schema


def applicants(rows: int, seed: int) -> list[dict[str, Any]]:
    """Synthetic SME applicants as members send them (no label, no protected attributes)."""
    schema = resolve_schema("sme")
    frame = generate_sme(rows, seed=seed)
    keep = [schema.id_column, *(c.name for c in schema.features())]
    frame = frame[keep].astype(object).where(frame[keep].notna(), None)
    return frame.to_dict(orient="records")


def prepare(folder: Path, url: str) -> tuple[Path, str]:
    """A benchmark federation policy (no practical rate limit), a registered model, a member token."""
    policy = folder / "federation.toml"
    text = (
        (EXAMPLES / "sme_consortium.toml")
        .read_text()
        .replace("requests_per_minute = 600", "requests_per_minute = 100000000")
    )
    policy.write_text(text)
    sign_policy(policy, EXAMPLES / "keys" / "demo_consortium.key")
    schema = resolve_schema("sme")
    data = encode_frame(generate_sme(5000, seed=1), schema, "benchmark")
    model = FourDimensionModel(data.layout)  # scoring costs the same whatever the weights
    model.set_normalization(stats_from_moments(local_moments(data.numeric)))
    model.set_reference(mean_raw_contributions(model, data))
    card = ModelCard(
        run_id="benchmark",
        schema_name=schema.name,
        schema_version=schema.version,
        schema_sha256=schema_sha256(schema),
        training_request_sha256="0" * 64,
        institutions=("national_bank",),
        demo=True,
    )
    model_path = folder / "run" / "model.pt"
    sha = save_model(model, model_path, card)
    federation = load_policy(policy)
    with Session(create_audit_engine(url)) as session:
        register(
            session,
            Registration(
                federation=federation.header.id,
                run_id="benchmark",
                model_path=str(model_path),
                model_sha256=sha,
                schema_name=schema.name,
                schema_version=schema.version,
                schema_sha256=schema_sha256(schema),
                federation_policy_sha256=federation.sha256,
                institutions=(("national_bank", None),),
                rounds=1,
                metrics={"global": {}, "institutions": {}},
                epsilon=None,
                demo=True,
            ),
            actor="benchmark",
        )
        token, _ = issue(session, federation, MEMBER, "member", actor="benchmark")  # type: ignore[arg-type]
        session.commit()
    return policy, token


def serve(command: list[str], port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a server (its output to ``log``, never an unread pipe) and wait until it listens."""
    process = start(command, env, log)
    try:
        wait_for_port("127.0.0.1", port, process, log)
    except FedCreditError:
        stop(process)
        raise
    return process


class Connection:
    """One keep-alive HTTP/1.1 connection: a request out, its response in (a minimal client)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def post(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


class Cpu:
    """CPU time a server's process tree and this process spend while measured."""

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid
        self.server = self.own = 0.0

    @contextlib.contextmanager
    def measuring(self) -> Iterator[None]:
        server, own = cpu_seconds(self.pid), time.process_time()
        yield
        self.server += cpu_seconds(self.pid) - server
        self.own += time.process_time() - own

    def server_us(self, requests: int) -> float:
        return round(self.server / requests * 1e6, 1)

    def own_us(self, requests: int) -> float:
        return round(self.own / requests * 1e6, 1)


def shares(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal whole shares."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def request_bytes(path: str, body: bytes, token: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Loop:
    """What closed loops measured: every request's latency, and the time they took in all."""

    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0

    def add(self, other: Loop) -> None:
        self.latencies += other.latencies
        self.elapsed += other.elapsed

    def figures(self) -> dict[str, float]:
        ms = np.asarray(self.latencies) * 1000
        return {
            "rps": len(self.latencies) / self.elapsed,
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
        }


async def closed_loop(port: int, raws: list[bytes], total: int, connections: int, audited: bool) -> Loop:
    """``total`` requests over ``connections`` connections, each sending the next when answered."""
    loop = Loop()
    counter = iter(range(total))

    async def worker() -> None:
        conn = await Connection.open(port)
        try:
            for i in counter:
                sent = time.perf_counter()
                status, body = await conn.post(raws[i % len(raws)])
                loop.latencies.append(time.perf_counter() - sent)
                if status != 200 or (audited and b'"audit_entry"' not in body):
                    raise RuntimeError(f"request {i}: status {status}: {body[:300]!r}")
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    loop.elapsed += time.perf_counter() - started
    return loop


async def open_loop(
    port: int, raws: list[bytes], rate: float, seconds: float, connections: int
) -> dict[str, float]:
    """Requests sent at ``rate`` per second whatever the answers (idle connections from a pool)."""
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await Connection.open(port))
    latencies: list[float] = []
    total = int(rate * seconds)

    async def one(i: int, due: float) -> None:
        conn = await pool.get()
        status, body = await conn.post(raws[i % len(raws)])
        latencies.append(time.perf_counter() - due)  # from when it was due: queueing counts
        pool.put_nowait(conn)
        if status != 200 or b'"audit_entry"' not in body:
            raise RuntimeError(f"request {i}: status {status}")

    started = time.perf_counter()
    tasks = []
    for i in range(total):
        due = started + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait().close()
    ms = np.asarray(latencies) * 1000
    return {
        "rate": rate,
        "requests": total,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
    }


def commit_lags(port: int) -> tuple[int, int]:
    """The service's audit commits so far and those that took over 25 ms from the oldest query's
    arrival (its ``fedcredit_audit_commit_lag_seconds`` histogram): at a light load a slow commit
    is a slow disk sync, which every answer of that commit waits for."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith(LAG))
    total = int(values[f"{LAG}_count"])
    return total, total - int(values[f'{LAG}_bucket{{le="0.025"}}'])


async def batches(port: int, raw: bytes, count: int) -> float:
    conn = await Connection.open(port)
    try:
        started = time.perf_counter()
        for _ in range(count):
            status, body = await conn.post(raw)
            if status != 200:
                raise RuntimeError(f"batch: status {status}: {body[:300]!r}")
        return count * BATCH / (time.perf_counter() - started)
    finally:
        conn.close()


def in_process(body: bytes, policy: Path, url: str) -> float:
    """Applicants per second from a batch request's bytes to scores with reasons, as the service
    parses and scores them, without HTTP or audit."""
    from coordinator.service.applicants import encode_applicants, request_models
    from coordinator.service.scorer import ServingModel, score_batch
    from policies.registry import active_version

    schema = resolve_schema("sme")
    federation = load_policy(policy)
    with Session(create_audit_engine(url)) as session:
        version = active_version(session, federation.header.id)
    assert version is not None
    serving = ServingModel.load(version, schema)
    assert isinstance(federation, FederationPolicy) and federation.scoring is not None
    rules = federation.scoring
    _, batch_model = request_models(schema, rules.max_batch)
    best = 0.0
    for _ in range(3):
        started = time.perf_counter()
        parsed = batch_model.model_validate_json(body).applicants  # type: ignore[attr-defined]
        given = [p.__dict__ for p in parsed]
        data = encode_applicants(given, schema, serving.model.layout)
        scored = score_batch(serving, data, rules, given)
        to_json({"scores": scored.items()})
        best = max(best, len(parsed) / (time.perf_counter() - started))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--db",
        help="database URL (default: a SQLite file in a temporary folder); on PostgreSQL the "
        "benchmark works in a schema of its own and drops it at the end",
    )
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--busy-connections",
        type=int,
        default=64,
        help="a second, busier closed loop (more queries share each pass and commit)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="the closed loops run in this many rounds, service and floor in turn, so that a change "
        "in the machine's speed during the run touches both alike",
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batches", type=int, default=5)
    args = parser.parse_args()
    if not 1 <= args.rounds <= args.requests:
        parser.error(f"--rounds must be between 1 and --requests ({args.requests}), got {args.rounds}")
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="fedcredit-scoring-bench-"))
    url, schema = own_schema(args.db) if args.db else (f"sqlite:///{folder / 'fedcredit.db'}", None)
    try:
        policy, token = prepare(folder, url)
        env = {**os.environ, "FEDCREDIT_VAR_DIR": str(folder), "PYTHONPATH": str(ROOT)}
        singles = [
            json.dumps(
                {"purpose": "credit_underwriting", "consent_reference": f"c{i}", "applicant": a}
            ).encode()
            for i, a in enumerate(applicants(200, seed=2))
        ]
        batch_rows = applicants(BATCH, seed=3)
        batch_body = json.dumps(
            {"purpose": "credit_underwriting", "consent_reference": "batch", "applicants": batch_rows}
        ).encode()

        port = free_port()
        fedcredit = str(Path(sys.executable).with_name("fedcredit"))
        service = serve(
            [
                fedcredit,
                "serve",
                "--federation-policy",
                str(policy),
                "--trust",
                str(EXAMPLES / "keys" / "demo_consortium.pub"),
                "--coordinator-key",
                str(DEMO_COORDINATOR_KEY),
                "--allow-demo-keys",
                "--db",
                url,
                "--port",
                str(port),
            ],
            port,
            env,
            folder / "service.log",
        )
        try:
            floor_port = free_port()  # chosen once the service listens: not the service's port
            floor = serve(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "benchmarks.scoring:floor_app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(floor_port),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                floor_port,
                env,
                folder / "floor.log",
            )
        except BaseException:
            stop(service)
            raise
        try:
            raws = [request_bytes("/v1/scores", b, token) for b in singles]
            asyncio.run(closed_loop(port, raws, 300, args.connections, audited=True))  # warm-up
            asyncio.run(closed_loop(floor_port, raws, 300, args.connections, audited=False))
            service_cpu, floor_cpu = Cpu(service.pid), Cpu(floor.pid)
            single, bare, busy, bare_busy = Loop(), Loop(), Loop(), Loop()
            ratios: list[float] = []
            for share in shares(args.requests, args.rounds):  # service and floor in turn
                with service_cpu.measuring():
                    one = asyncio.run(closed_loop(port, raws, share, args.connections, True))
                with floor_cpu.measuring():
                    other = asyncio.run(closed_loop(floor_port, raws, share, args.connections, False))
                ratios.append(one.figures()["rps"] / other.figures()["rps"])
                single.add(one)
                bare.add(other)
            for share in shares(args.requests, args.rounds):
                busy.add(asyncio.run(closed_loop(port, raws, share, args.busy_connections, True)))
                bare_busy.add(asyncio.run(closed_loop(floor_port, raws, share, args.busy_connections, False)))
            commits_before, slow_before = commit_lags(port)
            paced = asyncio.run(open_loop(port, raws, 200.0, args.seconds, args.connections))
            commits_after, slow_after = commit_lags(port)
            batch_rate = asyncio.run(
                batches(port, request_bytes("/v1/scores/batch", batch_body, token), args.batches)
            )
        finally:
            try:
                stop(floor)
            finally:
                stop(service)

        with Session(create_audit_engine(url)) as session:
            queries = session.exec(
                select(func.count()).select_from(AuditEntry).where(AuditEntry.action.startswith("query."))
            ).one()
        expected = 300 + 2 * args.requests + int(200.0 * args.seconds) + args.batches
        process_rate = in_process(batch_body, policy, url)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if schema is not None:
            with create_engine(args.db).begin() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    single_figures, busy_figures, busy_floor_rps = (
        single.figures(),
        busy.figures(),
        bare_busy.figures()["rps"],
    )
    single_rps, floor_rps = single_figures["rps"], bare.figures()["rps"]
    figures = {
        "single": {
            "rps": round(single_rps, 1),
            "p50_ms": round(single_figures["p50_ms"], 2),
            "p99_ms": round(single_figures["p99_ms"], 2),
            "floor_rps": round(floor_rps, 1),
            "ratio_to_floor": round(single_rps / floor_rps, 3),
            "ratio_by_round": [round(r, 3) for r in ratios],
        },
        "cpu_us_per_request": {
            "service": service_cpu.server_us(args.requests),
            "service_load_generator": service_cpu.own_us(args.requests),
            "floor": floor_cpu.server_us(args.requests),
            "floor_load_generator": floor_cpu.own_us(args.requests),
        },
        "single_busy": {
            "connections": args.busy_connections,
            "rps": round(busy_figures["rps"], 1),
            "p99_ms": round(busy_figures["p99_ms"], 2),
            "floor_rps": round(busy_floor_rps, 1),
            "ratio_to_floor": round(busy_figures["rps"] / busy_floor_rps, 3),
        },
        "at_200_rps": {
            "p99_ms": round(paced["p99_ms"], 2),
            "p50_ms": round(paced["p50_ms"], 2),
            "max_ms": round(paced["max_ms"], 2),
            "requests": paced["requests"],
            "commits": commits_after - commits_before,
            "commits_over_25ms": slow_after - slow_before,
        },
        "batch": {"applicants_per_s": round(batch_rate), "batch_size": BATCH},
        "in_process": {"applicants_per_s": round(process_rate)},
        "audited_queries": {"committed": int(queries), "expected": expected},
        "database": url.split(":", 1)[0],
        "connections": args.connections,
    }
    print(json.dumps(figures, indent=2))
    targets = {
        "ratio_to_floor >= 0.5": single_rps / floor_rps >= 0.5,
        "at_200_rps p99 <= 25 ms": paced["p99_ms"] <= 25,
        "batch >= 20,000 applicants/s": batch_rate >= 20_000,
        "every query audited": int(queries) == expected,
    }
    for name, met in targets.items():
        print(f"{'met ' if met else 'MISSED'}  {name}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
