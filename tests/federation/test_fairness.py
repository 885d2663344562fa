"""Fairness figures per protected group: node vectors, their secure average, the coordinator's report."""

from __future__ import annotations

import dataclasses
import datetime as dt
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from sklearn.metrics import roc_auc_score

from clients.client_app import CreditNodeClient
from clients.node_data import load_node_data
from coordinator.run_settings import RunSettings
from coordinator.secure_aggregation import MAX_ROWS_PER_NODE, QUANTIZATION_RANGE, WEIGHT_CLIPPING_RANGE
from federation import protocol as P
from federation.datasets.partition import write_institution
from federation.datasets.synthetic import generate_sme
from federation.fairness import (
    MIN_GROUP_ROWS,
    MISSING,
    SCORE_BINS,
    ProtectedAttribute,
    attribute_of,
    fairness_report,
    group_index,
    histogram_auc,
    node_vector,
    protected_attributes,
    score_bin,
    vector_length,
)
from federation.hyperparameters import ModelConfig
from federation.loading import FeatureLayout
from federation.model import FourDimensionModel, trainable_weights
from federation.normalization import NormStats
from federation.schema import Column, ColumnType, Dimension, Schema
from federation.training import predict_proba
from policies.contributions import FAIRNESS, REFERENCE, STATS, TRAIN, JoinLimits, contribution_problem
from policies.decisions import TrainingRequest, sign_request
from policies.demo_keys import DEMO_COORDINATOR_KEY
from policies.signing import load_private_key

CUTOFF = 0.05


@pytest.fixture(scope="module")
def applicants() -> pd.DataFrame:
    """Synthetic borrowers with their true PD as the score: real-looking scores and labels."""
    return generate_sme(4000, seed=23)


def _report(frame: pd.DataFrame, schema: Schema) -> dict[str, Any] | None:
    """The report over ``frame`` as one node: what pooling every holdout row would give."""
    attributes = protected_attributes(schema)
    vector = node_vector(
        frame["true_pd"].to_numpy(),
        frame["default_12m"].to_numpy(),
        group_index(frame, attributes),
        attributes,
        CUTOFF,
    )
    return fairness_report(vector, attributes, len(frame), CUTOFF)


def _node_vectors(parts: list[pd.DataFrame], schema: Schema) -> list[tuple[np.ndarray, int]]:
    """(vector, weight) per node, as CreditNodeClient sends them; an empty part is a node without holdout."""
    attributes = protected_attributes(schema)
    out = []
    for part in parts:
        if len(part) == 0:
            out.append((np.zeros(vector_length(attributes)), 1))
            continue
        vector = node_vector(
            part["true_pd"].to_numpy(),
            part["default_12m"].to_numpy(),
            group_index(part, attributes),
            attributes,
            CUTOFF,
        )
        out.append((vector, len(part)))
    return out


def _assert_same(
    a: dict[str, Any] | None, b: dict[str, Any] | None, tol: float, auc_tol: float | None = None
) -> None:
    assert a is not None and b is not None
    assert a["holdout_rows"] == b["holdout_rows"]
    assert a["attributes"].keys() == b["attributes"].keys()
    for name, groups in a["attributes"].items():
        assert groups.keys() == b["attributes"][name].keys()
        for group, figures in groups.items():
            for key, value in figures.items():
                other = b["attributes"][name][group][key]
                assert (value is None) == (other is None), (name, group, key)
                if value is not None:
                    limit = auc_tol if key == "auc" and auc_tol is not None else tol
                    assert value == pytest.approx(other, abs=limit), (name, group, key)


