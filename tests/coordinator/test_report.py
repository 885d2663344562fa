"""The run report carries the model's card, and so does the model file it registers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from coordinator.recording import RoundLog
from coordinator.report import MODEL_FILE, REPORT_FILE, contributing_institutions, write_report
from coordinator.run_settings import RunSettings
from coordinator.server_app import RunOutcome
from federation.loading import encode_frame
from federation.model import FourDimensionModel, file_sha256, load_model
from federation.model_card import schema_sha256
from federation.schema import Schema, resolve_schema
from policies.audit import entries
from tests.audit_db import session_on

REQUEST = hashlib.sha256(b"the signed training request").hexdigest()
POLICY = hashlib.sha256(b"the federation policy").hexdigest()


def _outcome(sme_frame: pd.DataFrame, sme_schema: Schema) -> RunOutcome:
    data = encode_frame(sme_frame.head(200), sme_schema, "test")
    log = RoundLog()
    for server_round in (1, 2):  # bank_a and bank_b trained; bank_c only evaluated; bank_d refused
        for name in ("bank_a", "bank_b"):
            log.institution(name)["train_rows"] = 100
            log.round_entry(name, server_round)["train_loss"] = 0.5
        log.institution("bank_c")["holdout_rows"] = 20
        log.round_entry("bank_c", server_round).update(auc=0.7, loss=0.6)
        log.failures.append({"round": server_round, "stage": "fit", "reason": "refused"})
    log.institution("bank_d")
    log.central.append({"round": 2, "auc": 0.7, "loss": 0.6})
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    return RunOutcome(
        log=log,
        request_digest=REQUEST,
        model=FourDimensionModel(data.layout),
        test_scores=rng.random(200),
        test_labels=(rng.random(200) < 0.3).astype(np.float32),
    )


def test_only_institutions_that_trained_contributed(sme_frame: pd.DataFrame, sme_schema: Schema) -> None:
    assert contributing_institutions(_outcome(sme_frame, sme_schema)) == ("bank_a", "bank_b")
    assert contributing_institutions(RunOutcome()) == ()


@pytest.mark.parametrize("schema_ref", ["sme", "file"])
def test_the_report_and_the_model_file_carry_the_same_card(
    tmp_path: Path, sme_frame: pd.DataFrame, sme_schema: Schema, schema_ref: str
) -> None:
    schema = "sme"
    if schema_ref == "file":  # a schema given by path: the card names the schema, not the file
        schema = str(tmp_path / "my_schema.toml")
        Path(schema).write_text(
            (Path(__file__).resolve().parents[2] / "federation" / "schemas" / "sme.toml").read_text()
        )
    settings = RunSettings(
        schema=schema,
        run_id="run-report-test",
        audit_url=f"sqlite:///{tmp_path / 'audit.db'}",
        demo_keys=True,
        federation_policy_sha256=POLICY,
    )
    run_dir = tmp_path / "run"
    report = write_report(run_dir, settings.run_id, settings, _outcome(sme_frame, sme_schema), {})

    model, card = load_model(run_dir / MODEL_FILE, expected_sha256=report["model"]["sha256"])
    assert isinstance(model, FourDimensionModel)
    expected = resolve_schema("sme")
    assert (card.run_id, card.schema_name, card.schema_version) == (
        "run-report-test",
        expected.name,
        expected.version,
    )
    assert card.schema_sha256 == schema_sha256(expected)
    assert card.training_request_sha256 == REQUEST and card.federation_policy_sha256 == POLICY
    assert card.institutions == ("bank_a", "bank_b") and card.demo is True
    assert set(card.metrics) >= {"auc", "ks", "brier", "rows"} and card.metrics["rows"] == 200.0

    written = json.loads((run_dir / REPORT_FILE).read_text())
    sha = file_sha256(run_dir / MODEL_FILE)
    assert written["model"] == {
        "file": MODEL_FILE,
        "sha256": sha,
        "card": card.to_dict(),
        "federation": "local",
        "version": "v1",
    }
    assert report["model"] == written["model"]
    with session_on(settings.audit_url) as session:
        registered = [e for e in entries(session) if e.action == "model.register"]
    assert [(e.resource, e.input_sha256) for e in registered] == [(f"run-report-test/{MODEL_FILE}", sha)]
