"""Policy documents: a closed TOML schema, parsed into frozen dataclasses.

Two kinds share a header (``format_version``, ``kind``, ``id``, ``version``,
``owner``, ``effective``, ``expires``):

* an **institution policy**, owned by one node's compliance office, says what
  that institution's data may be used for;
* a **federation policy**, the consortium agreement, lists the members and
  their keys, the dataset schema, the aggregation and privacy settings and the
  scoring rules.

Any unknown key, wrong type or impossible value is refused with the file, the
line and the key. A policy never names code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policies.toml_files import parse_toml, read_bytes

POLICY_FORMAT_VERSION = 1
DIMENSIONS = ("operations", "credit", "behaviour", "scenario")
PURPOSES = (
    "credit_underwriting",
    "risk_monitoring",
    "collections",
    "model_validation",
    "regulatory_reporting",
    "marketing",
)
NEVER_ALLOWED_PURPOSES = ("marketing",)
ROLES = ("data_holder", "coordinator", "member", "auditor")
STRATEGIES = ("fedavg", "fedprox")
DEFAULT_MAX_REQUEST_AGE_MINUTES = 60
DEFAULT_MAX_RUNS_PER_DAY = 24
DEFAULT_MAX_ROUNDS_PER_RUN = 100
KEY_PATTERN = re.compile(r"^ed25519:[A-Za-z0-9+/]{43}=$")


class PolicyError(Exception):
    """A policy file is missing, malformed or impossible. Names file, line and key."""


_NO_POLICY = "no policy file here; without a policy nothing is permitted"


# ---------------------------------------------------------------------------
# documents


@dataclass(frozen=True)
class Header:
    id: str
    version: int
    owner: str
    effective: dt.date
    expires: dt.date

    def in_force(self, today: dt.date) -> bool:
        return self.effective <= today <= self.expires


@dataclass(frozen=True)
class PrivacyLimits:
    max_epsilon_per_run: float | None  # None: the policy sets no limit
    lifetime_epsilon_budget: float | None
    delta: float


@dataclass(frozen=True)
class InstitutionPolicy:
    header: Header
    institution: str
    allowed_dimensions: tuple[str, ...]
    allowed_features: tuple[str, ...]  # ("*",) = every feature of an allowed dimension
    forbidden_features: tuple[str, ...]
    min_local_records: int
    allowed_schemas: tuple[str, ...]
    allowed_purposes: tuple[str, ...]
    require_secure_aggregation: bool
    min_institutions_per_round: int
    accepted_coordinator_keys: tuple[str, ...]
    privacy: PrivacyLimits
    retention_days: int
    sha256: str
    # a run is joined only if its signed request was issued at most this long ago (replays)
    max_request_age_minutes: int = DEFAULT_MAX_REQUEST_AGE_MINUTES
    max_runs_per_day: int = DEFAULT_MAX_RUNS_PER_DAY  # new runs joined in any 24 hours
    max_rounds_per_run: int = DEFAULT_MAX_ROUNDS_PER_RUN  # a request announcing more is refused

    kind = "institution"


@dataclass(frozen=True)
class Member:
    name: str
    role: str
    public_key: str


@dataclass(frozen=True)
class ClientLevelDP:
    """Noise the coordinator adds to each round's aggregate (node updates clipped to ``clipping_norm``)."""

    noise_multiplier: float
    clipping_norm: float


@dataclass(frozen=True)
class PointsScale:
    """Points = base_points at odds of base_odds good : 1 bad; points_to_double_odds more doubles them."""

    base_points: float = 600.0
    base_odds: float = 50.0
    points_to_double_odds: float = 20.0


@dataclass(frozen=True)
class DecisionRules:
    """Cut-offs on the probability of default (PD): approve below, decline from, refer between."""

    approve_below: float = 0.03
    decline_from: float = 0.10
    # upper PD bound of each risk grade, A first; a PD at or above the last bound gets the next letter
    grades: tuple[float, ...] = (0.01, 0.03, 0.07, 0.15)
    limit_feature: str = ""  # the applicant's field holding the amount asked for ("" = none)
    max_limit: float = 1_000_000.0
    refer_limit_fraction: float = 0.5  # share of the amount suggested while a person reviews


