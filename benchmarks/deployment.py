"""Deployed against simulated: seconds per training round of the same model, data and settings.

    python benchmarks/deployment.py --json var/bench/deployment.json [--rounds 4] [--stock-flower]

The deployed run's process logs are kept beside the JSON (``deployment-logs/``).

Deployed: ``coordinator.local_deployment`` on loopback: ``fedcredit coordinator start`` (SuperLink
over TLS with node authentication, state database, no runtime installs) and three ``fedcredit node
start`` (SuperNodes with their own keys, data folders and policies; with ``--stock-flower`` each
runs Flower's SuperNode as shipped), then one ``fedcredit run start``. Simulated: the same three institutions (same data, policies, node keys) and the run
settings the deployed coordinator derives from the same run config
(``coordinator.deployment.settings_from_run_config``), on Flower's simulation engine
(``coordinator.simulation.engine.run_simulated_federation``, two node workers).

round_seconds: the mean over training rounds 2..R of the coordinator's ``round_seconds`` (run
report: from the round's fit configuration to its last aggregation step); round 1 carries
first-use costs and is reported apart. message_rounds: the coordinator-to-node message exchanges
in one training round (SecAgg+: 4 for the fit; plain: 1; plus 1 when nodes evaluate on their
holdout). poll_seconds: how long a SuperNode that found no message waits before asking again
(3 s, fixed in Flower 1.42's ``flwr.supernode.start_client_internal``; the nodes here run
``clients.supernode``, which keeps it for an idle node and asks sooner right after a reply); the
coordinator polls for replies every ``coordinator_settings().poll_seconds`` (``coordinator.prompt_grid``).

Target: round_seconds_deployed <= message_rounds * poll_seconds + 2 * round_seconds_simulated.

breakdown: fit_seconds of both engines (the fit alone); node_train_task_seconds, the mean time a
node's training task took from its message to its reply (the nodes' own log lines,
``clients.message_log``: policy check, audit entries, training, SecAgg+ masking);
seconds_per_message_round, a deployed round over its message rounds: each is the hand-over
from the coordinator to every node and back (HTTP and TLS, object transfers, the SuperNode's
wait before asking for the next message, which ``clients.supernode`` shortens after a reply);
clientapp_start_seconds, the median wall time of a fresh interpreter importing the
ClientApp, which a stock SuperNode pays per message and ``clients.warm_executor`` does not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coordinator.deployment import settings_from_run_config  # noqa: E402
from coordinator.local_deployment import LocalDeployment  # noqa: E402
from coordinator.settings import coordinator_settings  # noqa: E402
from coordinator.simulation.engine import run_simulated_federation  # noqa: E402

POLL_SECONDS = 3.0  # flwr.supernode.start_client_internal: time.sleep(3) when no message is waiting


def later_rounds(central: list[dict[str, Any]], key: str) -> tuple[float | None, float | None]:
    """(mean of ``key`` over rounds 2.., round 1's value) from a run report's rounds."""
    values = [float(r[key]) for r in central if key in r]
    if not values:
        return None, None
    rest = values[1:]
    return (round(statistics.fmean(rest), 3) if rest else None), round(values[0], 3)


def clientapp_start_seconds(repeats: int = 3) -> float:
    """Median wall time of a fresh interpreter importing the ClientApp, as a SuperNode's subprocess does."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import clients.client_app"], cwd=ROOT, check=True)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 3)


TASK_LINE = re.compile(r"fedcredit node .*: flwr run \d+, train round (\d+): answered \((\d+\.\d) s\)")


def node_task_seconds(local: LocalDeployment) -> float | None:
    """Mean seconds a node's training task took from its message to its reply, rounds 2.. (node logs)."""
    seconds = [
        float(match.group(2))
        for log in local.root.glob("bank*/var/logs/supernode-*.log")
        for match in TASK_LINE.finditer(log.read_text(errors="replace"))
        if int(match.group(1)) > 1
    ]
    return round(statistics.fmean(seconds), 3) if seconds else None


def keep_logs(root: Path, into: Path) -> None:
    """Every process log of the deployed run (coordinator and nodes), for a look at where time went."""
    shutil.rmtree(into, ignore_errors=True)
    for log in root.glob("**/var/logs/*.log"):
        target = into / log.relative_to(root).parts[0] / log.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(log, target)


def deployed(local: LocalDeployment, evaluate_on_nodes: bool) -> tuple[dict[str, Any], float]:
    """One deployed run to its end; (its report, wall seconds of the whole run)."""
    local.start_coordinator()
    for index in range(local.institutions):
        local.start_node(index)
    local.wait_online(local.institutions)
    started = time.perf_counter()
    done = subprocess.run(
        local.run_command("start", evaluate_on_nodes=evaluate_on_nodes),
        env=local.coordinator_env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"deployed run failed: {(done.stdout + done.stderr).strip().splitlines()[-1:]}")
    (report,) = local.runs.glob("*/report.json")
    return json.loads(report.read_text(encoding="utf-8")), wall


def simulated(local: LocalDeployment, evaluate_on_nodes: bool, work: Path) -> tuple[dict[str, Any], float]:
    """The same run on the simulation engine; (its rounds as the report keeps them, wall seconds)."""
    os.environ["FEDCREDIT_VAR_DIR"] = str(work / "simulated")
    settings = settings_from_run_config(
        {
            "federation-policy": str(local.policy),
            "federation-trust": str(local.keys / "consortium.pub"),
            "coordinator-key": str(local.keys / "coordinator.key"),
            "test-path": str(local.test_path),
            "evaluate-on-nodes": evaluate_on_nodes,
        }
    )
    started = time.perf_counter()
    outcome = run_simulated_federation(local.nodes, settings)
    return {"rounds": outcome.log.central}, time.perf_counter() - started


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="deployment-", dir=args.work) as folder:
        work = Path(folder)
        local = LocalDeployment(
            work / "deployed",
            institutions=3,
            rounds=args.rounds,
            min_institutions=3,
            secure_aggregation=args.secure_aggregation,
            stock_flower=args.stock_flower,
        )
        try:
            report, deployed_wall = deployed(local, args.evaluate_on_nodes)
        finally:
            local.stop()
            keep_logs(local.root, args.json.with_name(args.json.stem + "-logs"))
        task_seconds = node_task_seconds(local)
        simulation, simulated_wall = simulated(local, args.evaluate_on_nodes, work)
    round_deployed, first_deployed = later_rounds(report["rounds"], "round_seconds")
    round_simulated, first_simulated = later_rounds(simulation["rounds"], "round_seconds")
    fit_deployed, _ = later_rounds(report["rounds"], "fit_seconds")
    fit_simulated, _ = later_rounds(simulation["rounds"], "fit_seconds")
    assert round_deployed is not None and round_simulated is not None
    message_rounds = (4 if args.secure_aggregation else 1) + (1 if args.evaluate_on_nodes else 0)
    start = clientapp_start_seconds()
    bound = message_rounds * POLL_SECONDS + 2 * round_simulated
    return {
        "round_seconds_deployed": round_deployed,
        "round_seconds_simulated": round_simulated,
        "message_rounds": message_rounds,
        "poll_seconds": POLL_SECONDS,
        "institutions": 3,
        "target_seconds": round(bound, 3),
        "target_met": round_deployed <= bound,
        "breakdown": {
            "fit_seconds_deployed": fit_deployed,
            "fit_seconds_simulated": fit_simulated,
            "round1_seconds_deployed": first_deployed,
            "round1_seconds_simulated": first_simulated,
            "node_train_task_seconds": task_seconds,
            "seconds_per_message_round": round(round_deployed / message_rounds, 3),
            "clientapp_start_seconds": start,
            "coordinator_poll_seconds": coordinator_settings().poll_seconds,
            "run_wall_seconds_deployed": round(deployed_wall, 1),
            "run_wall_seconds_simulated": round(simulated_wall, 1),
        },
        "settings": {
            "rounds": args.rounds,
            "secure_aggregation": args.secure_aggregation,
            "evaluate_on_nodes": args.evaluate_on_nodes,
            "nodes": "flower-supernode as shipped" if args.stock_flower else "fedcredit node start",
            "rows": 3000,
            "schema": "sme",
        },
        "cpu_count": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, required=True, help="where the figures go")
    parser.add_argument("--rounds", type=int, default=4, help="training rounds per run (>= 2)")
    parser.add_argument("--secure-aggregation", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--evaluate-on-nodes", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument(
        "--stock-flower",
        action="store_true",
        help="nodes run Flower's SuperNode as shipped (a new interpreter per message), for comparison",
    )
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "bench", help="scratch folder")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be >= 2 (round 1 is reported apart)")
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    figures = measure(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
