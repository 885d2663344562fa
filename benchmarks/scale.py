"""Scale: seconds per federated round and peak memory for 10, 100 and 1,000 institutions, SecAgg+ on.

    python benchmarks/scale.py --json var/bench/scale.json [--sizes 10,100,1000] [--rounds 3]

Each size runs in a fresh subprocess (this script with ``--one N``), so that memory is
measured per size and no Ray state carries over. The subprocess lays out N institutions
the way ``fedcredit simulate`` does, at a fixed size each: ``--rows`` synthetic SME
borrowers per institution (``federation.datasets.synthetic.generate_sme``), dealt out
evenly at random and written with ``federation.datasets.partition.write_partition``
(a quarter of each institution's rows are its holdout), a signed simulation policy and
a node key per institution (``coordinator.simulation.nodes.with_policies``), and a
2,000-row test set for the coordinator. (``sme_federation`` has 9 institution
profiles, and the UCI re-split leaves 24 rows per institution at 1,000, below the
simulation policy's minimum of 50; hence the even split.) Then it trains
with ``coordinator.simulation.engine.run_simulated_federation``, as the CLI does:
Flower's simulation engine on Ray, two node workers (one per core, at most
``--parallel-nodes``), every institution in every round, each node scoring every
round's model on its holdout rows, FedAvg, SecAgg+ on.

SecAgg+ neighbourhoods: ``num_shares`` is the smallest odd number at least
``--share-factor`` * log2(N) (the whole federation when that is N or more; a count
below N must be odd, ``coordinator.secure_aggregation.shares_and_threshold``), and the
reconstruction threshold a majority of the shares; both go through
``RunSettings.secure_aggregation_shares`` / ``reconstruction_threshold``, the fields a
federation policy sets. The product's default (every institution holds a share of
every other's secrets) is left as it is.

round_seconds: the mean, over training rounds 2..R, of the wall time between the
coordinator's test evaluation of one round and of the next: one whole training round
(the four SecAgg+ message rounds of the fit, the coordinator's test evaluation, the
nodes' holdout evaluation). Not counted: the data, keys and policies, Ray's start,
the normalization round, round 1 (reported as round1_seconds: first-use costs in the
workers), and the fairness and reference rounds after training. fit_seconds is the
SecAgg+ fit alone (configure_fit to aggregate_fit) over the same rounds, and
stage_seconds the coordinator's wait for each message round of a training round.
Where the time goes, per counted round: main_process_cpu_seconds_per_round (the
coordinator, Flower's simulated SuperLink and its message pickup all run in the
subprocess's main process) and linkstate_per_round, the calls into Flower's in-memory
link state and the seconds spent in them (get_message_ins: the simulation engine's
pickup loop, one call per new message (``coordinator.simulation.prompt_pickup``), each
scanning the messages in flight up to it; get_message_res: the coordinator's poll for
replies, one call per poll over every message still awaited).

peak_rss_mib: every ~0.2 s a thread here sums VmRSS (/proc/<pid>/status) over the
subprocess and all its descendants (Ray's GCS, raylet, dashboard agent, workers) and
any process in the subprocess's session (should Ray reparent one), found by a scan of
/proc once a second; the largest sum, and what each command contributed to it. A sum
of RSS counts shared pages (libraries, Ray's shared memory) once per process that
maps them; peak_pss_mib (Pss from /proc/<pid>/smaps_rollup, read every 5 s as it is
costly) shares them out. cpu_seconds_by_process and load_average_mean (the machine's
1-minute load during the size; above the core count the figures include waiting for a
core) come from the same scans.

A size that runs past --timeout-minutes is stopped (its whole session) and reported
with its error, its memory figures and progress_when_stopped: the message rounds done
and the one in flight, the main process's CPU seconds and the link-state calls so far.

This measures cost, not accuracy: with 225 training rows per institution, a round
is one optimizer step per node (one epoch at the default batch size of 256), and
three rounds leave the model close to its random start (test_auc_last_round stays
near its round-1 value, below 0.5 at seed 0).

Targets: 1,000 institutions within 8 GiB peak RSS across the process tree; round cost
growing no faster than n log n (round_seconds ratio between consecutive sizes at most
the ratio of n log2 n).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from benchmarks.proc_stats import ProcStat, process_tree

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "var" / "bench" / "scale"
MIB = 1024 * 1024
PEAK_TARGET_MIB = 8 * 1024
MEMORY_TARGET_SIZE = 1000
TEST_ROWS = 2000
SAMPLE_SECONDS = 0.2
HEARTBEAT_SECONDS = 30.0
PROGRESS_SECONDS = 10.0


def log(message: str) -> None:
    print(f"[scale] {message}", file=sys.stderr, flush=True)


def secagg_neighbourhood(institutions: int, factor: float) -> tuple[int, int]:
    """(num_shares, reconstruction threshold): the smallest odd count >= factor * log2(n), at most n,
    and a majority of it."""
    shares = max(3, math.ceil(factor * math.log2(institutions)))
    if shares % 2 == 0:
        shares += 1
    shares = min(shares, institutions)
    return shares, shares // 2 + 1


# --- memory: the whole process tree, sampled from /proc ---------------------------------------


def _kib(path: str, field: str) -> int:
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeSampler(threading.Thread):
    """Sums VmRSS over a process tree every ``interval`` seconds and keeps the peak.

    The tree (a scan of /proc) is refreshed every ``DISCOVER_EVERY`` samples and the Pss
    (/proc/<pid>/smaps_rollup, costly for Ray's large address spaces) every ``PSS_EVERY``;
    in between the VmRSS of the processes already found is summed.
    """

    DISCOVER_EVERY = 5
    PSS_EVERY = 25

    def __init__(self, root: int, label: str, interval: float = SAMPLE_SECONDS) -> None:
        super().__init__(daemon=True)
        self.root, self.label, self.interval = root, label, interval
        self.stopping = threading.Event()
        self.tree: dict[int, ProcStat] = {}
        self.cpu: dict[int, ProcStat] = {}  # the last stat seen of every process of the run
        self.peak_rss_kib = 0
        self.peak_pss_kib = 0
        self.peak_processes = 0
        self.peak_by_name: dict[str, int] = {}  # KiB per command name at the RSS peak
        self.peak_at = 0.0
        self.samples = 0
        self.current_rss_kib = 0
        self.loads: list[float] = []  # the machine's 1-minute load average, for contention
        self.started = time.perf_counter()

    def sample(self) -> None:
        if self.samples % self.DISCOVER_EVERY == 0:
            self.tree = process_tree(self.root, session=self.root)  # started in a session of its own
            self.cpu.update(self.tree)
            self.loads.append(os.getloadavg()[0])
        rss = {pid: _kib(f"/proc/{pid}/status", "VmRSS:") for pid in self.tree}
        if self.samples % self.PSS_EVERY == 0:
            pss = sum(_kib(f"/proc/{pid}/smaps_rollup", "Pss:") for pid in self.tree)
            self.peak_pss_kib = max(self.peak_pss_kib, pss)
        total = sum(rss.values())
        self.samples += 1
        self.current_rss_kib = total
        self.peak_processes = max(self.peak_processes, sum(1 for kib in rss.values() if kib))
        if total > self.peak_rss_kib:
            self.peak_rss_kib, self.peak_at = total, time.perf_counter() - self.started
            by_name: dict[str, int] = {}
            for pid, kib in rss.items():
                by_name[self.tree[pid].name] = by_name.get(self.tree[pid].name, 0) + kib
            self.peak_by_name = by_name

    def cpu_seconds_by_name(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for stat in self.cpu.values():
            out[stat.name] = out.get(stat.name, 0.0) + stat.cpu_seconds
        return {name: round(s, 1) for name, s in sorted(out.items(), key=lambda kv: -kv[1])}

    def run(self) -> None:
        last_beat = time.perf_counter()
        while not self.stopping.is_set():
            self.sample()
            if time.perf_counter() - last_beat >= HEARTBEAT_SECONDS:
                last_beat = time.perf_counter()
                log(
                    f"{self.label}: {last_beat - self.started:.0f} s, process tree RSS "
                    f"{self.current_rss_kib / 1024:.0f} MiB (peak {self.peak_rss_kib / 1024:.0f} MiB)"
                )
            self.stopping.wait(self.interval)

    def stop(self) -> None:
        self.stopping.set()
        self.join()


# --- one size, in its own process ----------------------------------------------------------------


def lay_out(folder: Path, institutions: int, rows: int, seed: int) -> tuple[dict[str, Path], Path]:
    """``rows`` synthetic SME borrowers per institution, dealt out evenly at random; the test set."""
    import numpy as np

    from federation.datasets.partition import write_partition
    from federation.datasets.synthetic import generate_sme
    from federation.seeding import rng_for

    frame = generate_sme(institutions * rows, seed=seed)
    assignment = rng_for(seed, "scale-split").permutation(len(frame)) % institutions
    names = [f"inst_{k:04d}" for k in range(institutions)]
    folders = write_partition(frame, np.asarray(assignment), names, folder / "institutions", 0.25, seed)
    test = folder / "test.csv"
    generate_sme(TEST_ROWS, seed=seed + 10_000).to_csv(test, index=False)
    return folders, test


LINKSTATE_CALLS = ("get_message_ins", "store_message_res", "get_message_res", "store_message_ins")


def time_linkstate() -> dict[str, list[float]]:
    """Count the calls into Flower's in-memory link state (the simulated SuperLink) and their seconds:
    name -> [seconds, calls]."""
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    totals: dict[str, list[float]] = {}
    for name in LINKSTATE_CALLS:
        inner = getattr(InMemoryLinkState, name)
        total = totals.setdefault(name, [0.0, 0.0])

        def timed(*args: Any, _inner: Any = inner, _total: list[float] = total, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return _inner(*args, **kwargs)
            finally:
                _total[0] += time.perf_counter() - started
                _total[1] += 1

        setattr(InMemoryLinkState, name, timed)
    return totals


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """Train ``args.one`` institutions for ``args.rounds`` rounds; the timings."""
    import torch
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS as SECAGG_CONFIGS
    from flwr.common.secure_aggregation.secaggplus_constants import Key

    import coordinator.server_app
    from coordinator.prompt_grid import PromptGrid
    from coordinator.run_settings import RunSettings
    from coordinator.secure_aggregation import shares_and_threshold
    from coordinator.simulation.engine import run_simulated_federation
    from coordinator.simulation.nodes import SimulatedNode, with_policies

    n: int = args.one
    started = time.perf_counter()
    torch.set_num_threads(1)
    shares, threshold = secagg_neighbourhood(n, args.share_factor)
    shares_and_threshold(n, shares, threshold)  # the product's own check, before any data is made
    folder = WORK / f"n{n}"
    shutil.rmtree(folder, ignore_errors=True)
    folders, test = lay_out(folder, n, args.rows, args.seed)
    data_seconds = time.perf_counter() - started
    log(f"n={n}: {n} x {args.rows} rows written in {data_seconds:.1f} s")
    nodes = with_policies(
        [SimulatedNode(name, path, "sme") for name, path in folders.items()], folder, use_examples=False
    )
    setup_seconds = time.perf_counter() - started
    log(f"n={n}: policies and keys in {setup_seconds - data_seconds:.1f} s; starting Flower simulation")

    waits: list[tuple[str, float, float]] = []  # (stage, start, seconds) of every message round
    in_flight: list[tuple[str, float, int]] = []  # the message round being waited for: stage, start, size
    told: dict[str, int] = {}  # what SecAgg+'s setup stage told the nodes

    class TimedGrid(PromptGrid):
        stages: ClassVar[list[tuple[str, float, float]]] = waits

        def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> Any:
            messages = list(messages)
            stage = "train"
            if messages:
                config = messages[0].content.config_records.get(SECAGG_CONFIGS)
                stage = str(config[Key.STAGE]) if config is not None else messages[0].metadata.message_type
                if stage == "setup" and config is not None:
                    told.update(shares=int(config[Key.SHARE_NUMBER]), threshold=int(config[Key.THRESHOLD]))
            sent = time.perf_counter()
            in_flight[:] = [(stage, sent, len(messages))]
            replies = super().send_and_receive(messages, timeout=timeout)
            self.stages.append((stage, sent, time.perf_counter() - sent))
            in_flight.clear()
            return replies

    coordinator.server_app.PromptGrid = TimedGrid  # type: ignore[attr-defined]
    linkstate = time_linkstate()
    round_ends: list[float] = []
    aucs: list[float] = []
    at_round: list[tuple[float, dict[str, list[float]]]] = []  # main process CPU s, link state calls

    def snapshot() -> tuple[float, dict[str, list[float]]]:
        times = os.times()
        return times.user + times.system, {k: list(v) for k, v in linkstate.items()}

    def on_round(server_round: int, metrics: dict[str, float]) -> None:
        round_ends.append(time.perf_counter())
        aucs.append(metrics["auc"])
        at_round.append(snapshot())
        log(
            f"n={n}: round {server_round}/{args.rounds} at {round_ends[-1] - started:.1f} s, "
            f"test AUC {metrics['auc']:.4f}"
        )

    settings = RunSettings(
        schema="sme",
        rounds=args.rounds,
        seed=args.seed,
        min_institutions=n,
        test_path=test,
        evaluate_on_nodes=True,
        demo_keys=True,  # the simulation policies accept the published demo coordinator key
        audit_url=f"sqlite:///{(folder / 'coordinator.db').resolve()}",
        secure_aggregation=True,
        secure_aggregation_shares=shares,
        reconstruction_threshold=threshold,
    )
    simulation_started = time.perf_counter()

    def progress() -> dict[str, Any]:
        """Where the run is: for a run stopped before it ends."""
        now = time.perf_counter()
        cpu, calls = snapshot()
        return {
            "seconds_since_simulation_start": round(now - simulation_started, 1),
            "setup_seconds": round(setup_seconds, 2),
            "rounds_done": len(round_ends),
            "message_rounds_done": [
                (s, round(at - simulation_started, 1), round(t, 2)) for s, at, t in waits
            ],
            "message_round_in_flight": [
                (s, round(at - simulation_started, 1), round(now - at, 1), size) for s, at, size in in_flight
            ],
            "main_process_cpu_seconds": round(cpu, 1),
            "linkstate_totals": {
                k: {"calls": int(v[1]), "seconds": round(v[0], 2)} for k, v in calls.items()
            },
        }

    stop_writing = threading.Event()

    def keep_writing() -> None:
        while args.progress is not None and not stop_writing.wait(PROGRESS_SECONDS):
            args.progress.write_text(json.dumps(progress()), encoding="utf-8")

    writer = threading.Thread(target=keep_writing, daemon=True)
    writer.start()
    try:
        outcome = run_simulated_federation(
            nodes, settings, on_round=on_round, parallel_nodes=args.parallel_nodes
        )
    finally:
        stop_writing.set()
    finished = time.perf_counter()
    if len(round_ends) != args.rounds:
        raise RuntimeError(f"{len(round_ends)} of {args.rounds} rounds reported a test evaluation")
    # the normalization round is the first four message rounds (SecAgg+); training starts after it
    training_started = waits[3][1] + waits[3][2]
    counted = [b - a for a, b in itertools.pairwise(round_ends)]
    fits = [float(r["fit_seconds"]) for r in outcome.log.central if "fit_seconds" in r]
    in_counted = [(s, t) for s, at, t in waits if round_ends[0] <= at < round_ends[-1]]
    (cpu_first, calls_first), (cpu_last, calls_last) = at_round[0], at_round[-1]
    per_round = max(1, len(counted))
    linkstate_per_round = {
        name: {
            "calls": round((calls_last[name][1] - calls_first[name][1]) / per_round),
            "seconds": round((calls_last[name][0] - calls_first[name][0]) / per_round, 3),
        }
        for name in calls_last
    }
    stage_seconds = {
        stage: round(sum(t for s, t in in_counted if s == stage) / max(1, len(counted)), 3)
        for stage in dict.fromkeys(s for s, _ in in_counted)
    }
    trained = [inst for inst in outcome.log.institutions.values() if inst.get("train_rows")]
    return {
        "round_seconds": round(sum(counted) / len(counted), 3) if counted else None,
        "round_seconds_each": [round(c, 3) for c in counted],
        "fit_seconds": round(sum(fits[1:]) / len(fits[1:]), 3) if len(fits) > 1 else None,
        "round1_seconds": round(round_ends[0] - training_started, 3),
        "round1_fit_seconds": round(fits[0], 3) if fits else None,
        "stage_seconds": stage_seconds,
        "main_process_cpu_seconds_per_round": round((cpu_last - cpu_first) / per_round, 2),
        "linkstate_per_round": linkstate_per_round,
        "num_shares": shares,
        "reconstruction_threshold": threshold,
        "secagg_setup_told_nodes": told,
        "rows_per_institution": args.rows,
        "train_rows_per_institution_mean": round(
            sum(int(inst["train_rows"]) for inst in trained) / max(1, len(trained)), 1
        ),
        "institutions_trained": len(trained),
        "test_auc_last_round": round(aucs[-1], 4),
        "rounds": args.rounds,
        "rounds_counted": len(counted),
        "data_seconds": round(data_seconds, 2),
        "setup_seconds": round(setup_seconds, 2),
        "until_training_seconds": round(training_started - simulation_started, 2),
        "simulation_seconds": round(finished - simulation_started, 2),
        "total_seconds": round(finished - started, 2),
        "parallel_nodes": max(1, min(args.parallel_nodes, os.cpu_count() or 1)),
    }


# --- the driver: each size in a fresh subprocess ---------------------------------------------------


def measure(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run one size in a subprocess (its own session), sampling its process tree's memory."""
    result_file = WORK / f"n{n}.result.json"
    progress_file = WORK / f"n{n}.progress.json"
    result_file.unlink(missing_ok=True)
    progress_file.unlink(missing_ok=True)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--one",
        str(n),
        "--rounds",
        str(args.rounds),
        "--rows",
        str(args.rows),
        "--seed",
        str(args.seed),
        "--share-factor",
        str(args.share_factor),
        "--parallel-nodes",
        str(args.parallel_nodes),
        "--json",
        str(result_file),
        "--progress",
        str(progress_file),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log(f"n={n}: starting ({args.rounds} rounds, {args.rows} rows per institution)")
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env, cwd=ROOT, start_new_session=True)
    sampler = TreeSampler(child.pid, f"n={n}")
    sampler.start()
    error = None
    try:
        child.wait(timeout=args.timeout_minutes * 60)
    except subprocess.TimeoutExpired:
        error = f"stopped after {args.timeout_minutes} minutes"
    except KeyboardInterrupt:
        error = "interrupted"
    finally:
        sampler.stop()
        leftover = [p for p in process_tree(child.pid, session=child.pid) if p != os.getpid()]
        if child.poll() is None or leftover:
            with contextlib.suppress(ProcessLookupError):  # the child's own session: Ray's processes with it
                os.killpg(child.pid, signal.SIGTERM)
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
    wall = time.perf_counter() - started
    if error is None and child.returncode != 0:
        error = f"exited with status {child.returncode}"
    result: dict[str, Any] = json.loads(result_file.read_text()) if error is None else {"error": error}
    if error is not None and progress_file.is_file():
        result["progress_when_stopped"] = json.loads(progress_file.read_text())
    shares, threshold = secagg_neighbourhood(n, args.share_factor)
    for key, value in (
        ("num_shares", shares),
        ("reconstruction_threshold", threshold),
        ("rows_per_institution", args.rows),
        ("rounds", args.rounds),
    ):
        result.setdefault(key, value)
    result.update(
        {
            "peak_rss_mib": round(sampler.peak_rss_kib / 1024, 1),
            "peak_pss_mib": round(sampler.peak_pss_kib / 1024, 1),
            "peak_processes": sampler.peak_processes,
            "peak_rss_mib_by_process": {
                name: round(kib / 1024, 1)
                for name, kib in sorted(sampler.peak_by_name.items(), key=lambda kv: -kv[1])
            },
            "peak_at_seconds": round(sampler.peak_at, 1),
            "cpu_seconds_by_process": sampler.cpu_seconds_by_name(),
            "load_average_mean": round(sum(sampler.loads) / max(1, len(sampler.loads)), 2),
            "memory_samples": sampler.samples,
            "wall_seconds": round(wall, 1),
        }
    )
    log(
        f"n={n}: {'done' if error is None else error} in {wall:.0f} s, "
        f"round {result.get('round_seconds')} s, peak RSS {result['peak_rss_mib']:.0f} MiB"
    )
    return result


