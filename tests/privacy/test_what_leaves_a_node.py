"""Capture every message a node sends during a real Flower run; none of its rows, ids or values are in it."""

from __future__ import annotations

import json
import pickle
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flwr.app import Context, Message
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS as SECAGG_CONFIGS
from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage

from coordinator.run_settings import RunSettings
from coordinator.secure_aggregation import MODULUS_RANGE
from coordinator.simulation.engine import run_simulated_federation
from coordinator.simulation.nodes import SimulatedNode, with_policies
from federation import protocol as P
from federation.datasets.partition import HOLDOUT_FILE, TRAIN_FILE, write_partition
from federation.datasets.synthetic import generate_sme
from federation.fairness import fairness_report, group_index, node_vector, protected_attributes, vector_length
from federation.loading import encode_frame
from federation.metrics import score_metrics
from federation.schema import resolve_schema
from federation.training import predict_proba

ALLOWED_METRICS = {
    *score_metrics(np.array([0.0, 1.0]), np.array([0.2, 0.7])),
    P.INSTITUTION,
    P.TRAIN_LOSS,
    P.EPSILON_SPENT,
    P.DP_NOISE,
    P.ATTESTATION,  # the institution's signature over (itself, request, phase, round, node): no data
    P.POLICY_SHA256,  # the digest of the institution's own policy file, for the model registry: no data
    "loss",  # Flower's own: the evaluation loss and the row count of a fit or evaluation
    "num_examples",
}


