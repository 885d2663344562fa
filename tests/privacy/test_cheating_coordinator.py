"""A coordinator that lies about dropouts to unmask one institution's update.

In SecAgg+'s last stage the coordinator lists the nodes that finished (their
mask-seed shares are revealed) and those that dropped out (their pairwise-key
shares are revealed). Listing a node as both asks for both of its secrets.
Flower's node mod hands both over; FedCredit's nodes refuse, and say so in
their audit logs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import Mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, public_key_to_bytes

import coordinator.server_app
import coordinator.simulation.engine
from clients.client_app import CreditClientApp
from clients.policy_guard import NodeConfigResolver
from clients.secure_aggregation_guard import SecureAggregationGuard
from coordinator.run_settings import RunSettings
from coordinator.simulation.engine import run_simulated_federation
from coordinator.simulation.nodes import SimulatedNode, with_policies
from federation.datasets.partition import write_partition
from federation.datasets.synthetic import generate_sme
from federation.secagg import shamir
from policies.audit import entries
from tests.audit_db import session_on


class CheatingWorkflow(SecAggPlusWorkflow):
    """Runs SecAgg+ honestly up to the last stage, then asks for both secrets of one node."""

    replies: ClassVar[list[Message]] = []
    victim_public_key: ClassVar[bytes] = b""

    def unmask_stage(self, grid: Any, context: Any, state: Any) -> bool:
        everyone = sorted(state.active_node_ids)
        victim = everyone[0]
        CheatingWorkflow.victim_public_key = state.nid_to_publickeys[victim][0]
        lie = ConfigRecord(
            {Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: everyone, Key.DEAD_NODE_ID_LIST: [victim]}
        )
        messages = [
            Message(
                content=RecordDict({RECORD_KEY_CONFIGS: lie}),
                dst_node_id=nid,
                message_type=MessageType.TRAIN,
                group_id="0",
            )
            for nid in everyone
            if nid != victim
        ]
        CheatingWorkflow.replies = list(grid.send_and_receive(messages))
        return False  # the round ends here: what matters is what the nodes handed over


def flowers_own_secagg(
    msg: Message, ctxt: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """Flower's SecAgg+ node mod with nothing in front of it."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


class FlowersOwnSecAggApp(CreditClientApp):
    """FedCredit's node with Flower's SecAgg+ mod in place of the guard (rebuilt as such in Ray's actors)."""

    def mods(self, resolve: NodeConfigResolver, outer_mods: Sequence[Mod]) -> list[Mod]:
        return [
            flowers_own_secagg if isinstance(m, SecureAggregationGuard) else m
            for m in super().mods(resolve, outer_mods)
        ]


def _cheat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[Message], list[SimulatedNode]]:
    real_workflow = coordinator.server_app.secagg_workflow

    def cheating_workflow(*args: Any, **kwargs: Any) -> SecAggPlusWorkflow:
        workflow = real_workflow(*args, **kwargs)
        workflow.__class__ = CheatingWorkflow
        return workflow

    monkeypatch.setattr(coordinator.server_app, "secagg_workflow", cheating_workflow)
    frame = generate_sme(1500, seed=3)
    names = ["national_bank", "online_bank", "rural_cooperative"]
    folders = write_partition(frame, np.arange(len(frame)) % 3, names, tmp_path / "institutions", 0.2)
    nodes = with_policies(
        [SimulatedNode(n, f, "sme") for n, f in folders.items()], tmp_path, use_examples=False
    )
    settings = RunSettings(
        schema="sme",
        rounds=1,
        min_institutions=3,
        run_id="cheat",
        demo_keys=True,
        audit_url=f"sqlite:///{tmp_path / 'c.db'}",
    )
    with pytest.raises(RuntimeError):  # the cheating round produced no aggregate
        run_simulated_federation(nodes, settings, parallel_nodes=1)  # one Ray actor to start
    assert len(CheatingWorkflow.replies) == 2
    return CheatingWorkflow.replies, nodes


@pytest.mark.slow
def test_flowers_own_node_mod_gives_a_lying_coordinator_both_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(coordinator.simulation.engine, "build_client_app", FlowersOwnSecAggApp)
    replies, _ = _cheat(tmp_path, monkeypatch)
    seed_shares, key_shares = [], []
    for reply in replies:
        assert not reply.has_error()
        answer = reply.content.config_records[RECORD_KEY_CONFIGS]
        nids, shares = list(answer[Key.NODE_ID_LIST]), list(answer[Key.SHARE_LIST])  # type: ignore[arg-type]
        victim = nids[-1]  # the "dropped" list comes last: the victim's pairwise key share
        seed_shares.append(shares[nids.index(victim)])  # ...and, listed as finished, its mask seed share
        key_shares.append(shares[-1])
    # two of three shares rebuild both: the victim's pairwise key and its mask seed, i.e. its update
    private_key = bytes_to_private_key(shamir.combine_shares(key_shares))
    assert public_key_to_bytes(private_key.public_key()) == CheatingWorkflow.victim_public_key
    assert len(shamir.combine_shares(seed_shares)) == 32


@pytest.mark.slow
def test_fedcredit_nodes_refuse_and_audit_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    replies, nodes = _cheat(tmp_path, monkeypatch)
    assert all(r.has_error() and "deny.secagg_inconsistent_dropouts" in r.error.reason for r in replies)
    assert all("listed both as finished and as dropped out" in r.error.reason for r in replies)
    refusing = []
    for node in nodes:
        with session_on(node.audit_db) as session:
            if any("deny.secagg_inconsistent_dropouts" in e.rules for e in entries(session)):
                refusing.append(node.institution)
    assert len(refusing) == 2  # every node but the victim was asked, and refused
