"""Cost of compliance: policy evaluation per request, and an audit append, on SQLite and PostgreSQL.

    python benchmarks/policy.py [--json FILE] [--appends 2000] [--postgres URL]

Evaluation: `evaluate_training` on the demo national bank policy and a signed
request listing every SME feature (signature check included). Append: one audit
entry in its own transaction (lock, read the head, hash, insert, commit), as the
node and coordinator write them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from coordinator.run_settings import RunSettings
from coordinator.server_app import training_request
from federation.schema import resolve_schema
from policies.audit import create_audit_engine, record
from policies.decisions import evaluate_training, sign_request
from policies.demo_keys import EXAMPLES
from policies.documents import InstitutionPolicy, load_policy
from policies.signing import load_private_key


def _stats(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {
        "median_ms": statistics.median(ms),
        "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))],
        "n": len(ms),
    }


def bench_evaluation(n: int) -> dict[str, float]:
    policy = load_policy(EXAMPLES / "national_bank.toml")
    assert isinstance(policy, InstitutionPolicy)
    settings = RunSettings(
        schema="sme", run_id="bench", rounds=10, min_institutions=3, secure_aggregation=False
    )
    signed = sign_request(
        training_request(settings, resolve_schema("sme")),
        load_private_key(EXAMPLES / "keys" / "demo_coordinator.key"),
    )
    times = []
    for _ in range(n):
        t = time.perf_counter()
        decision = evaluate_training(policy, signed, 10_000)
        times.append(time.perf_counter() - t)
    assert decision.allowed
    return _stats(times)


def bench_appends(url: str, n: int) -> dict[str, float]:
    engine = create_audit_engine(url)
    times = []
    for i in range(n):
        t = time.perf_counter()
        record(
            engine,
            actor="bench",
            action="bench.append",
            resource=f"r{i}",
            decision="permit",
            rules=["permit.purpose_allowed"],
            policy_sha256="a" * 64,
            input_sha256="b" * 64,
        )
        times.append(time.perf_counter() - t)
    engine.dispose()
    return _stats(times)


def bench_postgres(base: str, n: int) -> dict[str, float]:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    dsn = base.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        return bench_appends(f"{base}?options=-csearch_path%3D{schema}", n)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--evaluations", type=int, default=5000)
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"policy_evaluation": bench_evaluation(args.evaluations)}
    with tempfile.TemporaryDirectory() as tmp:
        result["audit_append_sqlite"] = bench_appends(f"sqlite:///{tmp}/audit.db", args.appends)
    result["audit_append_postgresql"] = bench_postgres(args.postgres, args.appends)
    print(f"{'':32s} {'median ms':>10s} {'p99 ms':>10s} {'n':>7s}")
    for name, row in result.items():
        print(f"{name:32s} {row['median_ms']:10.4f} {row['p99_ms']:10.4f} {row['n']:7d}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
