"""Flower's SecAgg+ node mod behind checks it does not make itself.

Flower's SecAgg+ trusts the coordinator to follow the protocol. The node
refuses, with an error reply (to SecAgg+ a dropout) and an audit entry:

- ``deny.secagg_skipped``: a training message without SecAgg+ although the
  signed training request promises it (the update would leave unmasked);
- ``deny.secagg_weak_threshold``: a reconstruction threshold below 2 or not
  more than half of the shares (a few shares, or two disjoint groups of nodes,
  would then rebuild a node's secrets);
- ``deny.secagg_mask_scheme``: masks not expanded with
  ``federation.secagg.flower.MASK_SCHEME`` at the coordinator or here (other
  masks would not cancel, or would come from a 32-bit seed);
- ``deny.secagg_repeated_update``: a second masked update for the same phase
  and round of a run (two sums over different groups of nodes give one
  node's update by subtraction);
- ``deny.secagg_inconsistent_dropouts``: an unmask stage that names a node
  twice, as both finished and dropped out, or names this node, which did send
  its update, as dropped (Flower's mod would hand over both of a node's
  secrets).

What a single node cannot see (a coordinator that forwards different keys or
different dropout lists to different nodes) is not caught here; see
docs/privacy.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

from flwr.app import ConfigRecord, Context, Error, Message
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS as SECAGG_CONFIGS
from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage

from clients.policy_guard import NodeConfigResolver, instruction_config, node_audit, node_key, node_record
from federation import protocol as P
from federation.secagg.flower import MASK_SCHEME, mask_scheme
from federation.secagg.majority import threshold_problem
from policies.decisions import SignedRequest

SECAGG_REFUSED = 4091  # Error code: the node refuses this SecAgg+ stage
_ANSWERED = "fedcredit.secagg-answered"  # context state: the (phase, round) pairs already sent masked


def dropout_list_problem(node_id: int, active: Sequence[int], dropped: Sequence[int]) -> str | None:
    """Why the unmask stage's lists would reveal more than SecAgg+ allows; None if they would not."""
    if len(set(active)) != len(active) or len(set(dropped)) != len(dropped):
        return "the lists of finished and dropped-out nodes name a node twice"
    both = sorted(set(active) & set(dropped))
    if both:
        return f"node(s) {both} are listed both as finished and as dropped out"
    if node_id in dropped:
        return "this node sent its masked update but is listed as dropped out"
    return None


def _promises_secure_aggregation(config: ConfigRecord) -> bool:
    raw = config.get(P.TRAINING_REQUEST)
    try:
        return isinstance(raw, bytes) and SignedRequest.from_wire(raw).request.secure_aggregation
    except ValueError:
        return False  # the policy guard, which runs first, refuses a message without a valid request


class SecureAggregationGuard:
    """A Flower mod: SecAgg+ for the rounds the coordinator runs under it, a pass-through otherwise."""

    def __init__(self, resolve: NodeConfigResolver) -> None:
        self.resolve = resolve

    def _refuse(self, msg: Message, ctxt: Context, rule: str, reason: str) -> Message:
        cfg = self.resolve(ctxt)
        institution, engine = node_audit(cfg)
        node_record(
            engine,
            node_key(cfg),
            actor=f"node:{institution}",
            action="secagg.stage",
            resource=f"round-{msg.metadata.group_id}",
            decision="deny",
            rules=[rule],
        )
        return Message(Error(code=SECAGG_REFUSED, reason=f"{rule}: {reason}"), reply_to=msg)

    @staticmethod
    def _problem(msg: Message, ctxt: Context, secagg: ConfigRecord | None) -> tuple[str, str] | None:
        config = instruction_config(msg) if msg.metadata.message_type == MessageType.TRAIN else None
        if secagg is None:
            if config is not None and _promises_secure_aggregation(config):
                return (
                    "deny.secagg_skipped",
                    "the run promises secure aggregation; this training message has none",
                )
            return None
        stage = secagg.get(Key.STAGE)
        if stage == Stage.SETUP:
            shares, threshold = secagg.get(Key.SHARE_NUMBER), secagg.get(Key.THRESHOLD)
            if not isinstance(shares, int) or not isinstance(threshold, int):
                return None  # Flower's own checks refuse other types
            problem = threshold_problem(shares, threshold)
            return None if problem is None else ("deny.secagg_weak_threshold", problem)
        if stage == Stage.UNMASK:
            active, dropped = secagg.get(Key.ACTIVE_NODE_ID_LIST), secagg.get(Key.DEAD_NODE_ID_LIST)
            if isinstance(active, list) and isinstance(dropped, list):  # else Flower's checks refuse
                problem = dropout_list_problem(msg.metadata.dst_node_id, active, dropped)  # type: ignore[arg-type]
                return None if problem is None else ("deny.secagg_inconsistent_dropouts", problem)
            return None
        if config is None:
            return None
        announced, here = config.get(P.SECAGG_MASKS), mask_scheme()
        if announced != MASK_SCHEME or here != MASK_SCHEME:
            return (
                "deny.secagg_mask_scheme",
                f"masks expanded with {announced!s} at the coordinator and {here} here; "
                f"both must be {MASK_SCHEME}",
            )
        update = f"{config.get(P.PHASE)!s}/round-{config.get(P.ROUND, '-')!s}"
        answered = ctxt.state.config_records.setdefault(_ANSWERED, ConfigRecord({"updates": []}))
        sent = cast(list[str], answered["updates"])
        if update in sent:
            return "deny.secagg_repeated_update", f"this node already sent its masked update for {update}"
        answered["updates"] = [*sent, update]
        return None

    def __call__(
        self, msg: Message, ctxt: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        secagg = msg.content.config_records.get(SECAGG_CONFIGS)
        problem = self._problem(msg, ctxt, secagg)
        if problem is not None:
            return self._refuse(msg, ctxt, *problem)
        return call_next(msg, ctxt) if secagg is None else secaggplus_mod(msg, ctxt, call_next)
