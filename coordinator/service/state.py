"""What the running service holds: the verified policy, the active model, tokens, the scoring pipeline."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from coordinator.service.audit_writer import AuditWriter
from coordinator.service.metrics import Metrics
from coordinator.service.pipeline import Pipeline
from coordinator.service.pipeline_worker import Served, Worker
from coordinator.service.rate_limit import RateLimiter
from coordinator.service.scorer import ServingModel
from coordinator.service.settings import ServiceSettings
from federation.errors import FedCreditError
from federation.schema import Schema, resolve_schema
from policies.audit import create_audit_engine
from policies.demo_keys import demo_key_name
from policies.documents import FederationPolicy, PolicyError
from policies.member_keys import Caller, authenticate
from policies.registry import active_version
from policies.signing import (
    key_id,
    load_private_key,
    public_key_text,
    read_public_keys,
    verify_policy_of_kind,
)

log = logging.getLogger("fedcredit.service")


class ServiceError(Exception):
    """The service cannot start as configured (one line: what and where)."""


@dataclass
class TokenCache:
    """Recently checked tokens, so a request does not read the database for its caller every time."""

    seconds: float
    _seen: dict[str, tuple[Caller | None, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def peek(self, token: str) -> tuple[bool, Caller | None]:
        """(True, caller) when ``token`` was checked less than ``seconds`` ago; no database read."""
        hit = self._seen.get(hashlib.sha256(token.encode()).hexdigest())
        if hit is not None and hit[1] > time.monotonic():
            return True, hit[0]
        return False, None

    def lookup(self, token: str, engine: Engine) -> Caller | None:
        """Read ``token``'s caller from the database (after a :meth:`peek` miss) and remember it."""
        with Session(engine) as session:
            caller = authenticate(session, token)
        if self.seconds > 0:
            with self._lock:
                if len(self._seen) > 10_000:
                    self._seen.clear()
                self._seen[hashlib.sha256(token.encode()).hexdigest()] = (
                    caller,
                    time.monotonic() + self.seconds,
                )
        return caller


def _midnight(day: dt.date) -> float:
    """The start of ``day`` in local time, as a POSIX time."""
    return dt.datetime.combine(day, dt.time()).timestamp()


def verified_policy(path: Path, trust: Path, allow_demo_keys: bool) -> tuple[FederationPolicy, str]:
    """The federation policy and its signer: signed by a trusted key, unmodified, in force; a
    policy signed with a published demo key only with ``allow_demo_keys``."""
    try:
        trusted = read_public_keys(trust)
        if not trusted:
            raise ServiceError(f"{trust}: no public keys here; name the keys trusted to sign the policy")
        policy, signer = verify_policy_of_kind(path, trusted, FederationPolicy, "the scoring service")
    except (PolicyError, OSError) as exc:
        raise ServiceError(str(exc)) from None
    if demo_key_name(signer) and not allow_demo_keys:
        raise ServiceError(
            f"{path}: signed with the published demo key {demo_key_name(signer)}, "
            "which anyone can sign with; pass --allow-demo-keys for a demo"
        )
    return policy, signer


class ServiceState:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.policy, self.policy_signer = verified_policy(
            settings.federation_policy, settings.trust, settings.allow_demo_keys
        )
        self.rules = self.policy.scoring
        try:
            self.schema: Schema = resolve_schema(settings.schema_ref or self.policy.schema)
        except FedCreditError as exc:
            raise ServiceError(f"{exc}; pass the federation's schema file with --schema") from None
        if (self.schema.name, self.schema.version) != (self.policy.schema, self.policy.schema_version):
            raise ServiceError(
                f"schema {self.schema.name} {self.schema.version} is not the federation's "
                f"({self.policy.schema} {self.policy.schema_version})"
            )
        try:
            self.key = load_private_key(settings.coordinator_key)
        except (PolicyError, OSError) as exc:
            raise ServiceError(f"coordinator key: {exc}") from None
        coordinators = {m.public_key for m in self.policy.members if m.role == "coordinator"}
        self.public_key = public_key_text(self.key.public_key())
        if self.public_key not in coordinators:
            raise ServiceError(
                f"{settings.coordinator_key}: key {key_id(self.public_key)} is not a coordinator key of "
                f"federation policy {self.policy.header.id}"
            )
        self.audit_keys = {self.public_key, *coordinators}
        if settings.audit_trust is not None:
            try:
                self.audit_keys |= set(read_public_keys(settings.audit_trust))
            except (PolicyError, OSError) as exc:
                raise ServiceError(f"audit trust: {exc}") from None
        self.federation = self.policy.header.id
        # the dates as local midnights, read once: every scoring request asks
        header = self.policy.header
        self._in_force_from = _midnight(header.effective)
        self._in_force_until = _midnight(header.expires + dt.timedelta(days=1))
        self.engine: Engine = create_audit_engine(settings.audit_url)
        self.metrics = Metrics()
        self.limiter = RateLimiter(self.rules.requests_per_minute)
        self.tokens = TokenCache(settings.key_cache_seconds)
        self.writer = AuditWriter(self.engine, self.key, self.rules.retention_days)
        served = Served(self.federation, self.policy.sha256)
        self.pipeline = Pipeline(
            Worker(self.rules, self.writer, served, self.schema, self.engine, settings.audit_batch),
            self.metrics.committed,
        )
        self.serving: ServingModel | None = None
        self.model_problem = "no model loaded yet"
        self._loaded_id: int | None = None

    def in_force(self) -> bool:
        """Whether today (local time) is within the policy's effective..expires dates."""
        return self._in_force_from <= time.time() < self._in_force_until

    def refresh_model(self) -> None:
        """Load the federation's active version when it changed; keep serving the old one on failure."""
        try:
            with Session(self.engine) as session:
                version = active_version(session, self.federation)
        except Exception as exc:
            self.model_problem = f"the model registry cannot be read ({type(exc).__name__})"
            return
        if version is None:
            self.serving, self._loaded_id = None, None
            self.model_problem = f"federation {self.federation} has no active model version"
            return
        if version.id == self._loaded_id:
            return
        try:
            self.serving = ServingModel.load(version, self.schema)
        except FedCreditError as exc:
            self.model_problem = f"{version.label} refused: {exc}"
            log.error("model %s refused: %s", version.label, exc)
            self.serving, self._loaded_id = None, None  # fail closed: never a model whose file changed
            return
        self._loaded_id = version.id
        self.model_problem = ""
        log.info("serving %s %s", self.federation, version.label)

    def database_ok(self) -> bool:
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def institution_policy_files(self) -> list[Path]:
        folder = self.settings.institution_policies
        return sorted(folder.glob("*.toml")) if folder is not None and folder.is_dir() else []
