from __future__ import annotations

from pathlib import Path

from coordinator.simulation.nodes import SimulatedNode, with_policies
from federation import protocol as P
from policies.demo_keys import EXAMPLES
from policies.documents import FederationPolicy, InstitutionPolicy
from policies.signing import load_private_key, public_key_text, read_public_keys, verify_policy

CONSORTIUM = EXAMPLES / "sme_consortium.toml"
KEYS = CONSORTIUM.parent / "keys"


def test_nodes_without_an_example_get_a_signed_simulation_policy(tmp_path: Path) -> None:
    nodes = [
        SimulatedNode("bank_1", tmp_path / "bank_1", "uci_homo"),
        SimulatedNode("national_bank", tmp_path / "nb", "sme"),
    ]
    for n in nodes:
        n.data_path.mkdir()
    provisioned = with_policies(nodes, tmp_path / "run")
    sim, example = provisioned
    assert sim.policy is not None and sim.trusted_policy_keys is not None
    verified = verify_policy(sim.policy, read_public_keys(sim.trusted_policy_keys))
    assert isinstance(verified.policy, InstitutionPolicy)
    assert (
        verified.policy.allowed_schemas == ("uci_homo",) and verified.policy.header.id == "simulation.bank_1"
    )
    assert example.policy is not None and example.policy.read_text().startswith("# DEMO POLICY")
    cfg = example.node_config()
    assert cfg[P.NODE_POLICY].endswith("national_bank.toml") and cfg[P.NODE_AUDIT_DB].startswith("sqlite:///")
    only_sim = with_policies(
        [SimulatedNode("national_bank", tmp_path / "nb", "sme")], tmp_path / "run2", use_examples=False
    )
    assert only_sim[0].policy is not None and "SIMULATION POLICY" in only_sim[0].policy.read_text()


def _public(key: Path | None) -> str:
    assert key is not None
    return public_key_text(load_private_key(key).public_key())


def test_every_node_gets_its_key_and_the_demo_keys_are_the_consortium_members(tmp_path: Path) -> None:
    names = ["national_bank", "online_bank", "rural_cooperative", "city_bank_east", "coastal_credit_union"]
    nodes = [SimulatedNode(n, tmp_path / n, "sme") for n in [*names, "bank_9"]]
    for n in nodes:
        n.data_path.mkdir()
    provisioned = with_policies(nodes, tmp_path / "run")
    consortium = verify_policy(CONSORTIUM, read_public_keys(KEYS / "demo_consortium.pub")).policy
    assert isinstance(consortium, FederationPolicy)
    holders = {m.name: m.public_key for m in consortium.members if m.role == "data_holder"}
    assert set(holders) == set(names)
    for node in provisioned[:-1]:  # an example institution: its demo key, the consortium's member key
        assert node.node_key == KEYS / f"demo_{node.institution}.key"
        assert _public(node.node_key) == holders[node.institution]
        assert node.node_config()[P.NODE_KEY] == str(node.node_key)
    sim = provisioned[-1]  # a simulation policy: a fresh key made for this run
    assert sim.node_key == tmp_path / "run" / "keys" / "node_bank_9.key"
    assert _public(sim.node_key) not in holders.values()
    # without the examples, every node gets a fresh key and a policy accepting the given coordinator
    coordinator = read_public_keys(KEYS / "demo_national_bank.pub")[0]  # any key that is not the demo's
    fresh = with_policies(nodes[:2], tmp_path / "run2", use_examples=False, coordinator_key=coordinator)
    assert [n.node_key for n in fresh] == [tmp_path / "run2" / "keys" / f"node_{n}.key" for n in names[:2]]
    assert len({_public(n.node_key) for n in fresh}) == 2
    assert fresh[0].policy is not None and coordinator in fresh[0].policy.read_text()