def test_groups_of_each_protected_column(sme_schema: Schema) -> None:
    attributes = {a.name: a for a in protected_attributes(sme_schema)}
    assert list(attributes) == ["owner_age", "owner_gender", "owner_marital_status"]
    assert attributes["owner_gender"].groups == ("female", "male", MISSING)
    assert attributes["owner_marital_status"].groups == ("single", "married", "other", MISSING)
    assert attributes["owner_age"].groups == ("<35", "35 to <55", ">=55", MISSING)

    def numeric(**kw: Any) -> Column:
        return Column("x", Dimension.BEHAVIOUR, ColumnType.NUMERIC, protected=True, **kw)

    # no group_edges: cut at the midpoint of min and max; neither: one band
    assert attribute_of(numeric(min=16.0, max=110.0)).edges == (63.0,)
    assert attribute_of(numeric(min=16.0, max=110.0)).groups == ("<63", ">=63", MISSING)
    assert attribute_of(numeric()).groups == ("all", MISSING)
    binary = attribute_of(Column("b", Dimension.BEHAVIOUR, ColumnType.BINARY, protected=True))
    assert binary.groups == ("0", "1", MISSING)

    # a value on an edge belongs to the band above; no value, or no column at all: "missing"
    age = attributes["owner_age"]
    frame = pd.DataFrame(
        {
            "owner_age": [20.0, 35.0, 54.9, 55.0, None],
            "owner_gender": ["male", "female", None, "male", "female"],
        }
    )
    groups = group_index(frame, [age, attributes["owner_gender"], attributes["owner_marital_status"]])
    assert groups.tolist() == [[0, 1, 3], [1, 0, 3], [1, 2, 3], [2, 1, 3], [3, 0, 3]]
    assert group_index(frame, [binary]).tolist() == [[2]] * 5


def test_vector_round_trip_by_hand() -> None:
    attribute = ProtectedAttribute("g", ("a", "b", MISSING), categories=("a", "b"))
    rows = MIN_GROUP_ROWS * 2
    # group a: 60 rows, 10 defaulters; group b: 60 rows, none; 2 rows missing
    groups = np.array([0] * rows + [1] * rows + [2] * 2)[:, None]
    labels = np.array([1.0] * 10 + [0.0] * (rows - 10) + [0.0] * rows + [1.0, 0.0])
    pd_ = np.where(labels == 1, 0.30, 0.02)
    pd_[:5] = 0.01  # five defaulters scored below every non-defaulter of group a
    vector = node_vector(pd_, labels, groups, [attribute], CUTOFF)
    assert vector.shape == (vector_length([attribute]),) == (3 * (3 + 2 * SCORE_BINS),)
    report = fairness_report(vector, [attribute], len(labels), CUTOFF)
    assert report is not None and report["holdout_rows"] == len(labels)
    a, b = report["attributes"]["g"]["a"], report["attributes"]["g"]["b"]
    assert a["share"] == pytest.approx(rows / len(labels)) and a["default_rate"] == pytest.approx(10 / rows)
    assert a["approval_rate"] == pytest.approx((rows - 5) / rows)  # the 5 defaulters at 0.30 are declined
    assert a["auc"] == pytest.approx(0.5)  # 5 defaulters below, 5 above every non-defaulter
    assert b["default_rate"] == 0.0 and b["approval_rate"] == 1.0 and b["auc"] is None  # no defaulters
    # 2 rows: only their share; the gaps leave "missing" aside
    assert report["attributes"]["g"][MISSING] == {
        "share": pytest.approx(2 / len(labels)),
        "default_rate": None,
        "approval_rate": None,
        "auc": None,
    }
    gaps = report["gaps"]["g"]
    assert gaps["default_rate"] == {"gap": pytest.approx(10 / rows), "lowest": "b", "highest": "a"}
    assert gaps["auc"] is None  # one group has an AUC
    # no holdout anywhere, or no protected column: no report
    assert fairness_report(np.zeros_like(vector), [attribute], 3.0, CUTOFF) is None
    assert fairness_report(np.zeros(0), [], 3.0, CUTOFF) is None
    with pytest.raises(ValueError, match="cut-off"):
        node_vector(pd_, labels, groups, [attribute], 1.0)
    with pytest.raises(ValueError, match="approve_below_pd"):
        RunSettings(schema="sme", approve_below_pd=0.0)


def test_auc_from_histograms_matches_sklearn(applicants: pd.DataFrame) -> None:
    p, y = applicants["true_pd"].to_numpy(), applicants["default_12m"].to_numpy()
    bins = score_bin(p)
    auc = histogram_auc(
        np.bincount(bins[y == 1], minlength=SCORE_BINS), np.bincount(bins[y == 0], minlength=SCORE_BINS)
    )
    # exactly sklearn's AUC of the binned scores (ties count one half) ...
    assert auc == pytest.approx(roc_auc_score(y, bins), abs=1e-12)
    # ... and within the binning error of the raw scores' (bins 1/8 wide on the logit scale)
    assert abs(auc - roc_auc_score(y, p)) < 0.005
    assert score_bin(np.array([0.0, 1e-6, 0.5, 1 - 1e-6, 1.0])).tolist() == [0, 0, 64, 127, 127]


