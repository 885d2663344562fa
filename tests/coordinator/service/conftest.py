"""A scoring service on a real database (SQLite and PostgreSQL) with a trained, registered model."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from coordinator.service.app import create_app
from coordinator.service.settings import ServiceSettings
from federation.hyperparameters import TrainConfig
from federation.loading import encode_frame
from federation.model import FourDimensionModel, save_model
from federation.normalization import local_moments, stats_from_moments
from federation.schema import Schema
from federation.training import mean_raw_contributions, train_local
from policies.demo_keys import DEMO_COORDINATOR_KEY, EXAMPLES
from policies.documents import load_policy
from policies.member_keys import issue
from policies.registry import Registration, register
from policies.signing import sign_policy
from tests.audit_db import session_on
from tests.federation.model_helpers import card_for_tests

POLICY = EXAMPLES / "sme_consortium.toml"
TRUST = EXAMPLES / "keys" / "demo_consortium.pub"
SIGNER = EXAMPLES / "keys" / "demo_consortium.key"
FEDERATION = "federation.sme-consortium"


@pytest.fixture(scope="session")
def trained(sme_frame: pd.DataFrame, sme_schema: Schema) -> FourDimensionModel:
    """A small model trained on synthetic SME rows (a few seconds)."""
    data = encode_frame(sme_frame, sme_schema, "sme")
    torch.manual_seed(0)  # the initial weights too: the same model whatever ran before in this worker
    model = FourDimensionModel(data.layout)
    model.set_normalization(stats_from_moments(local_moments(data.numeric)))
    train_local(model, data, TrainConfig(epochs=4, batch_size=128, learning_rate=0.01), seed=3)
    model.set_reference(mean_raw_contributions(model, data))
    return model


def write_policy(folder: Path, **scoring: str) -> Path:
    """The demo federation policy with ``scoring`` keys replaced (TOML values), re-signed."""
    text = POLICY.read_text()
    for key, value in scoring.items():
        lines = [line for line in text.splitlines() if not line.startswith(f"{key} =")]
        at = lines.index("[scoring]") + 1
        lines.insert(at, f"{key} = {value}")
        text = "\n".join(lines) + "\n"
    path = folder / "federation.toml"
    path.write_text(text)
    sign_policy(path, SIGNER)
    return path


def register_model(url: str, model: FourDimensionModel, folder: Path, run_id: str = "run-1") -> str:
    """Save ``model`` under ``folder/run_id`` and register it; returns its version label."""
    card = card_for_tests(run_id=run_id, institutions=("national_bank", "online_bank"))
    path = folder / run_id / "model.pt"
    sha = save_model(model, path, card)
    policy = load_policy(POLICY)
    with session_on(url) as session:
        version = register(
            session,
            Registration(
                federation=FEDERATION,
                run_id=run_id,
                model_path=str(path),
                model_sha256=sha,
                schema_name=card.schema_name,
                schema_version=card.schema_version,
                schema_sha256=card.schema_sha256 or "",
                federation_policy_sha256=policy.sha256,
                institutions=(("national_bank", None), ("online_bank", None)),
                rounds=3,
                metrics={"global": {"auc": 0.75}, "institutions": {}},
                epsilon=None,
                demo=True,
            ),
            actor="test",
        )
        session.commit()
        return version.label


@dataclass
class Service:
    client: TestClient
    url: str
    tokens: dict[str, str]
    folder: Path

    def headers(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


def issue_token(url: str, policy_path: Path, member: str, role: str) -> str:
    policy = load_policy(policy_path)
    with session_on(url) as session:
        token, _ = issue(session, policy, member, role, actor="test")  # type: ignore[arg-type]
        session.commit()
    return token


HOLDERS = {
    "national_bank": "member",
    "online_bank": "member",
    "city_bank_east": "member",
    "consortium_auditor": "auditor",
    "coordinator": "admin",
}


@pytest.fixture
def start_service(
    db_url: str, tmp_path: Path, trained: FourDimensionModel
) -> Iterator[Callable[..., Service]]:
    """Start the service (lifespan and all) on ``db_url`` with a registered model and a token per holder."""
    clients: list[TestClient] = []

    def start(policy: Path | None = None, register: bool = True, **settings: object) -> Service:
        policy = policy or write_policy(tmp_path)
        if register:
            register_model(db_url, trained, tmp_path / "runs")
        tokens = {name: issue_token(db_url, policy, name, role) for name, role in HOLDERS.items()}
        options: dict[str, object] = {"key_cache_seconds": 0.0, "model_poll_seconds": 0.2, **settings}
        app = create_app(
            ServiceSettings(
                federation_policy=policy,
                trust=TRUST,
                coordinator_key=DEMO_COORDINATOR_KEY,
                allow_demo_keys=True,
                database_url=db_url,
                **options,  # type: ignore[arg-type]
            )
        )
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return Service(client, db_url, tokens, tmp_path)

    yield start
    for client in clients:
        client.__exit__(None, None, None)


COUPLE = {
    "business_id": "grocery-couple",
    "monthly_revenue": 52000,
    "revenue_growth": 0.04,
    "cashflow_volatility": 0.18,
    "months_in_business": 96,
    "monthly_transactions": 2100,
    "platform_orders": None,
    "requested_amount": 100000,
    "bureau_delinquencies_24m": 0,
    "open_loans": 0,
    "credit_utilization": 0.15,
    "tax_compliance_rate": 1.0,
    "contract_fulfilment_rate": 1.0,
    "has_collateral": 0,
    "settlement_regularity": 0.95,
    "utility_ontime_rate": 1.0,
    "utility_history_months": 60,
    "consumption_volatility": 0.22,
    "industry": "retail_grocery",
    "industry_cycle_index": 0.2,
    "region": "inland_city",
    "regional_economy_index": -0.2,
    "supply_chain_position": "end_consumer",
}


def body(
    applicant: dict[str, object] | None = None,
    purpose: str = "credit_underwriting",
    consent: str | None = "consent-1",
) -> dict[str, object]:
    out: dict[str, object] = {"purpose": purpose, "applicant": applicant or COUPLE}
    if consent is not None:
        out["consent_reference"] = consent
    return out
