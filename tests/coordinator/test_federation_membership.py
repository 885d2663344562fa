"""The signed federation policy decides who trains and how: an operator who asks for something
else gets an error naming both values, never a silently different run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from coordinator.federation_policy import (
    DEMO_FEDERATION_POLICY,
    DEMO_FEDERATION_TRUST,
    Asked,
    apply_federation_policy,
    load_federation_policy,
    public_key_of,
)
from coordinator.run_settings import RunSettings
from coordinator.simulation.engine import run_simulated_federation
from coordinator.simulation.nodes import SimulatedNode, with_policies
from policies.demo_keys import DEMO_COORDINATOR_KEY, DEMO_KEYS, demo_key_name
from policies.documents import FederationPolicy, PolicyError
from policies.signing import generate_keypair, read_public_keys

MEMBERS = ["national_bank", "online_bank", "rural_cooperative", "city_bank_east", "coastal_credit_union"]


@pytest.fixture(scope="module")
def policy() -> FederationPolicy:
    return load_federation_policy(DEMO_FEDERATION_POLICY, DEMO_FEDERATION_TRUST)


def test_only_the_policys_data_holders_take_part(policy: FederationPolicy) -> None:
    settings = apply_federation_policy(RunSettings(schema="sme"), policy, Asked(), MEMBERS[:3])
    assert settings.members == tuple(
        (name, read_public_keys(DEMO_KEYS / f"demo_{name}.pub")[0]) for name in MEMBERS
    )
    with pytest.raises(PolicyError) as err:  # the 8-institution run used to train 3 outsiders
        apply_federation_policy(
            RunSettings(schema="sme"), policy, Asked(), [*MEMBERS, "inland_savings_bank", "city_bank_south"]
        )
    message = str(err.value)
    assert "federation policy federation.sme-consortium v1 does not list" in message
    assert "inland_savings_bank, city_bank_south" in message and "\n" not in message
    with pytest.raises(PolicyError, match="does not list coordinator"):  # a member, but no data holder
        apply_federation_policy(RunSettings(schema="sme"), policy, Asked(), ["coordinator"])


def test_what_is_not_asked_for_is_the_policys(policy: FederationPolicy) -> None:
    agreed = replace(policy, rounds=7, epsilon=4.0, strategy="fedprox", proximal_mu=0.1)
    settings = apply_federation_policy(
        RunSettings(schema="sme", rounds=10, strategy="fedavg", secure_aggregation=False), agreed
    )
    assert (settings.strategy, settings.proximal_mu, settings.rounds) == ("fedprox", 0.1, 7)
    assert (settings.min_institutions, settings.secure_aggregation, settings.epsilon) == (3, True, 4.0)
    same = Asked(strategy="fedprox", rounds=7, min_institutions=3, secure_aggregation=True, epsilon=2.0)
    settings = apply_federation_policy(RunSettings(schema="sme"), agreed, same)
    assert (settings.rounds, settings.epsilon) == (7, 2.0)  # a smaller epsilon is allowed


@pytest.mark.parametrize(
    ("asked", "message"),
    [
        (
            Asked(strategy="fedprox"),
            "--strategy fedprox conflicts with federation policy federation.sme-consortium v1, "
            "which sets strategy fedavg",
        ),
        (Asked(rounds=3), "--rounds 3 conflicts with .* which sets rounds 10"),
        (Asked(rounds=51), "--rounds 51 conflicts with .* which sets rounds 10"),
        (Asked(min_institutions=2), "--min-institutions 2 conflicts with .* which sets min-institutions 3"),
        (Asked(secure_aggregation=False), "requires secure aggregation; the run turned it off"),
    ],
)
def test_an_explicit_conflict_is_an_error_never_overridden(
    policy: FederationPolicy, asked: Asked, message: str
) -> None:
    with pytest.raises(PolicyError, match=message):
        apply_federation_policy(RunSettings(schema="sme"), policy, asked, MEMBERS)


def test_epsilon_above_the_agreed_schema_and_coordinator(policy: FederationPolicy) -> None:
    with pytest.raises(PolicyError, match="epsilon 9 exceeds the agreed 3"):
        apply_federation_policy(RunSettings(schema="sme"), replace(policy, epsilon=3.0), Asked(epsilon=9))
    with pytest.raises(PolicyError, match=r"schema sme 1\.0\.0, this run uses uci_homo 1\.0\.0"):
        apply_federation_policy(RunSettings(schema="uci_homo"), policy)
    demo_coordinator = public_key_of(DEMO_COORDINATOR_KEY)
    apply_federation_policy(RunSettings(schema="sme"), policy, coordinator_key=demo_coordinator)
    stranger = read_public_keys(DEMO_KEYS / "demo_national_bank.pub")[0]
    with pytest.raises(PolicyError, match="is not one of its coordinators' keys"):
        apply_federation_policy(RunSettings(schema="sme"), policy, coordinator_key=stranger)


def test_demo_keys_are_recognised(tmp_path: Path) -> None:
    assert demo_key_name(public_key_of(DEMO_COORDINATOR_KEY)) == "demo_coordinator"
    assert demo_key_name(read_public_keys(DEMO_FEDERATION_TRUST)[0]) == "demo_consortium"
    key, _ = generate_keypair(tmp_path, "own")
    assert demo_key_name(public_key_of(key)) is None


def test_a_node_outside_the_members_is_refused_before_anything_starts(
    tmp_path: Path, policy: FederationPolicy
) -> None:
    names = ["national_bank", "online_bank", "inland_savings_bank"]
    for name in names:
        (tmp_path / name).mkdir()
    nodes = with_policies([SimulatedNode(n, tmp_path / n, "sme") for n in names], tmp_path / "run")
    settings = apply_federation_policy(RunSettings(schema="sme"), policy)
    with pytest.raises(ValueError, match=r"node\(s\) inland_savings_bank not among the run's members"):
        run_simulated_federation(nodes, settings)
    # a member's name with another key is no member either
    impostor = replace(nodes[0], node_key=nodes[2].node_key)
    with pytest.raises(ValueError, match=r"node\(s\) national_bank not among"):
        run_simulated_federation([impostor, *nodes[1:2]], replace(settings, min_institutions=2))
