"""The consortium's PKI: a CA, the coordinator's TLS certificate, each institution's node key.

A PKI folder holds::

    ca.pem, ca.key                  the consortium CA (EC P-384); it signs the coordinator's certificate
    coordinator.pem, coordinator.key  the SuperLink's TLS certificate, for the host names and
                                    addresses given, and its key
    nodes/NAME.key, nodes/NAME.pub  an institution's SuperNode authentication key (NIST P-384, OpenSSH
                                    format: what ``flower-supernode --auth-supernode-private-key`` and
                                    ``flwr supernode register`` read)

Private keys are created 0600 and never printed; everything is made in memory first and written
with temporary names renamed into place, so a failure leaves no half-made PKI. Nodes hold
``ca.pem`` (to check the coordinator) and their own key; only ``nodes/*.pub`` goes to the coordinator.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from federation.atomic_files import write_files
from federation.errors import FedCreditError

CA_DAYS = 3650
CERT_DAYS = 397  # what browsers accept for a server certificate; renew yearly
WARN_DAYS = 30
NODE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
DNS_NAME = re.compile(
    r"^(?=.{1,253}$)([a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9_]([a-zA-Z0-9_-]{0,61}[a-zA-Z0-9])?)*$"
)


class PkiError(FedCreditError):
    """A PKI folder or request that cannot be used; the message says what and where."""


@dataclass(frozen=True)
class PkiLayout:
    folder: Path

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def cert(self) -> Path:
        return self.folder / "coordinator.pem"

    @property
    def key(self) -> Path:
        return self.folder / "coordinator.key"

    @property
    def nodes(self) -> Path:
        return self.folder / "nodes"

    def node_key(self, name: str) -> Path:
        return self.nodes / f"{name}.key"

    def node_public_key(self, name: str) -> Path:
        return self.nodes / f"{name}.pub"


@dataclass(frozen=True)
class Item:
    """One file's state in ``fedcredit pki status``."""

    file: str
    what: str
    expires: str  # ISO date, or "" for a key without expiry
    days_left: int | None
    state: str  # ok | expiring | expired | invalid
    detail: str


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def host_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """The subject alternative names for ``hosts``: IP addresses as such, anything else a DNS name."""
    if not hosts:
        raise PkiError("give the coordinator's host names or addresses: --host NAME_OR_IP (one or more)")
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not DNS_NAME.match(host):
                raise PkiError(f"--host {host!r} is neither an IP address nor a DNS name") from None
            names.append(x509.DNSName(host.lower()))
    return names


def _name(common: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def init_pki(
    folder: Path,
    hosts: Sequence[str],
    *,
    organization: str = "FedCredit consortium",
    ca_days: int = CA_DAYS,
    cert_days: int = CERT_DAYS,
) -> PkiLayout:
    """Make the CA and the coordinator's TLS certificate in ``folder`` (refused if one is there)."""
    layout = PkiLayout(folder)
    for existing in (layout.ca_key, layout.ca_cert, layout.key, layout.cert):
        if existing.exists():
            raise PkiError(
                f"{existing} exists: this folder already holds a PKI (certificates issued from it would "
                "stop working); use another --dir or remove it deliberately"
            )
    if not 1 <= cert_days <= ca_days:
        raise PkiError(f"--days must be between 1 and the CA's {ca_days} days, got {cert_days}")
    alternative = host_names(hosts)
    now = _now()
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _name(f"{organization} CA", organization)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=ca_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(str(hosts[0]), organization))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=cert_days))
        .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA384())
    )
    pem = serialization.Encoding.PEM
    write_files(
        [
            (layout.ca_key, _pem_key(ca_key), 0o600),
            (layout.key, _pem_key(key), 0o600),
            (layout.ca_cert, ca_cert.public_bytes(pem), 0o644),
            (layout.cert, cert.public_bytes(pem), 0o644),
        ]
    )
    return layout


