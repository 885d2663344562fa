"""The auditor's commands, run through the `fedcredit` CLI."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from coordinator.cli import app

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
    )
    new.write_text(text.replace('["credit_underwriting", "risk_monitoring"]', '["credit_underwriting"]'))
    code, out = _run("policy", "diff", str(old), str(new))
    assert code == 0
    assert "header.version: 1 -> 2" in out
    assert "min_local_records: 1000 -> 500" in out
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
        "--today",
        "2026-11-28",
    )
    assert code == 0
    assert "DENY under policy.coastal_credit_union v1" in out
    assert "forbid.purpose_not_allowed: purpose 'credit_underwriting' is not among ['risk_monitoring']" in out
    code, out = _run(
        "policy",
        "explain",
        str(examples / "national_bank.toml"),
        "--request",
        str(request),
        "--today",
        "2026-11-28",
    )
    assert "PERMIT" in out and "permit.purpose_allowed" in out


def test_audit_verify_exit_codes(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'a.db'}"
    from policies.audit import create_audit_engine, record

    engine = create_audit_engine(db)
    for i in range(3):
        record(engine, actor="t", action="a", resource=str(i))
    code, out = _run("audit", "verify", "--db", db)
    assert code == 0 and "intact: 3 entries" in out
    with engine.begin() as conn:
        from sqlalchemy import text

        conn.execute(text("UPDATE audit_entry SET actor = 'x' WHERE seq = 2"))
    code, out = _run("audit", "verify", "--db", db)
    assert code == 2 and "entry 2 was modified" in out
