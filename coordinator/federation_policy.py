"""The consortium's signed federation policy decides how the coordinator runs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from federation.schema import resolve_schema
from policies.demo_keys import DEMO_KEYS, EXAMPLES
from policies.documents import FederationPolicy, PolicyError
from policies.signing import (
    key_id,
    load_private_key,
    public_key_text,
    read_public_keys,
    verify_policy_of_kind,
)

if TYPE_CHECKING:  # the CLI imports this module; Flower loads only when a run starts
    from coordinator.run_settings import RunSettings

DEMO_FEDERATION_POLICY = EXAMPLES / "sme_consortium.toml"
DEMO_FEDERATION_TRUST = DEMO_KEYS / "demo_consortium.pub"


def public_key_of(private_key: Path) -> str:
    """The ``ed25519:...`` public key of a private key file."""
    return public_key_text(load_private_key(private_key).public_key())


def verify_federation_policy(path: Path, trusted_keys: Path) -> tuple[FederationPolicy, str]:
    """The federation policy and the key that signed it, only if signed by a trusted key,
    unmodified and in force."""
    return verify_policy_of_kind(path, read_public_keys(trusted_keys), FederationPolicy, "the coordinator")


def load_federation_policy(path: Path, trusted_keys: Path) -> FederationPolicy:
    """The federation policy, only if signed by a trusted key, unmodified and in force."""
    return verify_federation_policy(path, trusted_keys)[0]


@dataclass(frozen=True)
class Asked:
    """Run settings the operator gave explicitly; None: not given, the policy decides."""

    strategy: str | None = None
    rounds: int | None = None
    min_institutions: int | None = None
    secure_aggregation: bool | None = None
    epsilon: float | None = None


def _where(policy: FederationPolicy) -> str:
    return f"federation policy {policy.header.id} v{policy.header.version}"


def data_holders(policy: FederationPolicy) -> tuple[tuple[str, str], ...]:
    """(name, public key) of the members whose data may train."""
    return tuple((m.name, m.public_key) for m in policy.members if m.role == "data_holder")


def check_members(policy: FederationPolicy, institutions: Iterable[str]) -> None:
    """Only the policy's data holders take part: anyone else is an error naming them."""
    holders = [name for name, _ in data_holders(policy)]
    outsiders = [name for name in institutions if name not in holders]
    if outsiders:
        raise PolicyError(
            f"{_where(policy)} does not list {', '.join(outsiders)} as data holder(s) "
            f"(its data holders: {', '.join(holders)}); run only its members"
        )


def apply_federation_policy(
    settings: RunSettings,
    policy: FederationPolicy,
    asked: Asked | None = None,
    institutions: Iterable[str] = (),
    coordinator_key: str | None = None,
) -> RunSettings:
    """``settings`` as the policy requires them. What the operator ``asked`` for explicitly and
    the policy does not allow is an error naming both values, never silently replaced; what was
    not asked for is the policy's. ``institutions`` must all be its data holders, and
    ``coordinator_key`` (a public key) one of its coordinators."""
    asked = asked or Asked()
    where = _where(policy)
    schema = resolve_schema(settings.schema)
    if (schema.name, schema.version) != (policy.schema, policy.schema_version):
        raise PolicyError(
            f"{where}: the federation trains schema {policy.schema} {policy.schema_version}, "
            f"this run uses {schema.name} {schema.version}"
        )
    check_members(policy, institutions)
    coordinators = {m.public_key for m in policy.members if m.role == "coordinator"}
    if coordinator_key is not None and coordinator_key not in coordinators:
        raise PolicyError(
            f"{where}: the coordinator key {key_id(coordinator_key)} is not one of its coordinators' keys"
        )
    for option, given, agreed in (
        ("strategy", asked.strategy, policy.strategy),
        ("rounds", asked.rounds, policy.rounds),
        ("min-institutions", asked.min_institutions, policy.min_institutions),
    ):
        if given is not None and given != agreed:
            raise PolicyError(
                f"--{option} {given} conflicts with {where}, which sets {option} {agreed}; "
                f"leave --{option} out to use it"
            )
    if policy.secure_aggregation and asked.secure_aggregation is False:
        raise PolicyError(
            f"{where} requires secure aggregation; the run turned it off (--no-secure-aggregation)"
        )
    if asked.epsilon is not None and policy.epsilon is not None and asked.epsilon > policy.epsilon:
        raise PolicyError(f"{where}: epsilon {asked.epsilon:g} exceeds the agreed {policy.epsilon:g}")
    return replace(
        settings,
        strategy=policy.strategy,
        rounds=policy.rounds,
        proximal_mu=policy.proximal_mu,
        min_institutions=policy.min_institutions,
        secure_aggregation=policy.secure_aggregation
        if asked.secure_aggregation is None
        else asked.secure_aggregation,
        secure_aggregation_shares=policy.secure_aggregation_shares,
        reconstruction_threshold=policy.reconstruction_threshold,
        epsilon=policy.epsilon if asked.epsilon is None else asked.epsilon,
        delta=policy.delta,
        client_dp=policy.client_dp,
        members=data_holders(policy),
        federation_policy_sha256=policy.sha256,
        federation_id=policy.header.id,
        approve_below_pd=policy.scoring.decision.approve_below,
    )