def add_node(folder: Path, name: str) -> tuple[Path, Path]:
    """Make institution ``name``'s SuperNode key pair; (private key, public key) paths."""
    layout = PkiLayout(folder)
    if not layout.ca_cert.is_file():
        raise PkiError(f"{folder} holds no PKI (no ca.pem): run `fedcredit pki init` first")
    if not NODE_NAME.match(name):
        raise PkiError(
            f"node name {name!r}: use 1-63 lower-case letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    private, public = layout.node_key(name), layout.node_public_key(name)
    if private.exists() or public.exists():
        raise PkiError(
            f"{private} exists: node {name!r} already has a key (remove it deliberately to replace it)"
        )
    key = ec.generate_private_key(ec.SECP384R1())
    write_files(
        [
            (
                private,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.OpenSSH,
                    serialization.NoEncryption(),
                ),
                0o600,
            ),
            (public, openssh_public(key.public_key()) + b"\n", 0o644),
        ]
    )
    return private, public


def openssh_public(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """The key's fingerprint exactly as ``ssh-keygen -l`` prints it (SHA256:base64)."""
    blob = base64.b64decode(openssh_public(key).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _expiry(cert: x509.Certificate, now: dt.datetime, warn_days: int) -> tuple[str, int, str]:
    left = cert.not_valid_after_utc - now
    days = left.days
    state = "expired" if left.total_seconds() <= 0 else "expiring" if days < warn_days else "ok"
    return cert.not_valid_after_utc.date().isoformat(), days, state


def _private_mode_problem(path: Path) -> str:
    mode = stat.S_IMODE(path.stat().st_mode)
    return f"readable by others (mode {mode:o}; chmod 600 {path.name})" if mode & 0o077 else ""


def status(folder: Path, warn_days: int = WARN_DAYS, now: dt.datetime | None = None) -> list[Item]:
    """Every certificate and key of the PKI in ``folder``: expiry, signature, permissions."""
    layout = PkiLayout(folder)
    if not layout.ca_cert.is_file():
        raise PkiError(f"{folder} holds no PKI (no ca.pem): run `fedcredit pki init` first")
    now = now or _now()
    items: list[Item] = []
    try:
        ca = x509.load_pem_x509_certificate(layout.ca_cert.read_bytes())
    except ValueError:
        raise PkiError(f"{layout.ca_cert}: not a PEM certificate") from None
    expires, days, state = _expiry(ca, now, warn_days)
    common = ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    items.append(
        Item("ca.pem", "consortium CA", expires, days, state, str(common[0].value) if common else "")
    )
    for path in (layout.ca_key, layout.key):
        if path.exists():
            problem = _private_mode_problem(path)
            items.append(
                Item(
                    path.name, "private key", "", None, "invalid" if problem else "ok", problem or "mode 600"
                )
            )
    if layout.cert.is_file():
        items.append(_coordinator_item(layout.cert, ca, now, warn_days))
    else:
        items.append(Item("coordinator.pem", "coordinator TLS certificate", "", None, "invalid", "missing"))
    if layout.nodes.is_dir():
        for private in sorted(layout.nodes.glob("*.key")):
            items.append(_node_item(private))
    return items


def _coordinator_item(path: Path, ca: x509.Certificate, now: dt.datetime, warn_days: int) -> Item:
    what = "coordinator TLS certificate"
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        return Item(path.name, what, "", None, "invalid", "not a PEM certificate")
    expires, days, state = _expiry(cert, now, warn_days)
    try:
        public = ca.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        algorithm = cert.signature_hash_algorithm
        assert algorithm is not None
        public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
    except (InvalidSignature, AssertionError):
        return Item(path.name, what, expires, days, "invalid", "not signed by this folder's CA")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        hosts = [str(n.value) for n in san]
    except x509.ExtensionNotFound:
        hosts = []
    return Item(path.name, what, expires, days, state, "for " + ", ".join(hosts))


def _node_item(private: Path) -> Item:
    what = "node authentication key"
    name = f"nodes/{private.name}"
    try:
        key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    except (ValueError, TypeError):
        return Item(name, what, "", None, "invalid", "not an unencrypted OpenSSH private key")
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP384R1):
        return Item(name, what, "", None, "invalid", "not a NIST P-384 key")
    problem = _private_mode_problem(private)
    public = private.with_suffix(".pub")
    if not public.is_file():
        problem = problem or f"{public.name} missing"
    elif public.read_bytes().strip() != openssh_public(key.public_key()):
        problem = problem or f"{public.name} does not match the private key"
    state = "invalid" if problem else "ok"
    return Item(name, what, "", None, state, problem or f"{fingerprint(key.public_key())}; no expiry")
