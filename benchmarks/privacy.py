"""Privacy: accuracy at each epsilon, and a membership-inference attack, with and without DP.

    python benchmarks/privacy.py --json var/privacy.json

uci_homo: the three FATE banks train on Flower's simulation engine with
record-level DP-SGD at each bank (epsilon per bank for the whole run, delta
1e-5); "inf" is the non-private run with the quality benchmark's settings.
Every model is tested on default_credit_homo_test.csv.

membership_inference: loss-threshold attack on the final global model. For
each bank: members are its training rows, non-members as many rows of the
test file (same population, never trained on); the attack scores a row by its
negative loss; its AUC is 0.5 when the model reveals nothing about membership.

secagg: the UCI training rows re-split into 10 banks; the same training (one
local epoch per round, the quality benchmark's settings) with and without
SecAgg+; seconds per fit round (mean over rounds 2..R, the first round
includes Ray's warm-up), and the largest difference between the two global
models' normalization statistics (the quantization error of the secure sum).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.server_app import RunSettings
from coordinator.simulation import SimulatedNode, run_simulated_federation, with_policies
from federation.loading import EncodedData, load_dataset
from federation.metrics import auc, score_metrics
from federation.model import FourDimensionModel, ModelConfig
from federation.partition import TRAIN_FILE
from federation.scenarios import fate_data_dir, uci_federation
from federation.schema import resolve_schema
from federation.seeding import rng_for
from federation.training import TrainConfig, predict_proba

WORK = Path("var/bench/privacy")


def _losses(model: FourDimensionModel, data: EncodedData) -> np.ndarray:
    assert data.label is not None
    p = np.clip(predict_proba(model, data), 1e-7, 1 - 1e-7)
    return -(data.label * np.log(p) + (1 - data.label) * np.log(1 - p))


def membership_attack(
    model: FourDimensionModel, members: EncodedData, population: EncodedData, seed: int
) -> float:
    """AUC of telling members from non-members by low loss (0.5 = no leak)."""
    pick = rng_for(seed, "mia-nonmembers").choice(
        len(population), size=min(len(members), len(population)), replace=False
    )
    scores = -np.concatenate([_losses(model, members), _losses(model, population.subset(pick))])
    is_member = np.concatenate([np.ones(len(members)), np.zeros(len(pick))])
    return auc(is_member, scores)


def run(epsilon: float | None, args: argparse.Namespace, data_dir: Path | None) -> dict[str, Any]:
    label = "inf" if epsilon is None else f"{epsilon:g}"
    print(f"uci_homo, epsilon {label}", flush=True)
    federation = uci_federation(
        WORK / f"eps-{label}", 3, data_dir=data_dir, seed=args.seed, holdout_fraction=0.0
    )
    nodes = with_policies(
        [SimulatedNode(n, p, "uci_homo") for n, p in federation.institutions.items()],
        WORK / f"eps-{label}",
        use_examples=False,
    )
    settings = RunSettings(
        schema="uci_homo",
        rounds=args.plain_rounds,
        seed=args.seed,
        min_institutions=3,
        test_path=federation.test_path,
        evaluate_on_nodes=False,
        run_id=f"privacy-{label}",
    )
    if epsilon is not None:
        settings = replace(
            settings,
            rounds=args.dp_rounds,
            epsilon=epsilon,
            delta=1e-5,
            max_grad_norm=args.max_grad_norm,
            train=TrainConfig(batch_size=args.dp_batch, learning_rate=args.dp_lr),
            model=ModelConfig(hidden=args.dp_hidden),
        )
    started = time.perf_counter()
    outcome = run_simulated_federation(
        nodes, settings, on_round=lambda r, m: print(f"  round {r:2d}  test AUC {m['auc']:.4f}", flush=True)
    )
    assert outcome.model is not None and outcome.test_labels is not None and outcome.test_scores is not None
    schema = resolve_schema("uci_homo")
    test = load_dataset(federation.test_path, schema)
    attacks = {
        name: membership_attack(outcome.model, load_dataset(path / TRAIN_FILE, schema), test, args.seed)
        for name, path in federation.institutions.items()
    }
    spent = {
        name: max((r.get("epsilon_spent", 0.0) for r in inst["rounds"]), default=0.0)
        for name, inst in outcome.log.institutions.items()
    }
    return {
        "auc": score_metrics(outcome.test_labels, outcome.test_scores)["auc"],
        "epsilon_spent": spent,
        "attack_auc": attacks,
        "rows": {
            name: len(load_dataset(p / TRAIN_FILE, schema)) for name, p in federation.institutions.items()
        },
        "seconds": round(time.perf_counter() - started, 1),
        "rounds": settings.rounds,
    }


def secagg_timing(institutions: int, rounds: int, data_dir: Path | None, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {"institutions": institutions, "rounds": rounds}
    models = {}
    for secure in (False, True):
        label = "secagg" if secure else "plain"
        print(f"secagg timing: {institutions} banks, {label}", flush=True)
        root = WORK / f"secagg-{label}"
        federation = uci_federation(root, institutions, data_dir=data_dir, seed=seed, holdout_fraction=0.0)
        nodes = with_policies(
            [SimulatedNode(n, p, "uci_homo") for n, p in federation.institutions.items()],
            root,
            use_examples=False,
        )
        settings = RunSettings(
            schema="uci_homo",
            rounds=rounds,
            seed=seed,
            min_institutions=institutions,
            test_path=federation.test_path,
            evaluate_on_nodes=False,
            run_id=f"secagg-{label}",
            secure_aggregation=secure,
        )
        outcome = run_simulated_federation(nodes, settings)
        assert (
            outcome.model is not None and outcome.test_labels is not None and outcome.test_scores is not None
        )
        out[f"round_seconds_{label}"] = float(np.mean([r["fit_seconds"] for r in outcome.log.central[1:]]))
        out[f"auc_{label}"] = score_metrics(outcome.test_labels, outcome.test_scores)["auc"]
        models[label] = outcome.model
    out["normalization_max_abs_diff"] = float(
        max(
            (models["secagg"].mean - models["plain"].mean).abs().max(),
            (models["secagg"].std - models["plain"].std).abs().max(),
        )
    )
    out["overhead"] = out["round_seconds_secagg"] / out["round_seconds_plain"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    parser.add_argument("--dp-rounds", type=int, default=40)
    parser.add_argument("--dp-batch", type=int, default=1024)
    parser.add_argument("--dp-lr", type=float, default=2e-2)
    parser.add_argument("--dp-hidden", type=int, default=16)
    parser.add_argument("--max-grad-norm", type=float, default=0.5)
    parser.add_argument("--plain-rounds", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--secagg-institutions", type=int, default=10)
    parser.add_argument("--secagg-rounds", type=int, default=4)
    args = parser.parse_args(argv)
    data_dir = fate_data_dir(args.data_dir)
    shutil.rmtree(WORK, ignore_errors=True)
    runs = {"inf": run(None, args, data_dir)} | {f"{e:g}": run(e, args, data_dir) for e in args.epsilons}
    smallest = min(runs["inf"]["rows"], key=runs["inf"]["rows"].get)
    result = {
        "uci_homo": {"auc_by_epsilon": {k: v["auc"] for k, v in runs.items()}, "runs": runs},
        "membership_inference": {
            "attack_auc_no_dp": float(np.mean(list(runs["inf"]["attack_auc"].values()))),
            "attack_auc_eps3": float(np.mean(list(runs["3"]["attack_auc"].values())))
            if "3" in runs
            else None,
            "smallest_institution": smallest,
            "smallest_attack_auc_no_dp": runs["inf"]["attack_auc"][smallest],
            "smallest_attack_auc_eps3": runs["3"]["attack_auc"][smallest] if "3" in runs else None,
        },
        "secagg": secagg_timing(args.secagg_institutions, args.secagg_rounds, data_dir, args.seed),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"\n{'epsilon':>8s} {'test AUC':>9s} {'spent (max over banks)':>24s} {'attack AUC (mean)':>18s}")
    for k, v in runs.items():
        spent = max(v["epsilon_spent"].values(), default=0.0)
        print(
            f"{k:>8s} {v['auc']:9.4f} {('-' if k == 'inf' else f'{spent:.3f}'):>24s} {np.mean(list(v['attack_auc'].values())):18.4f}"
        )
    mi = result["membership_inference"]
    if mi["smallest_attack_auc_eps3"] is not None:
        print(
            f"smallest bank {smallest}: attack AUC {mi['smallest_attack_auc_no_dp']:.4f} without DP, "
            f"{mi['smallest_attack_auc_eps3']:.4f} at epsilon 3"
        )
    sa = result["secagg"]
    print(
        f"SecAgg+ with {sa['institutions']} banks: {sa['round_seconds_secagg']:.2f} s per round vs "
        f"{sa['round_seconds_plain']:.2f} s plain ({sa['overhead']:.2f}x); AUC {sa['auc_secagg']:.4f} vs "
        f"{sa['auc_plain']:.4f}; normalization differs by at most {sa['normalization_max_abs_diff']:.2e}"
    )
    print(f"wrote {args.json}")
    return 0 if not math.isnan(result["uci_homo"]["auc_by_epsilon"]["inf"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
