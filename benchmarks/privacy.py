"""Privacy: accuracy at each epsilon, and a membership-inference attack, with and without DP.

    python benchmarks/privacy.py --json var/privacy.json

uci_homo: the three FATE banks train on Flower's simulation engine with
record-level DP-SGD at each bank (epsilon per bank for the whole run, delta
1e-5); "inf" is the non-private run with the quality benchmark's settings.
Every model is tested on default_credit_homo_test.csv.

membership_inference: the UCI training rows re-split into banks of different
sizes (--mia-sizes), trained without DP and at epsilon 3 (the same settings as
above). Two attacks on the final global model (benchmarks/research/membership.py):
loss threshold, and reference models (offline LiRA: the attacker trains
--mia-references models on half of the rows it holds and flags rows the
global model is unusually confident about). The attacker holds one half of
the test file; the other half are the non-members. For each bank the members
are as many of its training rows. attack_auc_no_dp / attack_auc_eps3 are the
worst case: the highest AUC over banks and attacks (0.5 = reveals nothing).

secagg: the UCI training rows re-split into 10 banks; the same training (one
local epoch per round, the quality benchmark's settings) with and without
SecAgg+; seconds per fit round (median, and mean, over rounds 2..R, the first round
includes Ray's warm-up), the coordinator's wait for each message round (SecAgg+
has four per training round: setup, share keys, collect masked vectors,
unmask), the same with --secagg-neighbourhood shares per institution instead
of all of them, and the largest difference between the two global models'
normalization statistics (the quantization error of the secure sum).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS as SECAGG_CONFIGS
from flwr.common.secure_aggregation.secaggplus_constants import Key

import coordinator.server_app
from benchmarks.research.membership import loss_attack_auc, reference_attack_auc, train_reference_models
from coordinator.prompt_grid import PromptGrid
from coordinator.run_settings import RunSettings
from coordinator.server_app import RunOutcome
from coordinator.simulation.engine import run_simulated_federation
from coordinator.simulation.nodes import SimulatedNode, with_policies
from federation.datasets.partition import TRAIN_FILE
from federation.datasets.scenarios import Federation, fate_data_dir, uci_federation
from federation.hyperparameters import ModelConfig, TrainConfig
from federation.loading import load_dataset
from federation.metrics import score_metrics
from federation.model import FourDimensionModel
from federation.schema import resolve_schema
from federation.seeding import rng_for

WORK = Path("var/bench/privacy")


def federate(
    name: str, federation: Federation, epsilon: float | None, args: argparse.Namespace
) -> tuple[RunOutcome, RunSettings]:
    """One run on the simulation engine: the quality benchmark's settings, or DP-SGD at ``epsilon``."""
    # each node seeds its own DP noise (node config dp-seed) so that the figures can be rerun;
    # the report says so per round ("dp_noise"); a real node draws it from its own secret randomness
    nodes = with_policies(
        [SimulatedNode(n, p, "uci_homo", dp_seed=args.seed) for n, p in federation.institutions.items()],
        WORK / name,
        use_examples=False,
    )
    settings = RunSettings(
        schema="uci_homo",
        rounds=args.plain_rounds,
        seed=args.seed,
        min_institutions=len(federation.institutions),
        test_path=federation.test_path,
        evaluate_on_nodes=False,
        demo_keys=True,  # the simulation's policies accept the published demo coordinator key
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
    outcome = run_simulated_federation(
        nodes, settings, on_round=lambda r, m: print(f"  round {r:2d}  test AUC {m['auc']:.4f}", flush=True)
    )
    assert outcome.model is not None and outcome.test_labels is not None and outcome.test_scores is not None
    return outcome, settings


def _spent(outcome: RunOutcome) -> dict[str, float]:
    return {
        name: max((r.get("epsilon_spent", 0.0) for r in inst["rounds"]), default=0.0)
        for name, inst in outcome.log.institutions.items()
    }


def accuracy_run(epsilon: float | None, args: argparse.Namespace, data_dir: Path | None) -> dict[str, Any]:
    label = "inf" if epsilon is None else f"{epsilon:g}"
    print(f"uci_homo, epsilon {label}", flush=True)
    federation = uci_federation(
        WORK / f"eps-{label}", 3, data_dir=data_dir, seed=args.seed, holdout_fraction=0.0
    )
    started = time.perf_counter()
    outcome, settings = federate(f"eps-{label}", federation, epsilon, args)
    assert outcome.test_labels is not None and outcome.test_scores is not None
    return {
        "auc": score_metrics(outcome.test_labels, outcome.test_scores)["auc"],
        "epsilon_spent": _spent(outcome),
        "seconds": round(time.perf_counter() - started, 1),
        "rounds": settings.rounds,
    }


def membership_inference(args: argparse.Namespace, data_dir: Path | None) -> dict[str, Any]:
    schema = resolve_schema("uci_homo")
    federation = uci_federation(
        WORK / "mia", data_dir=data_dir, seed=args.seed, holdout_fraction=0.0, sizes=args.mia_sizes
    )
    test = load_dataset(federation.test_path, schema)
    order = rng_for(args.seed, "mia-attacker").permutation(len(test))
    attacker, nonmembers = test.subset(order[: len(test) // 2]), test.subset(order[len(test) // 2 :])
    print(
        f"membership inference: {args.mia_references} reference models on {len(attacker) // 2} rows",
        flush=True,
    )
    references = train_reference_models(
        attacker, args.mia_references, args.plain_rounds, TrainConfig(), seed=args.seed
    )
    members = {
        name: load_dataset(path / TRAIN_FILE, schema) for name, path in federation.institutions.items()
    }
    by_bank: dict[str, dict[str, Any]] = {n: {"rows": len(d)} for n, d in members.items()}
    runs: dict[str, Any] = {}
    for label, epsilon in (("no_dp", None), ("eps3", 3.0)):
        print(f"membership inference: banks of different sizes, {label}", flush=True)
        outcome, _ = federate(f"mia-{label}", federation, epsilon, args)
        model: FourDimensionModel = outcome.model  # type: ignore[assignment]
        assert outcome.test_labels is not None and outcome.test_scores is not None
        runs[label] = {
            "auc": score_metrics(outcome.test_labels, outcome.test_scores)["auc"],
            "epsilon_spent": _spent(outcome),
        }
        for name, rows in members.items():
            pick = rng_for(args.seed, f"mia-members-{name}").permutation(len(rows))[: len(nonmembers)]
            sample = rows.subset(pick)
            by_bank[name][f"loss_{label}"] = loss_attack_auc(model, sample, nonmembers)
            by_bank[name][f"reference_{label}"] = reference_attack_auc(model, sample, nonmembers, references)
    smallest = min(by_bank, key=lambda n: by_bank[n]["rows"])

    def worst(label: str, banks: list[str]) -> float:
        return max(max(by_bank[n][f"loss_{label}"], by_bank[n][f"reference_{label}"]) for n in banks)

    return {
        "attack_auc_no_dp": worst("no_dp", list(by_bank)),
        "attack_auc_eps3": worst("eps3", list(by_bank)),
        "smallest_institution": smallest,
        "smallest_attack_auc_no_dp": worst("no_dp", [smallest]),
        "smallest_attack_auc_eps3": worst("eps3", [smallest]),
        "by_institution": by_bank,
        "runs": runs,
        "sizes": args.mia_sizes,
        "reference_models": args.mia_references,
        "nonmembers": len(nonmembers),
    }


class _TimedGrid(PromptGrid):
    """Records how long the coordinator waits for each message round, by SecAgg+ stage."""

    waits: ClassVar[list[tuple[str, float]]] = []

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        messages = list(messages)
        stage = "train"
        if messages:
            config = messages[0].content.config_records.get(SECAGG_CONFIGS)
            stage = str(config[Key.STAGE]) if config is not None else messages[0].metadata.message_type
        started = time.perf_counter()
        replies = super().send_and_receive(messages, timeout=timeout)
        self.waits.append((stage, time.perf_counter() - started))
        return replies


def secagg_timing(
    institutions: int, rounds: int, data_dir: Path | None, seed: int, neighbourhood: int
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "institutions": institutions,
        "rounds": rounds,
        "neighbourhood_shares": neighbourhood,
        "message_round_seconds": {},
    }
    models = {}
    coordinator.server_app.PromptGrid = _TimedGrid  # type: ignore[misc]
    # plain; SecAgg+ with the default shares (every institution); SecAgg+ with a smaller neighbourhood
    for label, secure, shares in (
        ("plain", False, None),
        ("secagg", True, None),
        ("secagg_neighbourhood", True, neighbourhood),
    ):
        _TimedGrid.waits = []
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
            demo_keys=True,
            secure_aggregation=secure,
            secure_aggregation_shares=shares,
        )
        outcome = run_simulated_federation(nodes, settings)
        assert (
            outcome.model is not None and outcome.test_labels is not None and outcome.test_scores is not None
        )
        seconds = [r["fit_seconds"] for r in outcome.log.central[1:]]
        out[f"round_seconds_{label}"] = float(np.median(seconds))
        out[f"round_seconds_{label}_mean"] = float(np.mean(seconds))
        # training rounds 2..R: skip the normalization round, round 1, evaluations and the reference round
        stages = [w for w in _TimedGrid.waits if w[0] != "evaluate"]
        per_round = 4 if secure else 1
        training = stages[per_round : per_round * (rounds + 1)][per_round:]
        for stage in dict.fromkeys(s for s, _ in training):
            out["message_round_seconds"][f"{label}:{stage}"] = float(
                np.median([t for s, t in training if s == stage])
            )
        out[f"auc_{label}"] = score_metrics(outcome.test_labels, outcome.test_scores)["auc"]
        models[label] = outcome.model
    out["normalization_max_abs_diff"] = float(
        max(
            (models["secagg"].mean - models["plain"].mean).abs().max(),
            (models["secagg"].std - models["plain"].std).abs().max(),
        )
    )
    out["overhead"] = out["round_seconds_secagg"] / out["round_seconds_plain"]
    out["overhead_neighbourhood"] = out["round_seconds_secagg_neighbourhood"] / out["round_seconds_plain"]
    return out


PARTS = ("uci_homo", "membership_inference", "secagg")


def print_accuracy(runs: dict[str, Any]) -> None:
    print(f"\n{'epsilon':>8s} {'test AUC':>9s} {'spent (max over banks)':>24s}")
    for k, v in runs.items():
        spent = max(v["epsilon_spent"].values(), default=0.0)
        print(f"{k:>8s} {v['auc']:9.4f} {('-' if k == 'inf' else f'{spent:.3f}'):>24s}")


def print_membership(mi: dict[str, Any]) -> None:
    print(
        f"\nmembership inference (attack AUC, 0.5 = nothing revealed; test AUC no DP "
        f"{mi['runs']['no_dp']['auc']:.4f}, epsilon 3 {mi['runs']['eps3']['auc']:.4f})"
    )
    print(
        f"{'bank':>8s} {'rows':>6s} {'loss, no DP':>12s} {'loss, eps 3':>12s} {'ref, no DP':>11s} {'ref, eps 3':>11s}"
    )
    for name, b in mi["by_institution"].items():
        print(
            f"{name:>8s} {b['rows']:6d} {b['loss_no_dp']:12.4f} {b['loss_eps3']:12.4f} "
            f"{b['reference_no_dp']:11.4f} {b['reference_eps3']:11.4f}"
        )
    print(
        f"worst case: {mi['attack_auc_no_dp']:.4f} without DP, {mi['attack_auc_eps3']:.4f} at epsilon 3; "
        f"smallest bank {mi['smallest_institution']}: {mi['smallest_attack_auc_no_dp']:.4f} -> "
        f"{mi['smallest_attack_auc_eps3']:.4f} (lowered by "
        f"{mi['smallest_attack_auc_no_dp'] - mi['smallest_attack_auc_eps3']:+.4f})"
    )


def print_secagg(sa: dict[str, Any]) -> None:
    print(
        f"SecAgg+ with {sa['institutions']} banks, median of {sa['rounds'] - 1} rounds (mean): "
        f"{sa['round_seconds_secagg']:.3f} s ({sa['round_seconds_secagg_mean']:.3f}) per round vs "
        f"{sa['round_seconds_plain']:.3f} s ({sa['round_seconds_plain_mean']:.3f}) plain, "
        f"{sa['overhead']:.2f}x ({sa['round_seconds_secagg_mean'] / sa['round_seconds_plain_mean']:.2f}x); "
        f"AUC {sa['auc_secagg']:.4f} vs {sa['auc_plain']:.4f}; "
        f"normalization differs by at most {sa['normalization_max_abs_diff']:.2e}"
    )
    print(
        f"  with {sa['neighbourhood_shares']} shares per institution (SecAgg+ neighbourhoods): "
        f"{sa['round_seconds_secagg_neighbourhood']:.3f} s ({sa['round_seconds_secagg_neighbourhood_mean']:.3f}) "
        f"per round, {sa['overhead_neighbourhood']:.2f}x; "
        f"AUC {sa['auc_secagg_neighbourhood']:.4f}"
    )
    print(
        "  coordinator's wait per message round (median): "
        + ", ".join(f"{k} {v:.3f} s" for k, v in sa["message_round_seconds"].items())
    )


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
    parser.add_argument("--secagg-rounds", type=int, default=20)
    parser.add_argument(
        "--secagg-neighbourhood", type=int, default=3, help="shares in the smaller-neighbourhood variant"
    )
    parser.add_argument("--mia-sizes", type=float, nargs="+", default=[0.6, 0.25, 0.12, 0.03])
    parser.add_argument("--mia-references", type=int, default=8)
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help="measure only these (e.g. --parts secagg to rerun the timing alone)",
    )
    args = parser.parse_args(argv)
    data_dir = fate_data_dir(args.data_dir)
    shutil.rmtree(WORK, ignore_errors=True)
    result: dict[str, Any] = {}
    if "uci_homo" in args.parts:
        runs = {"inf": accuracy_run(None, args, data_dir)} | {
            f"{e:g}": accuracy_run(e, args, data_dir) for e in args.epsilons
        }
        result["uci_homo"] = {"auc_by_epsilon": {k: v["auc"] for k, v in runs.items()}, "runs": runs}
    if "membership_inference" in args.parts:
        result["membership_inference"] = membership_inference(args, data_dir)
    if "secagg" in args.parts:
        result["secagg"] = secagg_timing(
            args.secagg_institutions, args.secagg_rounds, data_dir, args.seed, args.secagg_neighbourhood
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    if "uci_homo" in result:
        print_accuracy(result["uci_homo"]["runs"])
    if "membership_inference" in result:
        print_membership(result["membership_inference"])
    if "secagg" in result:
        print_secagg(result["secagg"])
    print(f"wrote {args.json}")
    return 1 if "uci_homo" in result and math.isnan(result["uci_homo"]["auc_by_epsilon"]["inf"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