def test_per_group_figures_match_the_pooled_rows(applicants: pd.DataFrame, sme_schema: Schema) -> None:
    report = _report(applicants, sme_schema)
    assert report is not None and report["approve_below_pd"] == CUTOFF
    for name, groups in report["attributes"].items():
        assert MISSING not in groups  # the synthetic borrowers have every value
        assert sum(g["share"] for g in groups.values()) == pytest.approx(1.0)
        for group, figures in groups.items():
            rows = applicants[
                group_index(applicants, [a for a in protected_attributes(sme_schema) if a.name == name])[:, 0]
                == list(groups).index(group)
            ]
            y, p = rows["default_12m"].to_numpy(), rows["true_pd"].to_numpy()
            assert figures["share"] == pytest.approx(len(rows) / len(applicants))
            assert figures["default_rate"] == pytest.approx(y.mean())
            assert figures["approval_rate"] == pytest.approx((p < CUTOFF).mean())
            assert abs(figures["auc"] - roc_auc_score(y, p)) < 0.01
        gap = report["gaps"][name]["approval_rate"]
        rates = [g["approval_rate"] for g in groups.values()]
        assert gap["gap"] == pytest.approx(max(rates) - min(rates))


def test_the_row_weighted_average_over_nodes_is_the_pooled_report(
    applicants: pd.DataFrame, sme_schema: Schema
) -> None:
    # four nodes of very different sizes, and one without holdout rows (zeros, weight 1)
    cuts = [0, 120, 900, 1000, 4000]
    parts = [applicants.iloc[a:b] for a, b in pairwise(cuts)] + [applicants.iloc[:0]]
    sent = _node_vectors(parts, sme_schema)
    weights = np.array([w for _, w in sent], dtype=np.float64)
    average = sum(w * v for v, w in sent) / weights.sum()
    attributes = protected_attributes(sme_schema)
    _assert_same(
        fairness_report(average, attributes, weights.sum(), CUTOFF), _report(applicants, sme_schema), 1e-12
    )


