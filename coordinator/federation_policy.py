"""The consortium's signed federation policy decides how the coordinator runs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from federation.schema import resolve_schema
from policies.documents import FederationPolicy, PolicyError
from policies.signing import read_public_keys, verify_policy

if TYPE_CHECKING:  # the CLI imports this module; Flower loads only when a run starts
    from coordinator.server_app import RunSettings

EXAMPLES = Path(__file__).resolve().parents[1] / "policies" / "examples"
DEMO_FEDERATION_POLICY = EXAMPLES / "sme_consortium.toml"
DEMO_FEDERATION_TRUST = EXAMPLES / "keys" / "demo_consortium.pub"


def load_federation_policy(path: Path, trusted_keys: Path) -> FederationPolicy:
    """The federation policy, only if signed by a trusted key, unmodified and in force."""
    verified = verify_policy(path, read_public_keys(trusted_keys))
    if not isinstance(verified.policy, FederationPolicy):
        raise PolicyError(
            f"{path}: the coordinator needs a federation policy, got a {verified.policy.kind} policy"
        )
    return verified.policy


def apply_federation_policy(settings: RunSettings, policy: FederationPolicy) -> RunSettings:
    """``settings`` as the policy requires them; what the run asked and the policy forbids is an error."""
    where = f"federation policy {policy.header.id} v{policy.header.version}"
    schema = resolve_schema(settings.schema)
    if (schema.name, schema.version) != (policy.schema, policy.schema_version):
        raise PolicyError(
            f"{where}: the federation trains schema {policy.schema} {policy.schema_version}, "
            f"this run uses {schema.name} {schema.version}"
        )
    if settings.rounds > policy.max_rounds:
        raise PolicyError(f"{where}: {settings.rounds} rounds exceed its max_rounds {policy.max_rounds}")
    if policy.secure_aggregation and not settings.secure_aggregation:
        raise PolicyError(f"{where}: requires secure aggregation; the run turned it off")
    if settings.epsilon is not None and policy.epsilon is not None and settings.epsilon > policy.epsilon:
        raise PolicyError(f"{where}: epsilon {settings.epsilon:g} exceeds the agreed {policy.epsilon:g}")
    return replace(
        settings,
        strategy=policy.strategy,
        proximal_mu=policy.proximal_mu,
        min_institutions=policy.min_institutions,
        secure_aggregation_shares=policy.secure_aggregation_shares,
        reconstruction_threshold=policy.reconstruction_threshold,
        epsilon=settings.epsilon if settings.epsilon is not None else policy.epsilon,
        delta=policy.delta,
        client_dp=policy.client_dp,
    )