@dataclass(frozen=True)
class ScoringRules:
    allowed_members: tuple[str, ...]
    allowed_purposes: tuple[str, ...]
    require_consent_reference: bool
    requests_per_minute: int
    purposes_by_member: dict[str, tuple[str, ...]] = field(default_factory=dict)
    retention_days: int = 365  # query records (who asked what, when, why) are kept this long
    max_batch: int = 10_000
    scale: PointsScale = PointsScale()
    decision: DecisionRules = DecisionRules()

    def purposes_for(self, member: str) -> tuple[str, ...]:
        """The purposes ``member`` may score for: its own list when the policy gives one."""
        return self.purposes_by_member.get(member, self.allowed_purposes)


@dataclass(frozen=True)
class FederationPolicy:
    header: Header
    members: tuple[Member, ...]
    schema: str
    schema_version: str
    strategy: str
    rounds: int
    max_rounds: int
    min_institutions: int
    proximal_mu: float
    secure_aggregation: bool
    secure_aggregation_shares: int | None  # None: every institution in the round
    reconstruction_threshold: int | None  # None: a majority of the shares
    epsilon: float | None
    delta: float
    client_dp: ClientLevelDP | None
    scoring: ScoringRules
    sha256: str

    kind = "federation"

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)


Policy = InstitutionPolicy | FederationPolicy


# ---------------------------------------------------------------------------
# reading with locations


