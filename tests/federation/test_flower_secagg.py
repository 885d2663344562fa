"""Flower's SecAgg+ runs with FedCredit's secret sharing and masks, on node and coordinator alike."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS as SECAGG_CONFIGS
from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage

import clients.client_app
import coordinator.secure_aggregation  # noqa: F401  (installs at the coordinator)
from federation import protocol as P
from federation import secure_masks, shamir
from federation.flower_secagg import MASK_SCHEME, install_into_flower, mask_scheme


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


def test_a_node_refuses_masks_the_coordinator_expands_differently(task_identity: None) -> None:
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    reached: list[Message] = []
    call_next: Callable[[Message, Context], Message] = lambda m, c: reached.append(m) or m  # noqa: E731
    for announced in ("flower-mt19937-32bit", None):
        reply = clients.client_app.secure_aggregation_mod(_masked_vector_stage(announced), context, call_next)
        assert reply.has_error() and reply.error.code == clients.client_app.SECAGG_MISMATCH
        assert "would not cancel" in reply.error.reason
    assert not reached  # neither the training nor Flower's SecAgg+ mod ran
