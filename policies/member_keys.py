"""Bearer tokens for the scoring service: issued once to a federation member with a role; only a hash is kept.

A token reads ``fck_<key id>_<secret>``. The key id finds the row; the sha256 of the whole
token must match the stored one (compared in constant time). Members score and decide,
auditors read the audit trail and policies, admins manage models.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlmodel import Field, Session, SQLModel, col, select

from policies.audit import append
from policies.documents import FederationPolicy

ROLES = ("member", "auditor", "admin")
# which federation-policy roles may hold which service role
_POLICY_ROLES = {"member": None, "auditor": ("auditor",), "admin": ("coordinator",)}
_TOKEN = re.compile(r"fck_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")


class TokenError(Exception):
    """A token cannot be issued or revoked as asked (one line)."""


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_key"

    id: int | None = Field(default=None, primary_key=True)
    key_id: str = Field(unique=True)
    token_sha256: str
    member: str
    role: str
    created_at: str
    revoked_at: str | None = None


@dataclass(frozen=True)
class Caller:
    """Who a request comes from."""

    member: str
    role: str
    key_id: str


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_holder(policy: FederationPolicy, member: str, role: str) -> None:
    """Refuse a token for someone the federation policy does not allow that role."""
    if role not in ROLES:
        raise TokenError(f"role {role!r} is not one of {list(ROLES)}")
    listed = policy.member(member)
    if listed is None:
        raise TokenError(f"{member!r} is not a member of federation policy {policy.header.id}")
    if role == "member" and member not in policy.scoring.allowed_members:
        raise TokenError(
            f"{member!r} is not in scoring.allowed_members of federation policy {policy.header.id}: "
            "it may not score"
        )
    allowed = _POLICY_ROLES[role]
    if allowed is not None and listed.role not in allowed:
        raise TokenError(
            f"{member!r} has the role {listed.role!r} in federation policy {policy.header.id}; "
            f"{'an' if role[:1] in 'aeiou' else 'a'} {role} token needs the role {' or '.join(allowed)}"
        )


def issue(
    session: Session, policy: FederationPolicy, member: str, role: str, actor: str
) -> tuple[str, ApiKey]:
    """A new token for ``member`` (audited in the caller's transaction); the token is returned once."""
    check_holder(policy, member, role)
    key_id = secrets.token_hex(8)
    token = f"fck_{key_id}_{secrets.token_urlsafe(32)}"
    row = ApiKey(key_id=key_id, token_sha256=_digest(token), member=member, role=role, created_at=_now())
    session.add(row)
    append(
        session,
        actor=actor,
        action="apikey.issue",
        resource=f"{member}/{key_id}",
        decision=role,
        policy_sha256=policy.sha256,
    )
    return token, row


def revoke(session: Session, key_id: str, actor: str) -> ApiKey:
    """Revoke a token by its key id (audited in the caller's transaction)."""
    row = session.exec(select(ApiKey).where(ApiKey.key_id == key_id)).first()
    if row is None:
        raise TokenError(f"no token with key id {key_id!r} (`fedcredit keys tokens` lists them)")
    if row.revoked_at is not None:
        raise TokenError(f"token {key_id} of {row.member} was already revoked at {row.revoked_at}")
    row.revoked_at = _now()
    session.add(row)
    append(session, actor=actor, action="apikey.revoke", resource=f"{row.member}/{key_id}", decision=row.role)
    return row


def tokens(session: Session) -> list[ApiKey]:
    return list(session.exec(select(ApiKey).order_by(col(ApiKey.id))).all())


def key_id_of(token: str) -> str | None:
    """The key id of a well-formed token, else None."""
    found = _TOKEN.fullmatch(token)
    return found.group(1) if found else None


def authenticate(session: Session, token: str) -> Caller | None:
    """The caller a token belongs to; None for a malformed, unknown or revoked token."""
    key_id = key_id_of(token)
    if key_id is None:
        return None
    row = session.exec(select(ApiKey).where(ApiKey.key_id == key_id)).first()
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.token_sha256, _digest(token)):
        return None
    return Caller(row.member, row.role, row.key_id)
