"""``fedcredit pki``: what Flower and OpenSSL accept, 0600 keys, expiry warnings, a careless operator."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.cli.supernode.register import try_load_public_key
from typer.testing import CliRunner

from coordinator.cli import app
from coordinator.pki import PkiError, PkiLayout, add_node, fingerprint, init_pki, status

runner = CliRunner()


def cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env={"COLUMNS": "250"})
    return result.exit_code, result.stdout, result.stderr


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def pki(tmp_path: Path) -> PkiLayout:
    return init_pki(tmp_path / "pki", ["coordinator.bank.example", "10.200.0.1"], cert_days=100)


def test_init_makes_a_ca_and_a_certificate_for_the_hosts(pki: PkiLayout) -> None:
    for key in (pki.ca_key, pki.key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(pki.cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["coordinator.bank.example"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.200.0.1"]
    assert cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < dt.timedelta(days=101)
    cert.verify_directly_issued_by(ca)
    # the certificate's key is the one next to it
    key = serialization.load_pem_private_key(pki.key.read_bytes(), password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(pki.ca_cert), str(pki.cert)], capture_output=True, text=True
    )
    assert verified.returncode == 0, verified.stderr


def test_node_key_is_what_flower_reads(pki: PkiLayout) -> None:
    private, public = add_node(pki.folder, "national_bank")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1)
    # `flwr supernode register` loads the public key with this function
    assert try_load_public_key(public) == key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    listed = subprocess.run(["ssh-keygen", "-l", "-f", str(public)], capture_output=True, text=True)
    assert listed.returncode == 0 and fingerprint(key.public_key()) in listed.stdout


def test_cli_round_trip_never_prints_a_private_key(tmp_path: Path) -> None:
    folder = tmp_path / "pki"
    code, out, err = cli("pki", "init", "--dir", str(folder), "--host", "localhost", "--host", "127.0.0.1")
    assert code == 0, err
    code, out2, err2 = cli("pki", "add-node", "rural_coop_17", "--dir", str(folder))
    assert code == 0, err2
    code, out3, err3 = cli("pki", "status", "--dir", str(folder))
    assert code == 0, err3
    assert "rural_coop_17.key" in out3 and "localhost, 127.0.0.1" in out3.replace("\n", " ")
    printed = out + err + out2 + err2 + out3 + err3
    secrets = [folder / "ca.key", folder / "coordinator.key", folder / "nodes" / "rural_coop_17.key"]
    assert "PRIVATE KEY" not in printed
    for secret in secrets:
        body = b"".join(secret.read_bytes().splitlines()[1:-1]).decode()
        assert body[:40] not in printed.replace("\n", "")


def test_a_second_init_or_node_changes_nothing(pki: PkiLayout) -> None:
    add_node(pki.folder, "national_bank")
    before = snapshot(pki.folder)
    code, _, err = cli("pki", "init", "--dir", str(pki.folder), "--host", "other.example")
    assert code == 2 and err.startswith("error: ") and "already holds a PKI" in err
    code, _, err = cli("pki", "add-node", "national_bank", "--dir", str(pki.folder))
    assert code == 2 and "already has a key" in err
    assert snapshot(pki.folder) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "bad host!"], "neither an IP address nor a DNS name"),
        (["--host", "a.example", "--days", "4000"], "--days must be between 1"),
    ],
)
def test_bad_init_is_one_line_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    folder = tmp_path / "pki"
    code, _, err = cli("pki", "init", "--dir", str(folder), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not folder.exists() or not any(folder.iterdir())


def test_add_node_needs_a_pki_and_a_plain_name(tmp_path: Path, pki: PkiLayout) -> None:
    with pytest.raises(PkiError, match="holds no PKI"):
        add_node(tmp_path / "nothing", "bank")
    for name in ("Bad Name", "../escape", "", "-dash"):
        with pytest.raises(PkiError, match="node name"):
            add_node(pki.folder, name)
    assert not pki.nodes.exists()


def test_status_warns_before_expiry_and_fails_after(pki: PkiLayout) -> None:
    states = {i.file: i.state for i in status(pki.folder, warn_days=30)}
    assert states["coordinator.pem"] == "ok"
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(days=80)
    assert {i.file: i.state for i in status(pki.folder, 30, now=soon)}["coordinator.pem"] == "expiring"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=120)
    assert {i.file: i.state for i in status(pki.folder, 30, now=later)}["coordinator.pem"] == "expired"
    code, _, err = cli("pki", "status", "--dir", str(pki.folder), "--warn-days", "200")
    assert code == 0 and "warning: coordinator.pem expires on" in err


def test_status_refuses_what_a_careless_operator_left(tmp_path: Path, pki: PkiLayout) -> None:
    add_node(pki.folder, "national_bank")
    os.chmod(pki.key, 0o644)  # a key readable by everyone on the host
    other = init_pki(tmp_path / "other", ["coordinator.bank.example"])
    pki.cert.write_bytes(other.cert.read_bytes())  # a certificate from another CA
    pki.node_public_key("national_bank").write_bytes(b"ecdsa-sha2-nistp384 AAAA mismatched\n")
    found = {i.file: (i.state, i.detail) for i in status(pki.folder)}
    assert found["coordinator.key"] == ("invalid", "readable by others (mode 644; chmod 600 coordinator.key)")
    assert (
        found["coordinator.pem"][0] == "invalid"
        and "not signed by this folder's CA" in found["coordinator.pem"][1]
    )
    assert found["nodes/national_bank.key"] == ("invalid", "national_bank.pub does not match the private key")
    code, _, err = cli("pki", "status", "--dir", str(pki.folder))
    assert code == 2 and err.startswith("error: ") and "coordinator.key: invalid" in err
