from __future__ import annotations

from pathlib import Path

from coordinator.simulation import SimulatedNode, with_policies
from federation import protocol as P
from policies.documents import InstitutionPolicy
from policies.signing import read_public_keys, verify_policy


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