class _Reader:
    """Typed access to a parsed TOML table that reports file, line and key on error."""

    def __init__(self, source: str, text: str, table: dict[str, Any], path: tuple[str, ...] = ()) -> None:
        self.source = source
        self.text = text
        self.table = table
        self.path = path
        self.used: set[str] = set()

    def where(self, key: str | None = None) -> str:
        dotted = ".".join([*self.path, key] if key else list(self.path)) or "(top level)"
        return f"{self.source}:{_line_of(self.text, self.path, key)}: {dotted}"

    def fail(self, key: str | None, message: str) -> PolicyError:
        return PolicyError(f"{self.where(key)}: {message}")

    def get(
        self,
        key: str,
        kind: type | tuple[type, ...],
        default: Any = ...,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        self.used.add(key)
        if key not in self.table:
            if default is ...:
                return self._missing(key)
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(key, f"expected {_names(kinds)}, got a boolean")
        if not isinstance(value, kinds):
            raise self.fail(key, f"expected {_names(kinds)}, got {type(value).__name__} {value!r}")
        if check is not None and (problem := check(value)) is not None:
            raise self.fail(key, problem)
        return value

    def _missing(self, key: str) -> Any:
        dotted = ".".join([*self.path, key])
        raise PolicyError(
            f"{self.source}:{_line_of(self.text, self.path, None)}: missing required key {dotted!r}"
        )

    def strings(
        self, key: str, default: Any = ..., allowed: tuple[str, ...] | None = None
    ) -> tuple[str, ...]:
        values = self.get(key, list, default)
        if values is None:
            return ()
        out = []
        for v in values:
            if not isinstance(v, str):
                raise self.fail(key, f"every entry must be a string, got {v!r}")
            if allowed is not None and v not in allowed:
                raise self.fail(key, f"{v!r} is not one of {list(allowed)}")
            out.append(v)
        if len(set(out)) != len(out):
            raise self.fail(key, "has duplicate entries")
        return tuple(out)

    def sub(self, key: str, required: bool = True) -> _Reader:
        self.used.add(key)
        value = self.table.get(key)
        if value is None:
            if required:
                self._missing(key)
            value = {}
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table [{key}], got {type(value).__name__}")
        return _Reader(self.source, self.text, value, (*self.path, key))

    def close(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise self.fail(unknown[0], f"unknown key {unknown[0]!r}; this policy format has no such setting")


def _names(kinds: tuple[type, ...]) -> str:
    names = {
        bool: "true/false",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dt.date: "a date",
    }
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _line_of(text: str, table: tuple[str, ...], key: str | None) -> int:
    """Best-effort line number of ``key`` in ``[table]`` (or of the table header)."""
    header = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    current: tuple[str, ...] = ()
    table_line = 1
    for number, line in enumerate(text.splitlines(), start=1):
        m = header.match(line)
        if m:
            current = tuple(p.strip().strip('"') for p in m.group(1).split("."))
            if current == table:
                table_line = number
            continue
        if key is not None and current == table and re.match(rf"^\s*\"?{re.escape(key)}\"?\s*=", line):
            return number
    return table_line


def _positive(v: Any) -> str | None:
    return None if v > 0 and math.isfinite(v) else f"must be a finite number > 0, got {v}"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else f"must be >= 0, got {v}"


def _epsilon(v: Any) -> str | None:
    return None if v > 0 and math.isfinite(v) else f"epsilon must be a finite number > 0, got {v}"


def _delta(v: Any) -> str | None:
    return None if 0 < v < 1 else f"delta must be between 0 and 1 (exclusive), got {v}"


def _not_blank(v: Any) -> str | None:
    return None if v.strip() else "must not be empty"


def _key(v: Any) -> str | None:
    return None if KEY_PATTERN.match(v) else "must be an Ed25519 public key 'ed25519:<base64 of 32 bytes>'"


def _read_header(r: _Reader, kind: str) -> Header:
    fmt = r.get("format_version", int)
    if fmt != POLICY_FORMAT_VERSION:
        raise r.fail(
            "format_version",
            f"unsupported format_version {fmt}; this FedCredit reads {POLICY_FORMAT_VERSION}",
        )
    found = r.get("kind", str)
    if found != kind:
        raise r.fail("kind", f"expected a {kind!r} policy, got {found!r}")
    header = Header(
        id=r.get("id", str, check=_not_blank),
        version=r.get("version", int, check=_positive),
        owner=r.get("owner", str, check=_not_blank),
        effective=r.get("effective", dt.date),
        expires=r.get("expires", dt.date),
    )
    if isinstance(header.effective, dt.datetime) or isinstance(header.expires, dt.datetime):
        raise r.fail("effective", "use plain dates (YYYY-MM-DD), not date-times")
    if header.expires < header.effective:
        raise r.fail("expires", f"expires {header.expires} is before effective {header.effective}")
    return header


def _purposes(r: _Reader, key: str) -> tuple[str, ...]:
    purposes = r.strings(key, allowed=PURPOSES)
    banned = [p for p in purposes if p in NEVER_ALLOWED_PURPOSES]
    if banned:
        raise r.fail(key, f"{banned[0]!r} can never be an allowed purpose")
    if not purposes:
        raise r.fail(key, "must allow at least one purpose")
    return purposes


def _privacy(r: _Reader) -> PrivacyLimits:
    number = (int, float)
    max_eps = r.get("max_epsilon_per_run", number, None, _epsilon)
    lifetime = r.get("lifetime_epsilon_budget", number, None, _epsilon)
    if max_eps is not None and lifetime is not None and max_eps > lifetime:
        raise r.fail("max_epsilon_per_run", f"{max_eps} exceeds lifetime_epsilon_budget {lifetime}")
    return PrivacyLimits(
        None if max_eps is None else float(max_eps),
        None if lifetime is None else float(lifetime),
        float(r.get("delta", number, 1e-5, _delta)),
    )


def _institution(r: _Reader, sha256: str) -> InstitutionPolicy:
    header = _read_header(r, "institution")
    institution = r.get("institution", str, check=_not_blank)
    data = r.sub("data")
    fed = r.sub("federation")
    privacy = r.sub("privacy")
    retention = r.sub("retention", required=False)
    policy = InstitutionPolicy(
        header=header,
        institution=institution,
        allowed_dimensions=data.strings("allowed_dimensions", allowed=DIMENSIONS),
        allowed_features=data.strings("allowed_features", ("*",)),
        forbidden_features=data.strings("forbidden_features", ()),
        min_local_records=data.get("min_local_records", int, check=_positive),
        allowed_schemas=data.strings("allowed_schemas"),
        allowed_purposes=_purposes(fed, "allowed_purposes"),
        require_secure_aggregation=fed.get("require_secure_aggregation", bool),
        min_institutions_per_round=fed.get("min_institutions_per_round", int, check=_positive),
        accepted_coordinator_keys=_keys(fed, "accepted_coordinator_keys"),
        privacy=_privacy(privacy),
        retention_days=retention.get("local_artifacts_days", int, 30, _non_negative),
        sha256=sha256,
        max_request_age_minutes=fed.get(
            "max_request_age_minutes", int, DEFAULT_MAX_REQUEST_AGE_MINUTES, _positive
        ),
        max_runs_per_day=fed.get("max_runs_per_day", int, DEFAULT_MAX_RUNS_PER_DAY, _positive),
        max_rounds_per_run=fed.get("max_rounds_per_run", int, DEFAULT_MAX_ROUNDS_PER_RUN, _positive),
    )
    both = set(policy.allowed_features) & set(policy.forbidden_features)
    if both:
        raise data.fail("forbidden_features", f"{sorted(both)} are both allowed and forbidden")
    for reader in (data, fed, privacy, retention, r):
        reader.close()
    return policy


def _keys(r: _Reader, key: str) -> tuple[str, ...]:
    keys = r.strings(key)
    for k in keys:
        if problem := _key(k):
            raise r.fail(key, f"{k[:24]}...: {problem}")
    if not keys:
        raise r.fail(key, "must accept at least one coordinator key")
    return keys


def _federation(r: _Reader, sha256: str) -> FederationPolicy:
    header = _read_header(r, "federation")
    raw_members = r.get("members", list)
    r.used.add("members")
    members = []
    for i, raw in enumerate(raw_members):
        if not isinstance(raw, dict):
            raise r.fail("members", f"entry {i} must be a table [[members]]")
        m = _Reader(r.source, r.text, raw, ("members",))
        members.append(
            Member(
                name=m.get("name", str, check=_not_blank),
                role=m.get(
                    "role", str, check=lambda v: None if v in ROLES else f"{v!r} is not one of {list(ROLES)}"
                ),
                public_key=m.get("public_key", str, check=_key),
            )
        )
        m.close()
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise r.fail("members", "a member is listed twice")
    keys = [m.public_key for m in members]
    shared = sorted({m.name for m in members if keys.count(m.public_key) > 1})
    if shared:
        raise r.fail("members", f"{shared} share one public key: each member signs with a key of its own")
    if not any(m.role == "coordinator" for m in members):
        raise r.fail("members", "no member has the role 'coordinator'")
    dataset = r.sub("dataset")
    agg = r.sub("aggregation")
    privacy = r.sub("privacy")
    scoring = r.sub("scoring")
    rounds = agg.get("rounds", int, check=_positive)
    max_rounds = agg.get("max_rounds", int, rounds, _positive)
    if rounds > max_rounds:
        raise agg.fail("rounds", f"{rounds} exceeds max_rounds {max_rounds}")
    min_inst = agg.get("min_institutions", int, check=_positive)
    holders = sum(m.role == "data_holder" for m in members)
    if min_inst > holders:
        raise agg.fail(
            "min_institutions", f"{min_inst} exceeds the {holders} data holder(s) listed as members"
        )
    epsilon = privacy.get("epsilon", (int, float), None, _epsilon)
    shares, threshold = _secure_aggregation_sizes(privacy)
    client_dp = _client_dp(privacy.sub("client_dp", required=False))
    allowed_members = scoring.strings("allowed_members")
    unknown = [n for n in allowed_members if n not in names]
    if unknown:
        raise scoring.fail("allowed_members", f"{unknown[0]!r} is not a member")
    policy = FederationPolicy(
        header=header,
        members=tuple(members),
        schema=dataset.get("schema", str, check=_not_blank),
        schema_version=dataset.get("schema_version", str, check=_not_blank),
        strategy=agg.get(
            "strategy",
            str,
            check=lambda v: None if v in STRATEGIES else f"{v!r} is not one of {list(STRATEGIES)}",
        ),
        rounds=rounds,
        max_rounds=max_rounds,
        min_institutions=min_inst,
        proximal_mu=float(agg.get("proximal_mu", (int, float), 0.01, _positive)),
        secure_aggregation=privacy.get("secure_aggregation", bool),
        secure_aggregation_shares=shares,
        reconstruction_threshold=threshold,
        epsilon=None if epsilon is None else float(epsilon),
        delta=float(privacy.get("delta", (int, float), 1e-5, _delta)),
        client_dp=client_dp,
        scoring=_scoring_rules(scoring, allowed_members),
        sha256=sha256,
    )
    for reader in (dataset, agg, privacy, scoring, r):
        reader.close()
    return policy


def _scoring_rules(scoring: _Reader, allowed_members: tuple[str, ...]) -> ScoringRules:
    purposes = _purposes(scoring, "allowed_purposes")
    by_member = scoring.sub("purposes_by_member", required=False)
    narrowed: dict[str, tuple[str, ...]] = {}
    for name in by_member.table:
        if name not in allowed_members:
            raise by_member.fail(name, f"{name!r} is not in scoring.allowed_members")
        own = _purposes(by_member, name)
        wider = [p for p in own if p not in purposes]
        if wider:
            raise by_member.fail(name, f"{wider[0]!r} is not in scoring.allowed_purposes")
        narrowed[name] = own
    scale = scoring.sub("scale", required=False)
    decision = scoring.sub("decision", required=False)
    number = (int, float)
    default = DecisionRules()
    rules = ScoringRules(
        allowed_members=allowed_members,
        allowed_purposes=purposes,
        require_consent_reference=scoring.get("require_consent_reference", bool),
        requests_per_minute=scoring.get("requests_per_minute", int, check=_positive),
        purposes_by_member=narrowed,
        retention_days=scoring.get("retention_days", int, 365, _positive),
        max_batch=scoring.get(
            "max_batch", int, 10_000, lambda v: None if 1 <= v <= 100_000 else f"must be 1..100000, got {v}"
        ),
        scale=PointsScale(
            base_points=float(scale.get("base_points", number, 600.0, _positive)),
            base_odds=float(scale.get("base_odds", number, 50.0, _positive)),
            points_to_double_odds=float(scale.get("points_to_double_odds", number, 20.0, _positive)),
        ),
        decision=DecisionRules(
            approve_below=float(decision.get("approve_below", number, default.approve_below, _probability)),
            decline_from=float(decision.get("decline_from", number, default.decline_from, _probability)),
            grades=_grades(decision),
            limit_feature=decision.get("limit_feature", str, ""),
            max_limit=float(decision.get("max_limit", number, default.max_limit, _positive)),
            refer_limit_fraction=float(
                decision.get("refer_limit_fraction", number, default.refer_limit_fraction, _fraction)
            ),
        ),
    )
    if rules.decision.approve_below > rules.decision.decline_from:
        raise decision.fail(
            "approve_below",
            f"{rules.decision.approve_below} is above decline_from {rules.decision.decline_from}",
        )
    for reader in (by_member, scale, decision):
        reader.close()
    return rules


def _probability(v: Any) -> str | None:
    return None if 0 < v < 1 else f"must be a probability between 0 and 1 (exclusive), got {v}"


def _fraction(v: Any) -> str | None:
    return None if 0 <= v <= 1 else f"must be between 0 and 1, got {v}"


def _grades(decision: _Reader) -> tuple[float, ...]:
    raw = decision.get("grades", list, list(DecisionRules().grades))
    if not 1 <= len(raw) <= 9:
        raise decision.fail("grades", f"must list 1 to 9 upper bounds, got {len(raw)}")
    bounds = []
    for v in raw:
        if isinstance(v, bool) or not isinstance(v, int | float) or _probability(v) is not None:
            raise decision.fail("grades", f"every bound must be a probability between 0 and 1, got {v!r}")
        bounds.append(float(v))
    if any(later <= earlier for earlier, later in itertools.pairwise(bounds)):
        raise decision.fail("grades", "bounds must increase")
    return tuple(bounds)


def _secure_aggregation_sizes(privacy: _Reader) -> tuple[int | None, int | None]:
    shares = privacy.get(
        "secure_aggregation_shares",
        int,
        None,
        # SecAgg+ places each institution in the middle of a ring of neighbours: an odd count
        lambda v: None if v >= 3 and v % 2 == 1 else f"must be an odd number >= 3, got {v}",
    )
    threshold = privacy.get(
        "reconstruction_threshold", int, None, lambda v: None if v >= 2 else f"must be >= 2, got {v}"
    )
    if shares is not None and threshold is not None and not shares / 2 < threshold < shares:
        raise privacy.fail(
            "reconstruction_threshold",
            f"must be more than half of secure_aggregation_shares ({shares}) and fewer than all of them, got {threshold}",
        )
    return shares, threshold


def _client_dp(table: _Reader) -> ClientLevelDP | None:
    if not table.table:
        return None
    dp = ClientLevelDP(
        noise_multiplier=float(table.get("noise_multiplier", (int, float), check=_positive)),
        clipping_norm=float(table.get("clipping_norm", (int, float), check=_positive)),
    )
    table.close()
    return dp


def parse_policy(data: bytes, source: str) -> Policy:
    """Parse policy bytes; the sha256 of exactly these bytes is the policy's identity."""
    document = parse_toml(data, source, "policy", PolicyError)
    raw = document.table
    sha256 = hashlib.sha256(data).hexdigest()
    reader = _Reader(source, document.text, raw)
    kind = raw.get("kind")
    if kind == "institution":
        return _institution(reader, sha256)
    if kind == "federation":
        return _federation(reader, sha256)
    raise reader.fail("kind", f"must be 'institution' or 'federation', got {kind!r}")


def load_policy(path: str | Path) -> Policy:
    """Read and check a policy file (its signature is checked by :mod:`policies.signing`)."""
    data = read_bytes(path, "policy", PolicyError, missing=_NO_POLICY)
    return parse_policy(data, str(path))
