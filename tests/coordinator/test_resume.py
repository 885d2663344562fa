"""The coordinator saves the global model after every training round; a run stopped by a fault
resumes from its last completed round and ends with the model an uninterrupted run ends with."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from coordinator.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    CheckpointError,
    check_resumable,
    load_checkpoint,
    next_round,
    resumed_request,
    save_checkpoint,
)
from coordinator.recording import RoundLog
from coordinator.run_settings import RunSettings
from coordinator.server_app import training_request
from coordinator.simulation.engine import run_simulated_federation
from coordinator.simulation.nodes import SimulatedNode, with_policies
from federation.datasets.scenarios import sme_federation
from federation.model import trainable_weights
from federation.normalization import NormStats
from federation.schema import resolve_schema
from policies.decisions import sign_request
from policies.signing import generate_keypair, load_private_key


def _checkpoint(round_: int = 2) -> Checkpoint:
    return Checkpoint(
        run_id="run-1",
        federation_policy_sha256="ab" * 32,
        schema="sme",
        rounds=3,
        completed_round=round_,
        started_round=round_,
        request="{}",
        stats=NormStats(np.array([1.0, 2.0]), np.array([0.5, 3.0])),
        weights=[np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4)],
        log=RoundLog([{"round": 1, "auc": 0.7}], {"bank": {"train_rows": 10, "rounds": []}}, []),
    )


def test_a_checkpoint_reads_back_as_written_and_keeps_only_its_weights(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint(1))
    save_checkpoint(tmp_path, _checkpoint(2))
    loaded = load_checkpoint(tmp_path)
    assert loaded.completed_round == 2 and loaded.run_id == "run-1" and loaded.rounds == 3
    assert [w.tolist() for w in loaded.weights] == [w.tolist() for w in _checkpoint().weights]
    assert loaded.stats.std.tolist() == [0.5, 3.0]
    assert loaded.log.central == [{"round": 1, "auc": 0.7}]
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_FILE, "weights-round-2.npz"]


def test_a_missing_or_altered_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, _checkpoint())
    weights = tmp_path / "weights-round-2.npz"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CheckpointError, match="sha256 differs"):
        load_checkpoint(tmp_path)
    (tmp_path / CHECKPOINT_FILE).write_text("{", encoding="utf-8")
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"run_id": "run-2"}, "asked to resume it as run run-2"),
        ({"federation_policy_sha256": "cd" * 32}, "a changed policy needs a new run"),
        ({"rounds": 5}, "the run now asks schema sme, 5 rounds"),
    ],
)
def test_a_checkpoint_continues_only_its_own_run(change: dict[str, object], message: str) -> None:
    settings = RunSettings(schema="sme", rounds=3, run_id="run-1", federation_policy_sha256="ab" * 32)
    check_resumable(_checkpoint(), settings)
    with pytest.raises(CheckpointError, match=message):
        check_resumable(_checkpoint(), replace(settings, **change))  # type: ignore[arg-type]


def test_a_resumed_run_sends_the_request_it_began_with_signed_by_the_same_key(tmp_path: Path) -> None:
    settings = RunSettings(schema="sme", rounds=3, run_id="run-1")
    asked = training_request(settings, resolve_schema("sme"))
    key = load_private_key(generate_keypair(tmp_path, "coordinator")[0])
    began = replace(_checkpoint(), request=sign_request(asked, key).to_wire().decode())
    resumed = resumed_request(began, replace(asked, issued_at="2099-01-01T00:00:00Z"), key)
    assert resumed.to_wire().decode() == began.request  # same digest: the nodes' run binding holds
    other = load_private_key(generate_keypair(tmp_path, "other")[0])
    with pytest.raises(CheckpointError, match="not signed by this coordinator's key"):
        resumed_request(began, asked, other)
    with pytest.raises(CheckpointError, match="asks something other than its signed training request"):
        resumed_request(began, replace(asked, secure_aggregation=False), key)


def test_a_resumed_run_skips_a_round_that_began() -> None:
    assert next_round(_checkpoint(2)) == 3
    assert next_round(replace(_checkpoint(2), started_round=3)) == 4  # nodes may have answered round 3


class CoordinatorFault(Exception):
    """The coordinator's process dies in the middle of round 2."""


def test_a_run_stopped_mid_round_resumes_and_ends_with_the_uninterrupted_model(tmp_path: Path) -> None:
    federation = sme_federation(tmp_path / "data", 3, 3000, seed=4, test_rows=1000)
    nodes = with_policies(
        [SimulatedNode(n, p, "sme") for n, p in federation.institutions.items()],
        tmp_path / "nodes",
        use_examples=False,
    )
    settings = RunSettings(
        schema="sme",
        rounds=3,
        min_institutions=3,
        run_id="resumable",
        demo_keys=True,
        test_path=federation.test_path,
        evaluate_on_nodes=False,
        secure_aggregation=False,  # SecAgg+ rounds stochastically: two runs would differ in the last bits
        audit_url=f"sqlite:///{tmp_path / 'coordinator.db'}",
    )
    whole = run_simulated_federation(nodes, replace(settings, run_id="uninterrupted"), parallel_nodes=1)

    def fault(server_round: int, _: dict[str, float]) -> None:
        if server_round == 2:
            raise CoordinatorFault("killed")

    interrupted = replace(settings, checkpoint_dir=tmp_path / "checkpoint")
    with pytest.raises(CoordinatorFault):
        run_simulated_federation(nodes, interrupted, on_round=fault, parallel_nodes=1)
    saved = load_checkpoint(tmp_path / "checkpoint")
    assert saved.completed_round == 2  # round 2's aggregate was saved before the fault
    assert json.loads((tmp_path / "checkpoint" / CHECKPOINT_FILE).read_text())["completed_round"] == 2

    resumed = run_simulated_federation(nodes, interrupted, parallel_nodes=1, resume=saved)
    assert [r["round"] for r in resumed.log.central] == [1, 2, 3]
    assert [r["round"] for r in resumed.log.institutions[nodes[0].institution]["rounds"]] == [1, 2, 3]
    assert load_checkpoint(tmp_path / "checkpoint").completed_round == 3
    assert whole.model is not None and resumed.model is not None
    for ours, theirs in zip(trainable_weights(resumed.model), trainable_weights(whole.model), strict=True):
        np.testing.assert_array_equal(ours, theirs)