def n_log_n(n: int) -> float:
    return n * math.log2(n)


def targets(by_size: dict[str, dict[str, Any]]) -> dict[str, bool]:
    out = {}
    memory = by_size.get(str(MEMORY_TARGET_SIZE), {})
    peak: float | None = memory.get("peak_rss_mib")
    label = (
        f"{MEMORY_TARGET_SIZE:,} institutions within {PEAK_TARGET_MIB // 1024} GiB peak RSS (process tree)"
    )
    if peak is None:
        label += ": not measured"
    elif "error" in memory:
        label += f": the run did not finish ({memory['error']}; peak so far {peak:.0f} MiB)"
    out[label] = peak is not None and "error" not in memory and peak <= PEAK_TARGET_MIB
    sizes = sorted(int(n) for n in by_size)
    for a, b in itertools.pairwise(sizes):
        ra, rb = by_size[str(a)].get("round_seconds"), by_size[str(b)].get("round_seconds")
        bound = n_log_n(b) / n_log_n(a)
        if ra and rb:
            out[f"round_seconds {b}/{a} = {rb / ra:.2f} <= n log n ratio {bound:.2f}"] = rb / ra <= bound
        else:
            out[f"round_seconds {b}/{a} <= n log n ratio {bound:.2f}: not measured"] = False
    return out


