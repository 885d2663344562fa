"""The registry through the service and the CLI: versions, the active one, promotion, rollback, a changed file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coordinator.cli import app
from coordinator.service.settings import ServiceSettings
from coordinator.service.state import ServiceError, ServiceState
from policies.demo_keys import DEMO_COORDINATOR_KEY, EXAMPLES
from policies.registry import active_version
from tests.audit_db import session_on

from .conftest import FEDERATION, TRUST, body, register_model

runner = CliRunner()


def _wait_for(service, version: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(50):
        answer = service.client.post("/v1/scores", json=body(), headers=service.headers("national_bank"))
        if answer.status_code == 200 and answer.json()["model"]["version"] == version:
            return
        time.sleep(0.1)
    raise AssertionError(f"the service never served {version}")


def test_admins_promote_and_roll_back_and_the_service_follows(start_service, trained) -> None:  # type: ignore[no-untyped-def]
    service = start_service()
    register_model(service.url, trained, service.folder / "runs", run_id="run-2")
    listed = service.client.get("/v1/models", headers=service.headers("national_bank")).json()
    assert [(v["version"], v["active"]) for v in listed["versions"]] == [("v1", True), ("v2", False)]
    card = service.client.get("/v1/models/v2", headers=service.headers("national_bank")).json()
    assert card["summary"]["run_id"] == "run-2" and card["summary"]["schema"]["name"] == "sme"
    assert service.client.get("/v1/models/v9", headers=service.headers("national_bank")).status_code == 404

    promoted = service.client.post("/v1/models/v2/promote", headers=service.headers("coordinator"))
    assert promoted.status_code == 200, promoted.text
    chain = service.client.get("/v1/audit/verify", headers=service.headers("consortium_auditor")).json()
    assert chain["intact"] and chain["unsigned"] == 0, chain  # the promotion is signed at once
    _wait_for(service, "v2")
    again = service.client.post("/v1/models/v2/promote", headers=service.headers("coordinator"))
    assert again.status_code == 409 and "already the active version" in again.json()["detail"]

    result = runner.invoke(app, ["models", "rollback", "--db", service.url])
    assert result.exit_code == 0, result.output
    assert "rolled back to v1" in result.output
    # the command line's rollback left its entry unsigned; the running service signs it when it
    # polls (checked before any query, whose commit would sign the head anyway)
    for _ in range(50):
        chain = service.client.get("/v1/audit/verify", headers=service.headers("consortium_auditor")).json()
        if chain["intact"]:
            break
        time.sleep(0.1)
    assert chain["intact"] and chain["unsigned"] == 0, chain
    _wait_for(service, "v1")
    listed = runner.invoke(app, ["models", "list", "--db", service.url, "--json"])
    rows = json.loads(listed.stdout)["versions"]
    assert [(r["version"], r["active"]) for r in rows] == [("v1", True), ("v2", False)]
    trail = service.client.get(
        "/v1/audit/entries", params={"action": "model.promote"}, headers=service.headers("consortium_auditor")
    )
    assert [e["actor"] for e in trail.json()["entries"]] == ["test", "admin:coordinator"]


def test_a_changed_weights_file_is_refused_and_nothing_is_scored(start_service) -> None:  # type: ignore[no-untyped-def]
    service = start_service()
    assert service.client.get("/readyz").status_code == 200
    model_file = next((service.folder / "runs").glob("*/model.pt"))
    data = bytearray(model_file.read_bytes())
    data[-200] ^= 0xFF
    model_file.write_bytes(bytes(data))
    # the running service keeps its verified copy; a fresh one refuses the file
    fresh = start_service(register=False)
    ready = fresh.client.get("/readyz")
    assert ready.status_code == 503 and "sha256" in ready.json()["detail"]
    refused = fresh.client.post("/v1/scores", json=body(), headers=fresh.headers("national_bank"))
    assert refused.status_code == 503 and refused.json()["type"].endswith("/no-model")
    result = runner.invoke(app, ["models", "promote", "v1", "--db", service.url])
    assert result.exit_code == 2 and "sha256" in result.stderr


def test_no_model_yet_means_not_ready_and_no_score(start_service) -> None:  # type: ignore[no-untyped-def]
    service = start_service(register=False)
    assert service.client.get("/healthz").json() == {"status": "ok"}
    ready = service.client.get("/readyz")
    assert ready.status_code == 503 and "no active model version" in ready.json()["detail"]
    with session_on(service.url) as session:
        assert active_version(session, FEDERATION) is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("tamper", "sha256"),
        ("demo", "demo key"),
        ("stranger", "not a coordinator key"),
        ("untrusted", "does not trust"),
    ],
)
def test_the_service_does_not_start_on_a_policy_or_key_it_cannot_trust(
    tmp_path: Path, change: str, expected: str
) -> None:
    policy = tmp_path / "sme_consortium.toml"
    for name in (
        "sme_consortium.toml",
        "sme_consortium.toml.manifest.json",
        "sme_consortium.toml.manifest.sig",
    ):
        (tmp_path / name).write_bytes((EXAMPLES / name).read_bytes())
    settings = {
        "federation_policy": policy,
        "trust": TRUST,
        "coordinator_key": DEMO_COORDINATOR_KEY,
        "allow_demo_keys": True,
        "database_url": f"sqlite:///{tmp_path / 'db.sqlite'}",
    }
    if change == "tamper":
        policy.write_text(
            policy.read_text().replace("requests_per_minute = 600", "requests_per_minute = 60000")
        )
    elif change == "demo":
        settings["allow_demo_keys"] = False
    elif change == "stranger":
        settings["coordinator_key"] = EXAMPLES / "keys" / "demo_national_bank.key"
    else:
        settings["trust"] = EXAMPLES / "keys" / "demo_national_bank.pub"
    with pytest.raises(ServiceError) as refused:
        ServiceState(ServiceSettings(**settings))  # type: ignore[arg-type]
    assert expected in str(refused.value) and "\n" not in str(refused.value)


def test_the_models_commands_say_what_is_missing_in_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    for args in (["models", "list"], ["models", "show"], ["models", "rollback"], ["models", "promote", "v1"]):
        result = runner.invoke(app, [*args, "--db", url])
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
        assert "no model version yet" in result.stderr
