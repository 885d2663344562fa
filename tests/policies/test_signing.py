from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from policies.documents import PolicyError
from policies.signing import SignatureError, generate_keypair, read_public_keys, sign_policy, verify_policy

from .conftest import pub

TODAY = dt.date(2026, 11, 28)


def test_signed_example_verifies(examples: Path) -> None:
    verified = verify_policy(examples / "national_bank.toml", [pub("national_bank")], today=TODAY)
    assert verified.policy.header.id == "policy.national_bank"
    assert verified.signed_by == pub("national_bank")


def test_unsigned_policy_is_refused(examples: Path) -> None:
    (examples / "national_bank.toml.manifest.sig").unlink()
    with pytest.raises(SignatureError, match="unsigned policy"):
        verify_policy(examples / "national_bank.toml", [pub("national_bank")], today=TODAY)


def test_one_byte_changed_after_signing_is_refused(examples: Path) -> None:
    path = examples / "national_bank.toml"
    data = bytearray(path.read_bytes())
    i = data.index(b"min_local_records = 1000") + len("min_local_records = ")
    data[i] = ord("0")  # 1000 -> 0000
    path.write_bytes(bytes(data))
    with pytest.raises(SignatureError, match="modified after signing"):
        verify_policy(path, [pub("national_bank")], today=TODAY)


def test_tampered_manifest_is_refused(examples: Path) -> None:
    manifest = examples / "national_bank.toml.manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"format_version":1', b'"format_version":2'))
    with pytest.raises(SignatureError, match="signature does not match the manifest"):
        verify_policy(examples / "national_bank.toml", [pub("national_bank")], today=TODAY)


def test_untrusted_signer_is_refused(examples: Path) -> None:
    with pytest.raises(SignatureError, match="which this node does not trust"):
        verify_policy(examples / "national_bank.toml", [pub("online_bank")], today=TODAY)


def test_expired_and_not_yet_effective(examples: Path) -> None:
    path = examples / "national_bank.toml"
    with pytest.raises(PolicyError, match="expired on 2027-12-31"):
        verify_policy(path, [pub("national_bank")], today=dt.date(2028, 1, 1))
    with pytest.raises(PolicyError, match="is not effective before 2026-01-01"):
        verify_policy(path, [pub("national_bank")], today=dt.date(2025, 6, 1))


def test_sign_then_verify_with_new_keys(examples: Path, tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path / "k", "officer", comment="test")
    with pytest.raises(SignatureError, match="refusing to overwrite"):
        generate_keypair(tmp_path / "k", "officer")
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    sign_policy(examples / "online_bank.toml", private)
    verify_policy(examples / "online_bank.toml", read_public_keys(public), today=TODAY)


def test_signing_refuses_an_invalid_policy(examples: Path, tmp_path: Path) -> None:
    path = examples / "online_bank.toml"
    path.write_text(path.read_text().replace("\nversion = 1", "\nversion = -1"))
    with pytest.raises(PolicyError, match="version: must be a finite number > 0"):
        sign_policy(path, examples / "keys" / "demo_online_bank.key")