def machine() -> dict[str, Any]:
    import flwr

    return {
        "cores": os.cpu_count(),
        "memory_gib": round(_kib("/proc/meminfo", "MemTotal:") / MIB, 1),
        "python": platform.python_version(),
        "flwr": flwr.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--sizes", default="10,100,1000", help="institutions per federation, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="training rounds; 2..R are counted")
    parser.add_argument("--rows", type=int, default=300, help="SME borrowers per institution")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--share-factor", type=float, default=2.0, help="num_shares: odd, at least this x log2(n)"
    )
    parser.add_argument("--parallel-nodes", type=int, default=2, help="Ray node workers (at most the cores)")
    parser.add_argument("--timeout-minutes", type=float, default=60.0, help="per size; then it is stopped")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the subprocess of one size
    parser.add_argument("--progress", type=Path, help=argparse.SUPPRESS)  # where it says how far it got
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2: round 1 is not counted")
    if args.one is not None:
        figures = run_one(args)
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")
        return 0

    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if any(n < 2 for n in sizes):
        parser.error("--sizes: a federation needs at least 2 institutions")
    WORK.mkdir(parents=True, exist_ok=True)
    by_size = {str(n): measure(n, args) for n in sizes}
    result: dict[str, Any] = {
        "by_institutions": by_size,
        "counted": (
            "round_seconds: mean wall time of training rounds 2..R (coordinator test evaluation to the "
            "next: SecAgg+ fit with its 4 message rounds, coordinator test evaluation, nodes' holdout "
            "evaluation); not counted: data, keys, Ray start, normalization round, round 1, fairness "
            "and reference rounds. peak_rss_mib: max over 0.2 s samples of the summed VmRSS of the "
            "size's subprocess, its descendants and its session (Ray GCS, raylet, workers)."
        ),
        "secagg": f"num_shares: smallest odd >= {args.share_factor:g} x log2(n), at most n; threshold: a majority",
        "dataset": f"synthetic SME, {args.rows} rows per institution (25% holdout), {TEST_ROWS}-row test set",
        "machine": machine(),
    }
    checks = targets(by_size)
    result["targets"] = {name: met for name, met in checks.items()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps(result, indent=2))
    print(
        f"\n{'institutions':>12s} {'shares':>6s} {'round s':>8s} {'fit s':>7s} {'peak RSS MiB':>12s} {'PSS MiB':>8s}"
    )
    for n, r in by_size.items():
        print(
            f"{n:>12s} {r.get('num_shares', '-')!s:>6s} {r.get('round_seconds', '-')!s:>8s} "
            f"{r.get('fit_seconds', '-')!s:>7s} {r['peak_rss_mib']:12.0f} {r['peak_pss_mib']:8.0f}"
            + (f"  {r['error']}" if "error" in r else "")
        )
    for name, met in checks.items():
        print(f"{'met ' if met else 'MISSED'}  {name}")
    print(f"wrote {args.json}")
    return 0 if all("error" not in r for r in by_size.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
