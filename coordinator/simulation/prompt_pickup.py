"""The simulation engine hands the coordinator's messages to the virtual nodes promptly.

Flower's simulation engine moves new messages from the SuperLink's state to its
node workers in a loop (``vce_api.add_messages_to_queue``) that asks the state
for every node's next message and then sleeps 0.1 s. In the in-memory state each
ask scans every stored message, so a pass costs nodes x messages: seconds at
1,000 institutions, however few messages are new. A SecAgg+ round has four
message rounds, a plain round one.

This loop sleeps ``poll_seconds`` (10 ms) and, in each pass, walks the stored
messages once under the state's lock and delivers, to each node with one not yet
delivered, the first such message (what Flower's ``get_message_ins(node, limit=1)``
returns), after the same expiry check Flower makes. A pass costs one look at each
stored message, whether it delivers none or a whole message round. A pass that
takes longer (about 1 ms at 1,000 messages in flight) is followed by a wait 20
times as long, so that looking costs at most 5% of a core, as the coordinator's
wait for replies does (``coordinator.prompt_grid``).
"""

from __future__ import annotations

import logging
import threading
import time
from queue import Queue
from typing import Any

import flwr
from flwr.supercore.date import now

from coordinator.prompt_grid import DEFAULT_POLL_SECONDS, POLL_CPU_SHARE

_FLOWER_VERSION = "1.42.0"  # the version whose simulation runtime this patches
_log = logging.getLogger(__name__)


def deliver_new_messages(state: Any, nodes_mapping: dict[int, Any]) -> list[Any] | None:
    """For each simulated node with a message not yet delivered, the first one, marked delivered,
    in the order the messages were stored; None when ``state`` is not Flower's in-memory link
    state (then each node is to be asked with ``get_message_ins``)."""
    store = getattr(state, "message_ins_store", None)
    lock = getattr(state, "lock", None)
    if not isinstance(store, dict) or lock is None:
        return None
    picked: dict[int, Any] = {}
    with lock:
        for message_id, message in list(store.items()):
            node_id = message.metadata.dst_node_id
            if message.metadata.delivered_at != "" or node_id in picked or node_id not in nodes_mapping:
                continue
            state._check_stored_messages({message_id})  # drops it if expired, as get_message_ins does
            if message_id in store:
                picked[node_id] = message
        delivered_at = now().isoformat()
        for message in picked.values():
            message.metadata.delivered_at = delivered_at
    return list(picked.values())


def _pickup_loop(poll_seconds: float) -> Any:
    def add_messages_to_queue(
        state: Any, queue: Queue[Any], nodes_mapping: dict[int, Any], f_stop: threading.Event
    ) -> None:
        while not f_stop.is_set():
            started = time.monotonic()
            delivered = deliver_new_messages(state, nodes_mapping)
            if delivered is None:
                delivered = [
                    m for node_id in nodes_mapping for m in state.get_message_ins(node_id=node_id, limit=1)
                ]
            for message in delivered:
                queue.put(message)
            spent = time.monotonic() - started  # grows with the messages stored: look less often then
            f_stop.wait(max(poll_seconds, spent / POLL_CPU_SHARE))

    return add_messages_to_queue


def install_prompt_pickup(poll_seconds: float = DEFAULT_POLL_SECONDS) -> bool:
    """Patch the simulation engine's pickup loop; returns whether it was patched."""
    if poll_seconds <= 0:
        raise ValueError(f"poll_seconds must be > 0, got {poll_seconds}")
    if flwr.__version__ != _FLOWER_VERSION:
        _log.warning("Flower %s: the simulation engine keeps its 0.1 s message pickup", flwr.__version__)
        return False
    from flwr.server.superlink.fleet.vce import vce_api

    vce_api.add_messages_to_queue = _pickup_loop(poll_seconds)
    return True
