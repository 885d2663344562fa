"""The auditor's commands, run through the `fedcredit` CLI."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from typer.testing import CliRunner

from coordinator.cli import app
from policies.audit import create_audit_engine, record, sign_current_head
from policies.decisions import SignedRequest, TrainingRequest
from policies.signing import canonical_json, load_private_key, public_key_text, sign_bytes

runner = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


def test_keys_sign_verify_and_key_change_audited(examples: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'audit.db'}"
    code, out = _run("keys", "generate", "officer", "--out", str(tmp_path / "keys"), "--db", db)
    assert code == 0 and "public key" in out
    policy = examples / "online_bank.toml"
    assert _run("policy", "sign", str(policy), "--key", str(tmp_path / "keys" / "officer.key"))[0] == 0
    code, out = _run("policy", "verify", str(policy), "--trust", str(tmp_path / "keys" / "officer.pub"))
    assert code == 0 and "valid: policy.online_bank v1" in out
    code, out = _run(
        "policy", "verify", str(policy), "--trust", str(examples / "keys" / "demo_online_bank.pub")
    )
    assert code == 2 and "which this node does not trust" in out
    code, out = _run("audit", "export", "--jsonl", "-", "--db", db)
    assert '"action":"key.generate"' in out and "officer:" in out


def test_show_reads_like_a_summary(examples: Path) -> None:
    code, out = _run("policy", "show", str(examples / "coastal_credit_union.toml"))
    assert code == 0
    assert "data may be used for: risk_monitoring" in out
    assert "never used: owner_age, owner_gender, owner_marital_status" in out
    code, out = _run("policy", "show", str(examples / "sme_consortium.toml"))
    assert code == 0 and "members: coordinator (coordinator" in out


def test_diff_in_words(examples: Path, tmp_path: Path) -> None:
    old = examples / "national_bank.toml"
    new = tmp_path / "national_bank_v2.toml"
    text = (
        old.read_text()
        .replace("\nversion = 1", "\nversion = 2")
        .replace("min_local_records = 1000", "min_local_records = 500")
        .replace("expires = 2027-12-31", "expires = 2028-06-30")
    )
    new.write_text(text.replace('["credit_underwriting", "risk_monitoring"]', '["credit_underwriting"]'))
    code, out = _run("policy", "diff", str(old), str(new))
    assert code == 0
    assert "header.version: 1 -> 2" in out
    assert "min_local_records: 1000 -> 500" in out
    assert "header.expires: 2027-12-31 -> 2028-06-30" in out and "datetime" not in out
    assert "allowed_purposes: removed ['risk_monitoring']" in out


def test_explain_names_the_rules(examples: Path, tmp_path: Path) -> None:
    request = tmp_path / "req.json"
    key = str(examples / "keys" / "demo_coordinator.key")
    assert _run("policy", "request", str(request), "--key", key, "--purpose", "credit_underwriting")[0] == 0
    code, out = _run(
        "policy",
        "explain",
        str(examples / "coastal_credit_union.toml"),
        "--request",
        str(request),
        "--trust",
        str(examples / "keys"),
        "--today",
        "2026-11-28",
    )
    assert code == 1  # a DENY is not a success
    assert "DENY under policy.coastal_credit_union v1" in out
    assert "forbid.purpose_not_allowed: purpose 'credit_underwriting' is not among ['risk_monitoring']" in out
    code, out = _run(
        "policy",
        "explain",
        str(examples / "national_bank.toml"),
        "--request",
        str(request),
        "--trust",
        str(examples / "keys"),
        "--today",
        "2026-11-28",
    )
    assert code == 0 and "PERMIT" in out and "permit.purpose_allowed" in out


def test_audit_verify_exit_codes(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'a.db'}"
    key = Ed25519PrivateKey.generate()
    trust = tmp_path / "coordinator.pub"
    trust.write_text(public_key_text(key.public_key()) + "\n")
    engine = create_audit_engine(db)
    for i in range(3):
        record(engine, actor="t", action="a", resource=str(i))
    sign_current_head(engine, key)
    code, out = _run("audit", "verify", "--db", db, "--trust", str(trust))
    assert code == 0 and "intact: 3 entries checked; last signed head at entry 3" in out
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_entry SET actor = 'x' WHERE seq = 2"))
    code, out = _run("audit", "verify", "--db", db, "--trust", str(trust))
    assert code == 2 and "entry 2 was modified" in out


def _request(examples: Path, tmp_path: Path, purpose: str, name: str = "req.json") -> Path:
    request = tmp_path / name
    key = str(examples / "keys" / "demo_coordinator.key")
    assert _run("policy", "request", str(request), "--key", key, "--purpose", purpose)[0] == 0
    return request


def _explain(policy: Path, request: Path, trust: Path) -> tuple[int, str]:
    args = ["policy", "explain", str(policy), "--request", str(request), "--trust", str(trust)]
    result = runner.invoke(app, [*args, "--today", "2026-11-28"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output.strip()


def test_explain_verifies_the_policy_as_the_node_does(examples: Path, tmp_path: Path) -> None:
    policy, keys = examples / "national_bank.toml", examples / "keys"
    request = _request(examples, tmp_path, "collections")
    code, out = _explain(policy, request, keys)
    assert code == 1 and out.startswith("DENY under policy.national_bank v1")
    # the careless (or dishonest) officer widens the purposes after signing: the node refuses it
    policy.write_text(policy.read_text().replace('"risk_monitoring"]', '"risk_monitoring", "collections"]'))
    code, out = _explain(policy, request, keys)
    assert code == 2 and len(out.splitlines()) == 1 and "PERMIT" not in out
    assert out.startswith(f"error: {policy}: modified after signing")


def test_explain_refuses_unsigned_and_untrusted_policies(examples: Path, tmp_path: Path) -> None:
    request = _request(examples, tmp_path, "credit_underwriting")
    policy = examples / "national_bank.toml"
    code, out = _explain(policy, request, examples / "keys" / "demo_coordinator.pub")
    assert code == 2 and "which this node does not trust" in out and len(out.splitlines()) == 1
    (examples / "national_bank.toml.manifest.sig").unlink()
    code, out = _explain(policy, request, examples / "keys")
    assert code == 2 and f"error: {policy}: unsigned policy" in out and len(out.splitlines()) == 1


def test_explain_turns_a_malformed_request_into_one_line(examples: Path, tmp_path: Path) -> None:
    request = _request(examples, tmp_path, "credit_underwriting")
    wire = json.loads(request.read_text())
    del wire["request"]["purpose"]
    request.write_text(json.dumps(wire))
    code, out = _explain(examples / "national_bank.toml", request, examples / "keys")
    assert code == 2 and out.startswith("error: malformed training request") and len(out.splitlines()) == 1


def test_request_mints_a_unique_run_id(examples: Path, tmp_path: Path) -> None:
    ids = [
        json.loads(_request(examples, tmp_path, "collections", f"r{i}.json").read_text())["request"]["run_id"]
        for i in range(2)
    ]
    assert ids[0] != ids[1] and all(re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{12}", i) for i in ids)


def _sign_wire(request: TrainingRequest, examples: Path, out: Path, **payload_changes: object) -> Path:
    """A request the coordinator signs, payload changed as given (what no honest coordinator sends)."""
    key = load_private_key(examples / "keys" / "demo_coordinator.key")
    payload = request.payload() | payload_changes
    wire = {
        "request": payload,
        "signed_by": public_key_text(key.public_key()),
        "signature": sign_bytes(key, canonical_json(payload)),
    }
    out.write_bytes(canonical_json(wire))
    return out


@pytest.mark.parametrize("epsilon", ["0.0", "-1.0", "nan", "inf"])
def test_explain_refuses_a_signed_impossible_epsilon(examples: Path, tmp_path: Path, epsilon: str) -> None:
    """`policy explain` once answered PERMIT for these; a node refuses them as malformed."""
    signed = SignedRequest.from_wire(_request(examples, tmp_path, "credit_underwriting").read_bytes())
    request = _sign_wire(signed.request, examples, tmp_path / "bad.json", epsilon=epsilon)
    code, out = _explain(examples / "national_bank.toml", request, examples / "keys")
    assert code == 2 and "epsilon must be a finite number > 0" in out and "PERMIT" not in out


def test_explain_refuses_a_stale_request_as_the_node_would(examples: Path, tmp_path: Path) -> None:
    signed = SignedRequest.from_wire(_request(examples, tmp_path, "credit_underwriting").read_bytes())
    stale = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    request = _sign_wire(signed.request, examples, tmp_path / "old.json", issued_at=stale)
    code, out = _explain(examples / "national_bank.toml", request, examples / "keys")
    assert code == 1 and "DENY under policy.national_bank v1" in out and "deny.stale_request" in out


def test_a_garbage_trust_file_is_one_line_naming_it(examples: Path, tmp_path: Path) -> None:
    binary, wrong = tmp_path / "binary.pub", tmp_path / "wrong.pub"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    wrong.write_text("# the officer\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5\n")
    policy = str(examples / "national_bank.toml")
    code, out = _run("policy", "verify", policy, "--trust", str(binary))
    assert code == 2 and out == f"error: {binary}: not a public key file (not text)"
    code, out = _run("policy", "verify", policy, "--trust", str(wrong))
    assert code == 2 and out.startswith(f"error: {wrong}:2: not an Ed25519 public key")


def test_a_request_uses_secure_aggregation_unless_told_otherwise(examples: Path, tmp_path: Path) -> None:
    """As `simulate` does: `policy request` once defaulted to no secure aggregation."""
    request = json.loads(_request(examples, tmp_path, "credit_underwriting").read_text())["request"]
    assert request["secure_aggregation"] is True


def test_request_names_a_schema_file_by_its_name_and_version(examples: Path, tmp_path: Path) -> None:
    schema = tmp_path / "my_schema.toml"
    text = (Path(__file__).resolve().parents[2] / "federation" / "schemas" / "sme.toml").read_text()
    schema.write_text(text.replace('name = "sme"', 'name = "my_shops"').replace('"1.0.0"', '"2.1.0"'))
    key = str(examples / "keys" / "demo_coordinator.key")
    out = tmp_path / "r.json"
    assert _run("policy", "request", str(out), "--key", key, "--schema", str(schema))[0] == 0
    payload = json.loads(out.read_text())["request"]
    assert (payload["schema"], payload["schema_version"]) == ("my_shops", "2.1.0")
    code, message = _run(
        "policy",
        "request",
        str(tmp_path / "s.json"),
        "--key",
        key,
        "--schema",
        str(schema),
        "--schema-version",
        "1.0.0",
    )
    assert code == 2 and "schema my_shops is version 2.1.0" in message
    assert not (tmp_path / "s.json").exists()
