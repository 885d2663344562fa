"""Ed25519 keys, signed policy manifests, and signatures over canonical payloads.

A signed policy is three files side by side::

    national_bank.toml                   the policy
    national_bank.toml.manifest.json     {"files": [{"path", "sha256"}], "signed_by", ...}
    national_bank.toml.manifest.sig      base64 Ed25519 signature over the manifest's exact bytes

A policy that fails any check is never activated.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from policies.documents import FederationPolicy, InstitutionPolicy, Policy, PolicyError, parse_policy

KEY_PREFIX = "ed25519:"
MANIFEST_SUFFIX = ".manifest.json"
SIGNATURE_SUFFIX = ".manifest.sig"
MANIFEST_FORMAT_VERSION = 1


class SignatureError(PolicyError):
    """A signature is missing, invalid, or made by a key nobody trusts."""


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(payload: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the exact bytes that get hashed and signed."""
    return _CANONICAL.encode(payload).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------
# keys


def public_key_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KEY_PREFIX + base64.b64encode(raw).decode("ascii")


def parse_public_key(text: str) -> Ed25519PublicKey:
    text = text.strip()
    if not text.startswith(KEY_PREFIX):
        raise SignatureError(f"not an Ed25519 public key (expected '{KEY_PREFIX}...'): {text[:30]!r}")
    try:
        raw = base64.b64decode(text[len(KEY_PREFIX) :], validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise SignatureError(f"malformed Ed25519 public key {text[:30]!r}: {exc}") from exc


def key_id(public_key: str) -> str:
    """Short fingerprint of a public key, for logs and messages."""
    return sha256_hex(public_key.strip().encode("ascii"))[:16]


def generate_keypair(
    directory: Path, name: str, comment: str = "", key: Ed25519PrivateKey | None = None
) -> tuple[Path, Path]:
    """Write ``name.key`` (private, PEM, mode 600) and ``name.pub``; refuses to overwrite.

    ``key``: a key made beforehand (e.g. to audit its id before the files exist); default a new one.
    """
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise SignatureError(f"{path} exists; refusing to overwrite a key")
    key = key or Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    private_path.touch(mode=0o600)
    private_path.write_bytes(pem)
    header = f"# {comment}\n" if comment else ""
    public_path.write_text(header + public_key_text(key.public_key()) + "\n", encoding="utf-8")
    return private_path, public_path


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise SignatureError(f"{path}: no private key here") from None
    except ValueError as exc:
        raise SignatureError(f"{path}: not a PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an Ed25519 key")
    return key


def read_public_keys(path: str | Path) -> tuple[str, ...]:
    """Public keys from a ``.pub`` file or a folder of them (lines starting with # are comments)."""
    path = Path(path)
    files = sorted(path.glob("*.pub")) if path.is_dir() else [path]
    keys = []
    for file in files:
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise SignatureError(f"{file}: no public key file here") from None
        except OSError as exc:
            raise SignatureError(f"{file}: cannot read public keys ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise SignatureError(f"{file}: not a public key file (not text)") from None
        for number, line in enumerate(lines, start=1):
            if line.strip() and not line.lstrip().startswith("#"):
                try:
                    parse_public_key(line)
                except SignatureError as exc:
                    raise SignatureError(f"{file}:{number}: {exc}") from None
                keys.append(line.strip())
    return tuple(keys)


def sign_bytes(key: Ed25519PrivateKey, data: bytes) -> str:
    return base64.b64encode(key.sign(data)).decode("ascii")


def verify_bytes(public_key: str, data: bytes, signature: str) -> bool:
    try:
        parse_public_key(public_key).verify(base64.b64decode(signature, validate=True), data)
    except (InvalidSignature, ValueError):
        return False
    return True


# ---------------------------------------------------------------------------
# signed policies


def manifest_paths(policy_path: Path) -> tuple[Path, Path]:
    return policy_path.with_name(policy_path.name + MANIFEST_SUFFIX), policy_path.with_name(
        policy_path.name + SIGNATURE_SUFFIX
    )


def sign_policy(
    policy_path: str | Path, private_key: str | Path, now: dt.datetime | None = None
) -> tuple[Path, Path]:
    """Check the policy, then write its manifest and the signature over the manifest's bytes."""
    policy_path = Path(policy_path)
    data = policy_path.read_bytes()
    parse_policy(data, str(policy_path))  # never sign a policy that would be refused
    key = load_private_key(private_key)
    manifest = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "files": [{"path": policy_path.name, "sha256": sha256_hex(data)}],
        "signed_by": public_key_text(key.public_key()),
        "signed_at": (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    manifest_bytes = canonical_json(manifest)
    manifest_path, signature_path = manifest_paths(policy_path)
    manifest_path.write_bytes(manifest_bytes)
    signature_path.write_text(sign_bytes(key, manifest_bytes) + "\n", encoding="ascii")
    return manifest_path, signature_path


@dataclass(frozen=True)
class VerifiedPolicy:
    policy: Policy
    signed_by: str
    signed_at: str


def verify_policy(
    policy_path: str | Path, trusted_keys: Collection[str], today: dt.date | None = None
) -> VerifiedPolicy:
    """Load a policy only if it is signed by a trusted key, unmodified, and in force.

    Raises :class:`PolicyError` (or :class:`SignatureError`) naming the reason.
    """
    policy_path = Path(policy_path)
    if not policy_path.is_file():
        raise PolicyError(f"{policy_path}: no policy file here; without a policy nothing is permitted")
    manifest_path, signature_path = manifest_paths(policy_path)
    if not manifest_path.is_file() or not signature_path.is_file():
        raise SignatureError(
            f"{policy_path}: unsigned policy (no {manifest_path.name} / {signature_path.name})"
        )
    manifest_bytes = manifest_path.read_bytes()
    try:
        manifest = json.loads(manifest_bytes)
        signer = str(manifest["signed_by"])
        files = {f["path"]: f["sha256"] for f in manifest["files"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"{manifest_path}: malformed manifest ({exc})") from exc
    if not verify_bytes(signer, manifest_bytes, signature_path.read_text(encoding="ascii").strip()):
        raise SignatureError(
            f"{signature_path}: signature does not match the manifest (tampered or corrupted)"
        )
    if signer not in set(trusted_keys):
        raise SignatureError(f"{policy_path}: signed by key {key_id(signer)}, which this node does not trust")
    data = policy_path.read_bytes()
    expected = files.get(policy_path.name)
    if expected is None:
        raise SignatureError(f"{manifest_path}: the manifest does not list {policy_path.name}")
    if sha256_hex(data) != expected:
        raise SignatureError(
            f"{policy_path}: modified after signing (sha256 {sha256_hex(data)[:12]}..., signed {expected[:12]}...)"
        )
    policy = parse_policy(data, str(policy_path))
    today = today or dt.date.today()
    if today > policy.header.expires:
        raise PolicyError(
            f"{policy_path}: policy {policy.header.id} v{policy.header.version} expired on {policy.header.expires}"
        )
    if today < policy.header.effective:
        raise PolicyError(
            f"{policy_path}: policy {policy.header.id} v{policy.header.version} is not effective before {policy.header.effective}"
        )
    return VerifiedPolicy(policy, signer, str(manifest.get("signed_at", "")))


P = TypeVar("P", InstitutionPolicy, FederationPolicy)


def verify_policy_of_kind(
    policy_path: str | Path,
    trusted_keys: Collection[str],
    kind: type[P],
    needed_by: str,
    today: dt.date | None = None,
) -> tuple[P, str]:
    """:func:`verify_policy`, and the policy must be of ``kind`` (``needed_by`` says who needs it);
    returns the policy and the key that signed it."""
    verified = verify_policy(policy_path, trusted_keys, today)
    if not isinstance(verified.policy, kind):
        wanted = "an institution" if kind is InstitutionPolicy else "a federation"
        raise PolicyError(
            f"{policy_path}: {needed_by} needs {wanted} policy, got a {verified.policy.kind} policy"
        )
    return verified.policy, verified.signed_by
