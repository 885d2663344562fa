"""Flower's SecAgg+ node mod behind two checks it does not make itself.

1. The coordinator announces how it expands masks (``federation.flower_secagg``).
   A node that would expand them differently refuses to send its masked update:
   masks that do not cancel would corrupt the sum.
2. In the last stage the coordinator lists which nodes finished (their mask
   seed shares are revealed) and which dropped out (their pairwise-key shares
   are revealed). Flower's mod reveals whatever the lists ask, so a node listed
   in both would have both its secrets rebuilt and its update unmasked. The
   node refuses a list that names a node twice, names any node as both, or
   names this node, which did send its update, as dropped.

A refusal is an error reply (to SecAgg+ a dropout) and an audit entry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from flwr.app import Context, Error, Message
from flwr.client.mod import secaggplus_mod
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS as SECAGG_CONFIGS
from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage

from clients.policy_guard import NodeConfigResolver, instruction_config, node_audit
from federation import protocol as P
from federation.flower_secagg import mask_scheme
from policies.audit import record

SECAGG_REFUSED = 4091  # Error code: the node refuses this SecAgg+ stage


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


class SecureAggregationGuard:
    """A Flower mod: SecAgg+ for the rounds the coordinator runs under it, a pass-through otherwise."""

    def __init__(self, resolve: NodeConfigResolver) -> None:
        self.resolve = resolve

    def _refuse(self, msg: Message, ctxt: Context, rule: str, reason: str) -> Message:
        institution, engine = node_audit(self.resolve(ctxt))
        record(
            engine,
            actor=f"node:{institution}",
            action="secagg.stage",
            resource=f"round-{msg.metadata.group_id}",
            decision="deny",
            rules=[rule],
        )
        return Message(Error(code=SECAGG_REFUSED, reason=f"{rule}: {reason}"), reply_to=msg)

    def __call__(
        self, msg: Message, ctxt: Context, call_next: Callable[[Message, Context], Message]
    ) -> Message:
        secagg = msg.content.config_records.get(SECAGG_CONFIGS)
        if secagg is None:
            return call_next(msg, ctxt)
        config = instruction_config(msg)
        if config is not None and config.get(P.SECAGG_MASKS) != mask_scheme():
            return self._refuse(
                msg,
                ctxt,
                "deny.secagg_mask_scheme",
                f"the coordinator expands SecAgg+ masks with {config.get(P.SECAGG_MASKS)!s}, "
                f"this node with {mask_scheme()}: the masks would not cancel",
            )
        active, dropped = secagg.get(Key.ACTIVE_NODE_ID_LIST), secagg.get(Key.DEAD_NODE_ID_LIST)
        # lists of another type are refused by Flower's own checks
        if secagg.get(Key.STAGE) == Stage.UNMASK and isinstance(active, list) and isinstance(dropped, list):
            problem = dropout_list_problem(msg.metadata.dst_node_id, active, dropped)  # type: ignore[arg-type]
            if problem is not None:
                return self._refuse(msg, ctxt, "deny.secagg_inconsistent_dropouts", problem)
        return secaggplus_mod(msg, ctxt, call_next)
