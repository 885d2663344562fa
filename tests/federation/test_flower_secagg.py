"""Flower's SecAgg+ runs with FedCredit's secret sharing and masks, on node and coordinator alike."""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS as SECAGG_CONFIGS
from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage
from sqlmodel import Session

import coordinator.secure_aggregation  # noqa: F401  (installs at the coordinator)
from clients.secure_aggregation_guard import SECAGG_REFUSED, SecureAggregationGuard, dropout_list_problem
from federation import protocol as P
from federation import secure_masks, shamir
from federation.flower_secagg import MASK_SCHEME, install_into_flower, mask_scheme
from policies.audit import create_audit_engine, entries


def test_the_names_flowers_secagg_looks_up_are_fedcredits() -> None:
    node = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    workflow = importlib.import_module("flwr.server.workflow.secure_aggregation.secaggplus_workflow")
    assert node._share_keys.__globals__["create_shares"] is shamir.create_shares
    assert node._collect_masked_vectors.__globals__["pseudo_rand_gen"] is secure_masks.pseudo_rand_gen
    unmask = workflow.SecAggPlusWorkflow.unmask_stage
    assert unmask.__globals__["combine_shares"] is shamir.combine_shares
    assert unmask.__globals__["pseudo_rand_gen"] is secure_masks.pseudo_rand_gen
    assert mask_scheme() == MASK_SCHEME
    assert install_into_flower()  # a second install changes nothing and still succeeds


def _masked_vector_stage(announced: str | None) -> Message:
    fit_config = {P.SCHEMA_NAME: "sme"} | ({} if announced is None else {P.SECAGG_MASKS: announced})
    content = RecordDict(
        {
            SECAGG_CONFIGS: ConfigRecord({Key.STAGE: Stage.COLLECT_MASKED_VECTORS}),
            "fitins.config": ConfigRecord(fit_config),
        }
    )
    return Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)


def test_a_node_refuses_masks_the_coordinator_expands_differently(
    task_identity: None, tmp_path: Path
) -> None:
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    audit_db = f"sqlite:///{tmp_path / 'node.db'}"
    guard = SecureAggregationGuard(lambda _: {P.NODE_NAME: "online_bank", P.NODE_AUDIT_DB: audit_db})
    reached: list[Message] = []
    call_next: Callable[[Message, Context], Message] = lambda m, c: reached.append(m) or m  # noqa: E731
    for announced in ("flower-mt19937-32bit", None):
        reply = guard(_masked_vector_stage(announced), context, call_next)
        assert reply.has_error() and reply.error.code == SECAGG_REFUSED
        assert "deny.secagg_mask_scheme" in reply.error.reason and "would not cancel" in reply.error.reason
    assert not reached  # neither the training nor Flower's SecAgg+ mod ran
    with Session(create_audit_engine(audit_db)) as session:
        logged = [(e.actor, e.decision, json.loads(e.rules)) for e in entries(session)]
    assert logged == [("node:online_bank", "deny", ["deny.secagg_mask_scheme"])] * 2


@pytest.mark.parametrize(
    ("active", "dropped", "problem"),
    [
        ([1, 2, 3], [], None),
        ([1, 2], [3], None),
        ([1, 2, 3], [3], "listed both as finished and as dropped out"),
        ([1, 2, 2], [], "twice"),
        ([2, 3], [1], "this node sent its masked update"),
    ],
)
def test_dropout_lists_that_would_reveal_both_secrets(
    active: list[int], dropped: list[int], problem: str | None
) -> None:
    found = dropout_list_problem(1, active, dropped)
    assert (found is None) if problem is None else (found is not None and problem in found)