def _secagg_plus_average(sent: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """The arithmetic of Flower's SecAgg+ on these vectors (masks cancel): what the coordinator gets.

    As ``secaggplus_mod`` and ``SecAggPlusWorkflow`` do it with FedCredit's settings (the fairness
    round is clipped like a model update): scale by the quantized weight ratio, clip, quantize
    stochastically, sum, dequantize, divide by the summed ratio.
    """
    total_q = 0
    summed = None
    for vector, weight in sent:
        q_ratio = round(weight / MAX_ROWS_PER_NODE * QUANTIZATION_RANGE)
        scaled = vector * (q_ratio / QUANTIZATION_RANGE)
        q = quantize([scaled], WEIGHT_CLIPPING_RANGE, QUANTIZATION_RANGE)[0].astype(np.int64)
        summed = q if summed is None else summed + q
        total_q += q_ratio
    assert summed is not None
    plain = dequantize([summed], WEIGHT_CLIPPING_RANGE, QUANTIZATION_RANGE)[0]
    plain += -(len(sent) - 1) * WEIGHT_CLIPPING_RANGE
    return plain * (QUANTIZATION_RANGE / total_q)


def test_fractions_survive_secagg_quantization(applicants: pd.DataFrame, sme_schema: Schema) -> None:
    cuts = [0, 150, 1100, 4000]
    parts = [applicants.iloc[a:b] for a, b in pairwise(cuts)] + [applicants.iloc[:0]]
    sent = _node_vectors(parts, sme_schema)
    weights = sum(w for _, w in sent)
    exact = sum(w * v for v, w in sent) / weights
    saved = np.random.get_state()  # Flower's stochastic rounding draws from numpy's global generator
    np.random.seed(3)
    try:
        secure = _secagg_plus_average(sent)
    finally:
        np.random.set_state(saved)
    # in rows: a quantization step is 2 * 16 / 2**30 of 100,000 rows, 0.003 of a row, per node
    assert np.abs(secure - exact).max() * weights < 0.01
    attributes = protected_attributes(sme_schema)
    # shares and rates to 1e-5 (measured: 1e-5 at most), AUCs to 1e-3 (measured: 1.4e-4 at most;
    # their binning error is 0.005)
    _assert_same(
        fairness_report(secure, attributes, weights, CUTOFF), _report(applicants, sme_schema), 5e-5, 1e-3
    )


def test_a_node_keeps_the_groups_of_its_holdout_rows(tmp_path: Path, applicants: pd.DataFrame) -> None:
    # a node without a protected column: every row of it is "missing"
    frame = applicants.head(400).drop(columns=["owner_marital_status"])
    folder = write_institution(frame, tmp_path / "bank", holdout_fraction=0.5, seed=1)
    node = load_node_data(folder, "sme")
    holdout = pd.read_csv(folder / "holdout.csv")
    assert node.holdout is not None and node.holdout_groups is not None
    assert node.holdout_groups.shape == (len(node.holdout), 3)
    expected = group_index(holdout, protected_attributes(node.schema))
    assert np.array_equal(node.holdout_groups, expected)
    assert (node.holdout_groups[:, 2] == 3).all() and (node.holdout_groups[:, :2] < 3).all()
    # protected columns stay out of the model's inputs
    assert not {"owner_age", "owner_gender"} & set(
        node.holdout.layout.numeric + node.holdout.layout.categorical
    )


def test_a_node_answers_the_fairness_round_once_with_fractions_of_its_holdout(
    tmp_path: Path, applicants: pd.DataFrame
) -> None:
    node = load_node_data(write_institution(applicants.head(600), tmp_path / "bank", 0.3, seed=2), "sme")
    assert node.holdout is not None and node.holdout.label is not None and node.holdout_groups is not None
    layout = FeatureLayout.from_schema(node.schema)
    model = FourDimensionModel(layout, ModelConfig())
    model.set_normalization(NormStats(np.zeros(len(layout.numeric)), np.ones(len(layout.numeric))))
    request = TrainingRequest(
        "r1", "credit_underwriting", "sme", node.schema.version, layout.features(), "fedavg", 2, 2, False
    )
    signed = sign_request(request, load_private_key(DEMO_COORDINATOR_KEY))
    config = {
        P.PHASE: P.PHASE_FAIRNESS,
        P.SCHEMA_NAME: "sme",
        P.SCHEMA_VERSION: node.schema.version,
        P.TRAINING_REQUEST: signed.to_wire(),
        P.HIDDEN: ModelConfig().hidden,
        P.EMBEDDING_DIM: ModelConfig().embedding_dim,
        P.NORM_MEAN: P.encode_vector(np.zeros(len(layout.numeric))),
        P.NORM_STD: P.encode_vector(np.ones(len(layout.numeric))),
        P.APPROVE_BELOW_PD: CUTOFF,
    }
    attributes = protected_attributes(node.schema)
    client = CreditNodeClient(node, Ed25519PrivateKey.generate(), 7)
    (vector,), weight, _ = client.fit(trainable_weights(model), config)  # type: ignore[arg-type]
    expected = node_vector(
        predict_proba(model, node.holdout), node.holdout.label, node.holdout_groups, attributes, CUTOFF
    )
    assert weight == len(node.holdout) and np.array_equal(vector, expected)
    # without holdout rows: zeros with weight 1, which change no sum
    empty = CreditNodeClient(dataclasses.replace(node, holdout=None, holdout_groups=None), client.key, 7)
    (vector,), weight, _ = empty.fit(trainable_weights(model), config)  # type: ignore[arg-type]
    assert weight == 1 and vector.shape == (vector_length(attributes),) and not vector.any()

    # the node's policy guard lets the fairness figures leave once per run, before the reference
    limits, now = JoinLimits(60, 24), dt.datetime.now(dt.UTC)
    done = {(STATS, 0), (TRAIN, 1), (TRAIN, 2)}
    assert contribution_problem(signed, FAIRNESS, 0, signed.digest, done, now, limits) is None
    again = contribution_problem(signed, FAIRNESS, 0, signed.digest, done | {(FAIRNESS, 0)}, now, limits)
    assert again is not None and again[0] == "deny.contribution_repeated"
    late = contribution_problem(signed, FAIRNESS, 0, signed.digest, done | {(REFERENCE, 0)}, now, limits)
    assert late is not None and late[0] == "deny.run_finished"
