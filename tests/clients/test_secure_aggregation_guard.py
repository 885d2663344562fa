"""The node's checks in front of Flower's SecAgg+ mod: each refusal, and what passes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS as SECAGG_CONFIGS
from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage

from clients.secure_aggregation_guard import (
    SECAGG_REFUSED,
    SecureAggregationGuard,
    dropout_list_problem,
)
from federation import protocol as P
from federation.secagg.flower import FLOWER_MASK_SCHEME, MASK_SCHEME
from federation.secagg.majority import threshold_problem
from policies.audit import entries
from tests.audit_db import session_on
from tests.clients.test_client_app import request_bytes


@pytest.fixture(autouse=True)
def _stamped_messages(task_identity: None) -> None:
    """Every test here builds Flower messages."""


def _message(secagg: dict[str, object] | None, fit_config: dict[str, object] | None) -> Message:
    records: dict[str, ConfigRecord] = {}
    if secagg is not None:
        records[SECAGG_CONFIGS] = ConfigRecord(secagg)  # type: ignore[arg-type]
    if fit_config is not None:
        records["fitins.config"] = ConfigRecord(fit_config)  # type: ignore[arg-type]
    return Message(content=RecordDict(records), dst_node_id=1, message_type=MessageType.TRAIN)


def _collect(announced: str | None, phase: str = P.PHASE_TRAIN, round_: int = 1) -> Message:
    config: dict[str, object] = {P.PHASE: phase, P.ROUND: round_}
    if announced is not None:
        config[P.SECAGG_MASKS] = announced
    return _message({Key.STAGE: Stage.COLLECT_MASKED_VECTORS}, config)


def _context() -> Context:
    return Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})


def _guard(tmp_path: Path) -> tuple[SecureAggregationGuard, str]:
    audit_db = f"sqlite:///{tmp_path / 'node.db'}"
    return SecureAggregationGuard(lambda _: {P.NODE_NAME: "online_bank", P.NODE_AUDIT_DB: audit_db}), audit_db


def _never(msg: Message, ctxt: Context) -> Message:
    raise AssertionError("a refused message must not reach the training or Flower's SecAgg+ mod")


def _refused(guard: SecureAggregationGuard, msg: Message, ctxt: Context, rule: str) -> str:
    reply = guard(msg, ctxt, _never)
    assert reply.has_error() and reply.error.code == SECAGG_REFUSED
    assert reply.error.reason.startswith(f"{rule}: ")
    return reply.error.reason


def _audited(audit_db: str) -> list[tuple[str, str, list[str]]]:
    with session_on(audit_db) as session:
        return [(e.actor, e.decision, json.loads(e.rules)) for e in entries(session)]


def test_masks_other_than_fedcredits_are_refused_and_audited(tmp_path: Path) -> None:
    guard, audit_db = _guard(tmp_path)
    for announced in (FLOWER_MASK_SCHEME, None):
        reason = _refused(guard, _collect(announced), _context(), "deny.secagg_mask_scheme")
        assert MASK_SCHEME in reason
    assert _audited(audit_db) == [("node:online_bank", "deny", ["deny.secagg_mask_scheme"])] * 2


def test_fedcredits_masks_pass_once_per_phase_and_round(tmp_path: Path) -> None:
    guard, audit_db = _guard(tmp_path)
    ctxt = _context()
    for phase, round_ in [(P.PHASE_STATS, 0), (P.PHASE_TRAIN, 1), (P.PHASE_TRAIN, 2)]:
        msg = _collect(MASK_SCHEME, phase, round_)
        assert guard._problem(msg, ctxt, msg.content.config_records[SECAGG_CONFIGS]) is None
    # the same update again: two sums over different groups would give this node's update
    reason = _refused(guard, _collect(MASK_SCHEME, P.PHASE_TRAIN, 2), ctxt, "deny.secagg_repeated_update")
    assert "train/round-2" in reason
    assert _audited(audit_db) == [("node:online_bank", "deny", ["deny.secagg_repeated_update"])]


def test_a_training_message_without_the_promised_secure_aggregation_is_refused(tmp_path: Path) -> None:
    guard, _ = _guard(tmp_path)
    plain = {P.PHASE: P.PHASE_TRAIN, P.TRAINING_REQUEST: request_bytes(secure_aggregation=True)}
    _refused(guard, _message(None, plain), _context(), "deny.secagg_skipped")
    # a run that never promised it goes through to the training
    passed: list[Message] = []
    allowed = {P.PHASE: P.PHASE_TRAIN, P.TRAINING_REQUEST: request_bytes(secure_aggregation=False)}
    msg = _message(None, allowed)
    assert guard(msg, _context(), lambda m, c: passed.append(m) or m) is msg and passed == [msg]


@pytest.mark.parametrize(
    ("shares", "threshold", "refused"),
    [(10, 6, False), (3, 2, False), (2, 2, False), (10, 5, True), (10, 1, True), (3, 4, True)],
)
def test_setup_with_a_threshold_that_protects_nothing_is_refused(
    tmp_path: Path, shares: int, threshold: int, refused: bool
) -> None:
    assert (threshold_problem(shares, threshold) is not None) == refused
    if refused:
        guard, _ = _guard(tmp_path)
        setup = {Key.STAGE: Stage.SETUP, Key.SHARE_NUMBER: shares, Key.THRESHOLD: threshold}
        _refused(guard, _message(setup, None), _context(), "deny.secagg_weak_threshold")


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
    tmp_path: Path, active: list[int], dropped: list[int], problem: str | None
) -> None:
    found = dropout_list_problem(1, active, dropped)
    assert (found is None) if problem is None else (found is not None and problem in found)
    if problem is not None:
        guard, _ = _guard(tmp_path)
        unmask = {Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: active, Key.DEAD_NODE_ID_LIST: dropped}
        _refused(guard, _message(unmask, None), _context(), "deny.secagg_inconsistent_dropouts")
