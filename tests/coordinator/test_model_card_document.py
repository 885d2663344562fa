"""The model card document: every section of Mitchell et al. in JSON and Markdown, its plots, its gaps."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from coordinator.model_card_document import (
    AUC_ROUNDS_PLOT,
    CALIBRATION_PLOT,
    CARD_JSON,
    CARD_MARKDOWN,
    FAIRNESS_PLOT,
    ROC_PLOT,
    SECTIONS,
    calibration_bins,
    card_document,
    card_files,
    dec,
    fairness_tables,
    group_gap,
    pct,
    plot_card,
    render_markdown,
    write_card,
)
from coordinator.recording import RoundLog
from coordinator.report import REPORT_FILE, write_report
from coordinator.run_settings import RunSettings
from coordinator.server_app import RunOutcome
from federation.loading import encode_frame
from federation.metrics import expected_calibration_error, score_metrics
from federation.model import FourDimensionModel
from federation.model_card import schema_sha256
from federation.schema import Schema

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REQUEST = hashlib.sha256(b"the signed training request").hexdigest()
POLICY = hashlib.sha256(b"the federation policy").hexdigest()
MODEL = hashlib.sha256(b"model.pt").hexdigest()
BANKS = {"national_bank": (972, 322), "online_bank": (346, 131), "rural_cooperative": (167, 62)}


def _test_set(rows: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    logit = rng.normal(-3.0, 1.2, rows)
    pd_ = 1 / (1 + np.exp(-logit))
    labels = (rng.random(rows) < np.clip(pd_ * 1.3, 0, 1)).astype(np.float32)
    return pd_, labels


def _report(schema: Schema, scores: np.ndarray | None, labels: np.ndarray | None) -> dict[str, Any]:
    final = None if scores is None or labels is None else score_metrics(labels, scores)
    institutions = {
        name: {
            "train_rows": train,
            "holdout_rows": holdout,
            "rounds": [
                {
                    "round": r,
                    "auc": 0.6 + 0.04 * r + 0.01 * i,
                    "ks": 0.2,
                    "brier": 0.05,
                    "ece": 0.02,
                    "default_rate": 0.04,
                    "rows": float(holdout),
                    "train_loss": 0.4,
                    "epsilon_spent": 1.0 * r,
                    "loss": 0.3,
                }
                for r in (1, 2, 3)
            ],
        }
        for i, (name, (train, holdout)) in enumerate(BANKS.items())
    }
    card = {
        "created_at": "2026-11-29T05:25:48+00:00",
        "demo": True,
        "federation_policy_sha256": POLICY,
        "institutions": sorted(BANKS),
        "metrics": final or {},
        "run_id": "20261129-052459-97622e058426",
        "schema_name": schema.name,
        "schema_sha256": schema_sha256(schema),
        "schema_version": schema.version,
        "training_request_sha256": REQUEST,
    }
    return {
        "dataset": "sme",
        "demo": "DEMO run: signed with FedCredit's published demo keys",
        "failures": [],
        "final_test_metrics": final,
        "institutions": institutions,
        "model": {"card": card, "file": "model.pt", "sha256": MODEL, "version": "v3", "federation": "sme"},
        "rounds": [
            {"round": r, "fit_seconds": 5.0, **({"auc": 0.65 + 0.03 * r} if final else {})} for r in (1, 2, 3)
        ],
        "run_id": card["run_id"],
        "settings": {
            "batch_size": 256,
            "client_dp": None,
            "delta": 1e-05,
            "demo_keys": True,
            "embedding_dim": 4,
            "epsilon": 3.0,
            "hidden": 32,
            "learning_rate": 0.003,
            "local_epochs": 1,
            "max_grad_norm": 1.0,
            "members": sorted(BANKS),
            "min_institutions": 3,
            "proximal_mu": None,
            "rounds": 3,
            "schema": "sme",
            "secure_aggregation": True,
            "seed": 0,
            "strategy": "fedavg",
        },
    }


# what federation.fairness.fairness_report returns (its own "gaps" left for the card to recompute)
FAIRNESS: dict[str, Any] = {
    "approve_below_pd": 0.05,
    "holdout_rows": 515,
    "min_group_rows": 30,
    "attributes": {
        "owner_gender": {
            "female": {"share": 0.46, "default_rate": 0.041, "approval_rate": 0.712, "auc": 0.701},
            "male": {"share": 0.54, "default_rate": 0.038, "approval_rate": 0.655, "auc": 0.744},
        },
        "owner_age": {
            "<35": {"share": 0.31, "default_rate": 0.052, "approval_rate": 0.581, "auc": 0.688},
            "35 to <55": {"share": 0.52, "default_rate": 0.035, "approval_rate": 0.734, "auc": 0.726},
            ">=55": {"share": 0.15, "default_rate": 0.030, "approval_rate": 0.778, "auc": None},
            "missing": {"share": 0.02, "default_rate": None, "approval_rate": None, "auc": None},
        },
    },
    "gaps": {"owner_gender": {"approval_rate": {"gap": 0.057, "lowest": "male", "highest": "female"}}},
}


def _outcome(report: dict[str, Any], scores: Any, labels: Any, fairness: Any) -> SimpleNamespace:
    log = SimpleNamespace(
        central=report["rounds"], institutions=report["institutions"], failures=report["failures"]
    )
    return SimpleNamespace(log=log, test_scores=scores, test_labels=labels, fairness=fairness)


@pytest.fixture(scope="module")
def full(sme_schema: Schema) -> tuple[dict[str, Any], dict[str, Any], str]:
    scores, labels = _test_set()
    report = _report(sme_schema, scores, labels)
    document = card_document(report, FAIRNESS, sme_schema)
    images = {"roc": ROC_PLOT, "calibration": CALIBRATION_PLOT, "fairness": FAIRNESS_PLOT}
    return report, document, render_markdown(document, images)


def test_every_section_is_in_the_json_and_the_markdown(
    full: tuple[dict[str, Any], dict[str, Any], str],
) -> None:
    report, document, markdown = full
    for key, heading in SECTIONS:
        assert document[key], key
        assert f"\n## {heading}\n" in markdown
    assert markdown.count("\n## ") == len(SECTIONS)
    json.dumps(document, allow_nan=False)  # JSON-ready: plain types, no NaN
    details = document["model_details"]
    assert details["run_id"] == report["run_id"]
    assert details["version"] == {
        "label": "v3",
        "federation": "sme",
        "model_file": "model.pt",
        "model_sha256": MODEL,
        "created_at": "2026-11-29T05:25:48+00:00",
    }
    assert details["schema"]["sha256"] == report["model"]["card"]["schema_sha256"]
    assert (details["federation_policy_sha256"], details["training_request_sha256"]) == (POLICY, REQUEST)
    assert details["differential_privacy"]["record_level"] == {
        "epsilon": 3.0,
        "delta": 1e-5,
        "max_grad_norm": 1.0,
    }
    assert details["secure_aggregation"] is True and details["demo"] is True
    assert details["training"]["rounds_completed"] == 3
    for text in (POLICY, REQUEST, MODEL, "epsilon 3, delta 1e-05", "on (SecAgg+)", "fedavg"):
        assert text in markdown
    assert "- marketing" in markdown and "without a person reviewing every decline" in markdown
    assert markdown.startswith("# Model card: FedCredit run 20261129-052459-97622e058426\n")
    assert "> **DEMO run" in markdown


def test_metrics_evaluation_and_training_data(full: tuple[dict[str, Any], dict[str, Any], str]) -> None:
    report, document, markdown = full
    final = report["final_test_metrics"]
    metrics = document["metrics"]
    assert metrics["final_test"] == pytest.approx({k: final[k] for k in metrics["final_test"]})
    for key in ("auc", "ks", "brier", "ece"):
        assert dec(final[key]) in markdown
    assert metrics["per_institution"]["online_bank"]["round"] == 3
    assert metrics["per_institution"]["online_bank"]["auc"] == pytest.approx(0.6 + 0.12 + 0.01)
    assert [r["round"] for r in metrics["per_round"]] == [1, 2, 3]
    assert metrics["per_round"][0]["test_auc"] == pytest.approx(0.68)
    assert metrics["per_round"][2]["holdout_auc"]["rural_cooperative"] == pytest.approx(0.74)
    evaluation = document["evaluation_data"]
    assert evaluation["test_set"]["rows"] == 2000
    assert evaluation["holdouts"]["rows"] == {n: h for n, (_, h) in BANKS.items()}
    assert evaluation["holdouts"]["total_rows"] == 515
    training = document["training_data"]
    assert {n: i["train_rows"] for n, i in training["institutions"].items()} == {
        n: t for n, (t, _) in BANKS.items()
    }
    assert training["total_train_rows"] == 972 + 346 + 167
    assert "never left the nodes" in training["data_locality"] and "never left the nodes" in markdown
    assert document["ethical_considerations"]["privacy"]["epsilon_spent"] == {n: 3.0 for n in BANKS}
    assert "| national_bank | 972 | 322 | yes |" in markdown


def test_fairness_numbers_and_gaps_in_json_and_markdown(
    full: tuple[dict[str, Any], dict[str, Any], str],
) -> None:
    _, document, markdown = full
    factors = document["factors"]
    assert factors["measured"] and "secure aggregation" in factors["source"]
    assert factors["groups"] == FAIRNESS["attributes"]
    assert (factors["approve_below_pd"], factors["holdout_rows"], factors["min_group_rows"]) == (
        0.05,
        515,
        30,
    )
    protected = {c["name"]: c for c in factors["protected_attributes"]}
    assert set(protected) == {"owner_age", "owner_gender", "owner_marital_status"}
    assert protected["owner_gender"]["groups"] == ["female", "male"]
    assert not any(c["model_input"] for c in protected.values())
    for attribute, groups in FAIRNESS["attributes"].items():
        for group, figures in groups.items():
            row = (
                f"| {group} | {pct(figures['share'])} | {pct(figures['default_rate'])} | "
                f"{pct(figures['approval_rate'])} | {dec(figures['auc'])} |"
            )
            assert row in markdown, (attribute, row)

    gender = factors["gaps"]["owner_gender"]
    assert gender["approval_rate"]["gap"] == pytest.approx(0.712 - 0.655)
    assert (gender["approval_rate"]["lowest"], gender["approval_rate"]["highest"]) == ("male", "female")
    assert gender["approval_rate"]["ratio"] == pytest.approx(0.655 / 0.712)
    assert gender["auc"]["gap"] == pytest.approx(0.744 - 0.701)
    age = factors["gaps"]["owner_age"]  # 'missing' and None values left out
    assert age["approval_rate"]["gap"] == pytest.approx(0.778 - 0.581)
    assert (age["approval_rate"]["lowest"], age["approval_rate"]["highest"]) == ("<35", ">=55")
    assert age["auc"]["gap"] == pytest.approx(0.726 - 0.688)
    assert (age["auc"]["lowest"], age["auc"]["highest"]) == ("<35", "35 to <55")
    assert pct(0.778 - 0.581) in markdown and dec(0.726 - 0.688) in markdown

    ethical = document["ethical_considerations"]
    rows = {r["attribute"]: r for r in ethical["disparities"]}
    assert rows["owner_age"]["approval_rate_gap"] == pytest.approx(0.197)
    assert (
        "owner_age: approval rate 58.1% for <35 against 77.8% for >=55 (gap 19.7%, ratio 0.75, below the four-fifths rule's 0.8)"
        in ethical["flagged"]
    )
    assert not any(f.startswith("owner_gender: approval") for f in ethical["flagged"])
    assert "are not model inputs" in ethical["protected_attributes_as_inputs"]


def test_gap_edge_cases_and_a_bare_fairness_table() -> None:
    assert group_gap({"a": {"auc": 0.7}, "b": {"auc": None}, "missing": {"auc": 0.1}}, "auc") is None
    assert group_gap({"a": {"approval_rate": 0.0}, "b": {"approval_rate": 0.0}}, "approval_rate") == {
        "gap": 0.0,
        "lowest": "a",
        "highest": "a",
        "low": 0.0,
        "high": 0.0,
        "ratio": None,
    }
    bare, meta = fairness_tables(FAIRNESS["attributes"])  # {attribute: {group: figures}} alone
    assert bare == FAIRNESS["attributes"] and meta == {}
    assert fairness_tables(None) == ({}, {})
    nan_figures = {"g": {"x": {"share": 1.0, "default_rate": math.nan, "approval_rate": np.float32(0.5)}}}
    assert fairness_tables(nan_figures)[0]["g"]["x"] == {
        "share": 1.0,
        "default_rate": None,
        "approval_rate": 0.5,
        "auc": None,
    }


def test_calibration_bins_are_the_ece_bins() -> None:
    scores, labels = _test_set(1003)
    predicted, observed, sizes = calibration_bins(labels.astype(np.float64), scores)
    assert sizes.sum() == 1003 and len(sizes) == 10
    assert np.all(np.diff(predicted) > 0)
    ece = float(np.sum(sizes / sizes.sum() * np.abs(observed - predicted)))
    assert ece == pytest.approx(expected_calibration_error(labels, scores))


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 8_000, path


def test_write_card_writes_the_json_markdown_and_plots(tmp_path: Path, sme_schema: Schema) -> None:
    scores, labels = _test_set()
    report = _report(sme_schema, scores, labels)
    outcome = _outcome(report, scores, labels, FAIRNESS)
    document = write_card(tmp_path, report, outcome, sme_schema, purposes=("credit_underwriting",))
    plots = {
        "roc": ROC_PLOT,
        "calibration": CALIBRATION_PLOT,
        "auc_rounds": AUC_ROUNDS_PLOT,
        "fairness": FAIRNESS_PLOT,
    }
    assert document["files"] == {"json": CARD_JSON, "markdown": CARD_MARKDOWN, "plots": plots}
    assert card_files(document) == [CARD_JSON, CARD_MARKDOWN, *plots.values()]
    for name in plots.values():
        _check_png(tmp_path / name)
    assert json.loads((tmp_path / CARD_JSON).read_text(encoding="utf-8")) == document
    markdown = (tmp_path / CARD_MARKDOWN).read_text(encoding="utf-8")
    assert markdown == render_markdown(document, plots)
    for name in plots.values():
        assert f"]({name})" in markdown
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(card_files(document))  # no temporary left


def test_missing_test_set_and_fairness_say_so_without_crashing(tmp_path: Path, sme_schema: Schema) -> None:
    report = _report(sme_schema, None, None)
    report["settings"].update(demo_keys=False, epsilon=None, secure_aggregation=False)
    report["model"]["card"].update(demo=False, federation_policy_sha256=None)
    report["demo"] = None
    report["failures"] = [{"round": 2, "stage": "fit", "reason": "refused", "institution": "online_bank"}]
    outcome = _outcome(report, None, None, None)
    document = write_card(tmp_path, report, outcome, sme_schema)
    assert document["files"]["plots"] == {"auc_rounds": AUC_ROUNDS_PLOT}  # holdout AUCs only
    _check_png(tmp_path / AUC_ROUNDS_PLOT)
    assert not (tmp_path / ROC_PLOT).exists() and not (tmp_path / FAIRNESS_PLOT).exists()
    assert document["metrics"]["final_test"] is None and document["evaluation_data"]["test_set"] is None
    factors = document["factors"]
    assert not factors["measured"] and factors["groups"] == {} and factors["gaps"] == {}
    assert "reported no per-group figures" in factors["not_measured_reason"]
    details = document["model_details"]
    assert details["differential_privacy"]["record_level"] is None and not details["demo"]
    markdown = (tmp_path / CARD_MARKDOWN).read_text(encoding="utf-8")
    for heading in (h for _, h in SECTIONS):
        assert f"## {heading}" in markdown
    assert "**Per-group figures: not measured**" in markdown
    assert "**Final test metrics: none**" in markdown
    assert "no record-level differential privacy" in markdown
    assert "none (sandbox run)" in markdown and "| DEMO | no |" in markdown and "DEMO run" not in markdown
    caveats = " ".join(document["caveats_and_recommendations"])
    assert "no coordinator test set" in caveats and "1 node failure" in caveats

    # nothing at all: no rounds, no institutions, no holdout rows, a schema without protected columns
    bare = {"run_id": "r", "settings": {}, "model": {}}
    unprotected = dataclasses.replace(
        sme_schema, columns=tuple(dataclasses.replace(c, protected=False) for c in sme_schema.columns)
    )
    empty = write_card(tmp_path / "empty", bare, SimpleNamespace(), unprotected)
    assert empty["files"]["plots"] == {}
    assert "marks no column protected" in empty["factors"]["not_measured_reason"]
    assert "## Factors" in (tmp_path / "empty" / CARD_MARKDOWN).read_text(encoding="utf-8")
    nothing = copy.deepcopy(report)
    for inst in nothing["institutions"].values():
        inst["holdout_rows"] = 0
    assert (
        "no node had holdout rows"
        in card_document(nothing, None, sme_schema)["factors"]["not_measured_reason"]
    )


def test_a_one_class_test_set_skips_the_test_plots(tmp_path: Path, sme_schema: Schema) -> None:
    scores = np.linspace(0.01, 0.2, 50)
    labels = np.zeros(50, dtype=np.float32)
    no_auc = {"rounds": [{"round": 1, "fit_seconds": 1.0}], "institutions": {"a": {"rounds": [{"round": 1}]}}}
    outcome = SimpleNamespace(test_scores=scores, test_labels=labels, fairness={"owner_gender": {}})
    assert plot_card(tmp_path, outcome, no_auc) == {}
    assert list(tmp_path.iterdir()) == []


def test_write_report_writes_the_card_and_lists_its_files(
    tmp_path: Path, sme_frame: pd.DataFrame, sme_schema: Schema
) -> None:
    data = encode_frame(sme_frame.head(100), sme_schema, "test")
    report = _report(sme_schema, None, None)  # no test set: the holdout AUCs' plot only, to stay quick
    outcome = RunOutcome(
        log=RoundLog(central=report["rounds"], institutions=report["institutions"]),
        request_digest=REQUEST,
        model=FourDimensionModel(data.layout),
    )
    settings = RunSettings(
        schema="sme", run_id="run-card-test", audit_url=f"sqlite:///{tmp_path / 'audit.db'}"
    )
    written = write_report(tmp_path / "run", settings.run_id, settings, outcome, {"dataset": "sme"})
    files = [CARD_JSON, CARD_MARKDOWN, AUC_ROUNDS_PLOT]
    assert written["card_files"] == files
    on_disk = json.loads((tmp_path / "run" / REPORT_FILE).read_text(encoding="utf-8"))
    assert on_disk["card_files"] == files
    assert all((tmp_path / "run" / name).is_file() for name in files)
    card = json.loads((tmp_path / "run" / CARD_JSON).read_text(encoding="utf-8"))
    assert card["model_details"]["version"]["model_sha256"] == written["model"]["sha256"]
    assert card["intended_use"]["purposes"] == ["credit_underwriting"]
    assert card["factors"]["measured"] is False  # this outcome carries no fairness figures
