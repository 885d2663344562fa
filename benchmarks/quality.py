"""Model quality: federated vs centralized vs local-only vs gradient-boosted trees.

    python benchmarks/quality.py --json var/quality.json

uci_homo:   the FATE homo split of the UCI Taiwan data; banks guest, host_1, host_2
            train on all their rows; every model is tested on default_credit_homo_test.csv.
sme_skewed: synthetic SME borrowers split into 9 institutions with realistic size,
            region and industry skew. Test set: an independent draw. Each institution's
            holdout: rows of an independent draw that the same split assigns to it
            (its own customer mix, never trained on). Small = under 5 % of the rows.
            A small institution's local-only AUC is the better of two protocols (same
            training budget as the federation; early stopping on its own rows), picked
            on the holdout itself, so the federated gain is measured against an
            optimistic local baseline.

Needs $FEDCREDIT_DATA_DIR (set by the Makefile) or --data-dir for the UCI files.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.research.baselines import gbdt_features, gbdt_pooled, pool, train_for_epochs, train_local_only
from coordinator.run_settings import RunSettings
from coordinator.simulation.engine import run_simulated_federation
from coordinator.simulation.nodes import SimulatedNode, with_policies
from federation.datasets.partition import (
    HOLDOUT_FILE,
    SMALL_SHARE,
    TRAIN_FILE,
    assign_institutions,
    institution_profiles,
)
from federation.datasets.scenarios import fate_data_dir, uci_federation
from federation.datasets.synthetic import LABEL_COLUMN, TRUE_PD_COLUMN, generate_sme
from federation.loading import EncodedData, load_dataset
from federation.metrics import score_metrics
from federation.model import FourDimensionModel
from federation.schema import resolve_schema
from federation.training import predict_proba

WORK = Path("var/bench/quality")
HOLDOUT_MULTIPLE = 10


def _auc(model: FourDimensionModel, data: EncodedData) -> float:
    assert data.label is not None
    return score_metrics(data.label, predict_proba(model, data))["auc"]


def _federate(
    nodes: list[SimulatedNode], settings: RunSettings
) -> tuple[FourDimensionModel, dict[str, float], float]:
    started = time.perf_counter()
    # simulation policies for every node (the demo examples would refuse on purpose)
    # a folder per run: each node's audit log and ledger start empty, as on a node that joins once
    nodes = with_policies(nodes, WORK / "policies" / settings.run_id, use_examples=False)
    outcome = run_simulated_federation(
        nodes, settings, on_round=lambda r, m: print(f"  round {r:2d}  test AUC {m['auc']:.4f}", flush=True)
    )
    assert outcome.model is not None and outcome.test_labels is not None and outcome.test_scores is not None
    return (
        outcome.model,
        score_metrics(outcome.test_labels, outcome.test_scores),
        time.perf_counter() - started,
    )


def uci_homo(data_dir: Path | None, rounds: int, seed: int) -> dict[str, Any]:
    print("uci_homo: 3 banks, Flower simulation", flush=True)
    schema = resolve_schema("uci_homo")
    federation = uci_federation(WORK / "uci", 3, data_dir=data_dir, seed=seed, holdout_fraction=0.0)
    nodes = [SimulatedNode(n, p, "uci_homo") for n, p in federation.institutions.items()]
    settings = RunSettings(
        schema="uci_homo",
        rounds=rounds,
        seed=seed,
        min_institutions=3,
        test_path=federation.test_path,
        evaluate_on_nodes=False,
        demo_keys=True,  # the simulation's policies accept the published demo coordinator key
    )
    _, fed_metrics, seconds = _federate(nodes, settings)
    banks = {
        n.removeprefix("bank_"): load_dataset(p / TRAIN_FILE, schema)
        for n, p in federation.institutions.items()
    }
    test = load_dataset(federation.test_path, schema)
    pooled = pool(list(banks.values()))
    print("  centralized, local-only and GBDT baselines", flush=True)
    central = train_for_epochs(pooled, epochs=rounds * settings.train.epochs, train=settings.train, seed=seed)
    gbdt = gbdt_pooled(pooled, seed=seed)
    assert test.label is not None
    central_metrics = score_metrics(test.label, predict_proba(central, test))
    return {
        "federated_auc": fed_metrics["auc"],
        "centralized_auc": central_metrics["auc"],
        "gbdt_pooled_auc": score_metrics(test.label, gbdt.predict_proba(gbdt_features(test))[:, 1])["auc"],
        "local_only_auc": {
            name: _auc(train_local_only(data, seed=seed), test) for name, data in banks.items()
        },
        "federated_metrics": fed_metrics,
        "centralized_metrics": central_metrics,
        "rounds": rounds,
        "federated_seconds": round(seconds, 1),
    }


def sme_replicate(institutions: int, rows: int, rounds: int, seed: int) -> dict[str, Any]:
    """One draw of the market, federated run and baselines."""
    print(f"sme_skewed (seed {seed}): {institutions} institutions, {rows} borrowers", flush=True)
    schema = resolve_schema("sme")
    profiles = institution_profiles(institutions)
    train_pop = generate_sme(rows, seed=100 * seed)
    # large enough that even a 1 % institution is measured on ~50 defaults
    holdout_pop = generate_sme(rows * HOLDOUT_MULTIPLE, seed=100 * seed + 1)
    test_frame = generate_sme(20_000, seed=100 * seed + 2)
    train_of = assign_institutions(train_pop, institutions, seed=100 * seed)
    holdout_of = assign_institutions(holdout_pop, institutions, seed=100 * seed + 1)
    root = WORK / f"sme-{seed}"
    nodes = []
    for k, profile in enumerate(profiles):
        folder = root / "institutions" / profile.name
        folder.mkdir(parents=True, exist_ok=True)
        train_pop[train_of == k].drop(columns=[TRUE_PD_COLUMN]).to_csv(folder / TRAIN_FILE, index=False)
        holdout_pop[holdout_of == k].drop(columns=[TRUE_PD_COLUMN]).to_csv(folder / HOLDOUT_FILE, index=False)
        nodes.append(SimulatedNode(profile.name, folder, "sme"))
    test_path = root / "test.csv"
    test_frame.to_csv(test_path, index=False)
    settings = RunSettings(
        schema="sme",
        rounds=rounds,
        seed=seed,
        min_institutions=institutions,
        test_path=test_path,
        demo_keys=True,
    )
    model, fed_metrics, seconds = _federate(nodes, settings)

    train_sets = [load_dataset(n.data_path / TRAIN_FILE, schema) for n in nodes]
    test = load_dataset(test_path, schema)
    print("  centralized and local-only baselines", flush=True)
    central = train_for_epochs(
        pool(train_sets), epochs=rounds * settings.train.epochs, train=settings.train, seed=seed
    )
    small: dict[str, dict[str, float]] = {}
    for node, data in zip(nodes, train_sets, strict=True):
        share = len(data) / rows
        if share > SMALL_SHARE:
            continue
        holdout = load_dataset(node.data_path / HOLDOUT_FILE, schema)
        epochs = rounds * settings.train.epochs
        budget = train_for_epochs(data, epochs=epochs, train=settings.train, seed=seed)
        early = train_local_only(data, settings.train, seed=seed)
        small[node.institution] = {
            "share_of_rows": round(share, 4),
            "train_rows": len(data),
            "train_defaults": int(np.sum(data.label)),
            "holdout_rows": len(holdout),
            "local_same_budget_auc": _auc(budget, holdout),
            "local_early_stopped_auc": _auc(early, holdout),
            # the better local protocol, picked on the holdout itself: optimistic for local
            "local_auc": max(_auc(budget, holdout), _auc(early, holdout)),
            "federated_auc": _auc(model, holdout),
        }
    oracle = score_metrics(test_frame[LABEL_COLUMN].to_numpy(), test_frame[TRUE_PD_COLUMN].to_numpy())["auc"]
    return {
        "oracle_auc": oracle,
        "federated_auc": fed_metrics["auc"],
        "federated_over_oracle": fed_metrics["auc"] / oracle,
        "centralized_auc": _auc(central, test),
        "small_institutions_local_auc_mean": float(np.mean([s["local_auc"] for s in small.values()])),
        "small_institutions_federated_auc_mean": float(np.mean([s["federated_auc"] for s in small.values()])),
        "small_institutions": small,
        "seed": seed,
        "federated_metrics": fed_metrics,
        "federated_seconds": round(seconds, 1),
    }


HEADLINE = (
    "oracle_auc",
    "federated_auc",
    "federated_over_oracle",
    "centralized_auc",
    "small_institutions_local_auc_mean",
    "small_institutions_federated_auc_mean",
)


def sme_skewed(institutions: int, rows: int, rounds: int, seeds: list[int]) -> dict[str, Any]:
    """Replicates over independent market draws; headline figures are their means."""
    replicates = [sme_replicate(institutions, rows, rounds, seed) for seed in seeds]
    result: dict[str, Any] = {key: float(np.mean([r[key] for r in replicates])) for key in HEADLINE}
    fed, local = "small_institutions_federated_auc_mean", "small_institutions_local_auc_mean"
    gains = [r[fed] - r[local] for r in replicates]
    result |= {
        "small_institutions_gain_by_seed": gains,
        "institutions": institutions,
        "rows": rows,
        "rounds": rounds,
        "seeds": seeds,
        "replicates": replicates,
    }
    return result


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) and not math.isnan(value) else str(value)


def print_table(result: dict[str, Any]) -> None:
    u, s = result["uci_homo"], result["sme_skewed"]
    print("\nuci_homo (test: default_credit_homo_test.csv)")
    print(f"  {'federated (Flower, 3 banks)':38s} {_fmt(u['federated_auc'])}")
    print(f"  {'centralized, same model':38s} {_fmt(u['centralized_auc'])}")
    print(f"  {'gradient-boosted trees, pooled':38s} {_fmt(u['gbdt_pooled_auc'])}")
    for name, auc in u["local_only_auc"].items():
        print(f"  {'local only: ' + name:38s} {_fmt(auc)}")
    print(f"\nsme_skewed ({s['institutions']} institutions, {s['rows']} borrowers, seeds {s['seeds']})")
    print(f"  {'oracle (true PD)':38s} {_fmt(s['oracle_auc'])}")
    print(f"  {'federated':38s} {_fmt(s['federated_auc'])}  ({s['federated_over_oracle']:.3f} x oracle)")
    print(f"  {'centralized, same model':38s} {_fmt(s['centralized_auc'])}")
    header = f"{'seed':>4s} {'small institution':24s} {'share':>6s} {'defaults':>8s}"
    print(f"  {header} {'local':>7s} {'federated':>9s}")
    for rep in s["replicates"]:
        for name, row in rep["small_institutions"].items():
            print(
                f"  {rep['seed']:4d} {name:24s} {row['share_of_rows']:6.3f} {row['train_defaults']:8d} "
                f"{row['local_auc']:7.4f} {row['federated_auc']:9.4f}"
            )
    gain = s["small_institutions_federated_auc_mean"] - s["small_institutions_local_auc_mean"]
    print(
        f"  {'mean over small institutions and seeds':45s} {s['small_institutions_local_auc_mean']:14.4f} "
        f"{s['small_institutions_federated_auc_mean']:9.4f}  (gain {gain:+.4f}; by seed "
        + ", ".join(f"{g:+.4f}" for g in s["small_institutions_gain_by_seed"])
        + ")"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, required=True, help="where to write the results")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="FATE data folder (default $FEDCREDIT_DATA_DIR)"
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--sme-rows", type=int, default=30_000)
    parser.add_argument("--sme-seeds", type=int, nargs="+", default=[1, 2, 3], help="one draw per seed")
    parser.add_argument("--sme-institutions", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        fate_data_dir(args.data_dir)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    shutil.rmtree(WORK, ignore_errors=True)
    result = {
        "uci_homo": uci_homo(args.data_dir, args.rounds, args.seed),
        "sme_skewed": sme_skewed(args.sme_institutions, args.sme_rows, args.rounds, args.sme_seeds),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print_table(result)
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
