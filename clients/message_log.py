"""One line per answered round in the node's log, for the people who run the node.

Flower's own SuperNode log speaks of messages and its own round numbers; this says, per
round of a FedCredit run, what the coordinator asked and whether the node answered or
refused, and how long it took. Nothing of the data or the update is written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from flwr.app import Context, Message

from clients.policy_guard import instruction_config
from federation import protocol as P
from federation.processes import clean


def message_log_mod(msg: Message, ctxt: Context, call_next: Callable[[Message, Context], Message]) -> Message:
    """A Flower mod, outermost: prints ``fedcredit node NAME: flwr run N, PHASE round R: answered (S s)``."""
    started = time.perf_counter()
    config = instruction_config(msg)
    try:
        reply = call_next(msg, ctxt)
    except Exception as exc:
        if config is not None:
            _line(msg, ctxt, config, f"failed: {type(exc).__name__}", started)
        raise
    if config is not None:  # None: a SecAgg+ key-exchange stage, part of the round's one line
        if reply.has_error():
            lines = [clean(line) for line in (reply.error.reason or "").splitlines() if clean(line)]
            _line(msg, ctxt, config, f"refused or failed: {(lines or ['(no reason)'])[-1][:200]}", started)
        else:
            _line(msg, ctxt, config, "answered", started)
    return reply


def _line(msg: Message, ctxt: Context, config: Mapping[str, object], outcome: str, started: float) -> None:
    who = ctxt.node_config.get(P.NODE_NAME, "node")
    what = f"{config.get(P.PHASE, msg.metadata.message_type)} round {config.get(P.ROUND, 0)}"
    elapsed = time.perf_counter() - started
    print(
        f"fedcredit node {who}: flwr run {msg.metadata.run_id}, {what}: {outcome} ({elapsed:.1f} s)",
        flush=True,
    )