class CaptureReplies:
    """Outermost client mod: writes every reply the node sends to ``folder`` (picklable for Ray)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(
        self, msg: Message, ctxt: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        secagg = msg.content.config_records.get(SECAGG_CONFIGS)
        stage = None if secagg is None else str(secagg.get(Key.STAGE))  # read before the mods consume it
        reply = call_next(msg, ctxt)
        captured: dict[str, object] = {
            "node": ctxt.node_config.get("partition-id"),
            "type": msg.metadata.message_type,
            "stage": stage,
        }
        if reply.has_content():
            content = reply.content
            captured["arrays"] = [
                a for rec in content.array_records.values() for a in rec.to_numpy_ndarrays()
            ]
            # Flower's legacy replies carry fit/evaluate metrics in config records named "*.metrics"
            metric_records = [
                *content.metric_records.values(),
                *(rec for name, rec in content.config_records.items() if name.endswith(".metrics")),
            ]
            captured["metrics"] = {k: v for rec in metric_records for k, v in rec.items()}
            captured["values"] = [
                v
                for name, rec in content.config_records.items()
                if not name.endswith(".metrics")
                for v in rec.values()
            ]
        else:
            captured["error"] = reply.error.reason
        (self.folder / f"{uuid.uuid4().hex}.pkl").write_bytes(pickle.dumps(captured))
        return reply


def test_nothing_of_a_node_s_rows_leaves_it(tmp_path: Path) -> None:
    frame = generate_sme(6000, seed=5)
    names = ["national_bank", "online_bank", "rural_cooperative"]
    assignment = np.arange(len(frame)) % 3
    folders = write_partition(frame, assignment, names, tmp_path / "institutions", holdout_fraction=0.2)
    nodes = with_policies(
        [SimulatedNode(n, f, "sme") for n, f in folders.items()], tmp_path, use_examples=False
    )
    capture = tmp_path / "captured"
    capture.mkdir()
    settings = RunSettings(
        schema="sme",
        rounds=2,
        min_institutions=3,
        run_id="capture",
        demo_keys=True,
        audit_url=f"sqlite:///{tmp_path / 'coordinator.db'}",
    )
    # one node worker: one Ray actor to start, and a node's messages are light work
    outcome = run_simulated_federation(
        nodes, settings, parallel_nodes=1, outer_mods=[CaptureReplies(capture)]
    )

    messages = [pickle.loads(p.read_bytes()) for p in capture.glob("*.pkl")]
    assert len(messages) >= 3 * 4  # stats, 2 training rounds, reference (+ evaluations) per node
    # metrics leave by design: only summaries of the node's holdout, under these names
    metrics = [m.get("metrics", {}) for m in messages]
    assert {"auc", P.TRAIN_LOSS, P.ATTESTATION, P.POLICY_SHA256} <= set().union(*metrics) <= ALLOWED_METRICS
    metric_numbers = np.array([float(v) for ms in metrics for v in ms.values() if isinstance(v, int | float)])
    sent_numbers = np.concatenate(
        [np.asarray(a, dtype=np.float64).ravel() for m in messages for a in m.get("arrays", [])]
        + [np.array([float(v) for m in messages for v in m.get("values", []) if isinstance(v, int | float)])]
    )
    sent_text = json.dumps(
        [str(v) for m in messages for v in m.get("values", []) if isinstance(v, str | bytes)]
    )

    train = pd.concat([pd.read_csv(f / TRAIN_FILE) for f in folders.values()])
    # no id, no raw category string beyond the schema's own vocabulary
    assert not any(business_id in sent_text for business_id in train["business_id"])
    # no raw or transformed feature value: money amounts (and their log) even at float32 precision,
    # where a weight could not coincide with one by chance; every distinctive value exactly
    money = np.concatenate(
        [train[c].to_numpy(dtype=np.float64) for c in ("monthly_revenue", "requested_amount")]
    )
    money = np.unique(np.concatenate([money, np.log1p(money)]))
    everything = np.unique(np.concatenate([sent_numbers, metric_numbers]).astype(np.float32))
    assert np.intersect1d(money.astype(np.float32), everything).size == 0
    # a rate has 4 decimals; so can a metric (a default rate is k/400), so those are not compared
    rates = np.concatenate(
        [train[c].to_numpy(dtype=np.float64) for c in ("cashflow_volatility", "tax_compliance_rate")]
    )
    rates = rates[(rates != 0) & (rates != 1) & (rates != 0.5)]
    assert np.intersect1d(np.unique(np.concatenate([money, rates])), np.unique(sent_numbers)).size == 0
    # and far fewer numbers leave than the node holds
    assert sent_numbers.size < train.size

    # every data-derived reply went through SecAgg+: what left was masked integers, uniform over
    # the modulus, never the node's float update (stats, 2 training rounds, fairness, reference)
    data_replies = [m for m in messages if m["type"] == "train"]
    masked = [m for m in data_replies if m["stage"] == Stage.COLLECT_MASKED_VECTORS]
    assert len(masked) == 3 * 5
    assert all(m["stage"] is not None for m in data_replies)
    assert not any(
        np.issubdtype(np.asarray(a).dtype, np.floating) for m in data_replies for a in m.get("arrays", [])
    )
    vectors = [
        bytes_to_ndarray(raw)
        for m in masked
        for v in m["values"]
        if isinstance(v, list)
        for raw in v
        if isinstance(raw, bytes)
    ]
    assert vectors and all(np.issubdtype(a.dtype, np.integer) for a in vectors)
    values = np.concatenate([a.ravel() for a in vectors]).astype(np.float64)
    assert values.min() >= 0 and values.max() < MODULUS_RANGE
    assert abs(values.mean() / MODULUS_RANGE - 0.5) < 0.05

    # the fairness round: each node's per-group counts of its holdout left masked, like every
    # vector above; the coordinator got only their secure sum, which gives the figures of the
    # pooled holdout rows (within SecAgg+'s quantization)
    schema = resolve_schema("sme")
    attributes = protected_attributes(schema)
    assert sum(a.shape == (vector_length(attributes),) for a in vectors) == 3
    holdout = pd.concat([pd.read_csv(f / HOLDOUT_FILE) for f in folders.values()])
    pooled = encode_frame(holdout, schema, "pooled holdout")
    assert outcome.model is not None and pooled.label is not None and outcome.fairness is not None
    cutoff = settings.approve_below_pd
    scores = predict_proba(outcome.model, pooled)
    vector = node_vector(scores, pooled.label, group_index(holdout, attributes), attributes, cutoff)
    expected = fairness_report(vector, attributes, len(holdout), cutoff)
    assert expected is not None and outcome.fairness["holdout_rows"] == len(holdout)
    assert set(outcome.fairness["attributes"]) == {"owner_age", "owner_gender", "owner_marital_status"}
    for name, groups in expected["attributes"].items():
        assert sum(g["share"] for g in outcome.fairness["attributes"][name].values()) == pytest.approx(1.0)
        for group, figures in groups.items():
            for key, value in figures.items():
                got = outcome.fairness["attributes"][name][group][key]
                assert (got is None) == (value is None), (name, group, key)
                assert value is None or (0.0 <= got <= 1.0 and got == pytest.approx(value, abs=1e-3))
