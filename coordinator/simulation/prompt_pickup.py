"""The simulation engine hands the coordinator's messages to the virtual nodes promptly.

Flower's simulation engine moves new messages from the SuperLink's state to its
node workers in a loop (``vce_api.add_messages_to_queue``) that asks the state
for every node's next message and then sleeps 0.1 s. In the in-memory state each
ask scans every stored message, so a pass costs nodes x messages: seconds at
1,000 institutions, however few messages are new. A SecAgg+ round has four
message rounds, a plain round one.

This loop sleeps ``poll_seconds`` (10 ms) and, in each pass, first looks once
through the stored messages for the nodes with one not yet delivered, then asks
Flower's ``get_message_ins`` (which checks expiry and marks delivery) only for
those. An idle pass costs one look at each stored message; a message round of
n messages still costs Flower's scans for its n nodes once (about n^2 / 2 cheap
checks: ~1 s at 1,000 nodes).
"""

from __future__ import annotations

import logging
import threading
from queue import Queue
from typing import Any

import flwr

from coordinator.prompt_grid import DEFAULT_POLL_SECONDS

_FLOWER_VERSION = "1.42.0"  # the version whose simulation runtime this patches
_log = logging.getLogger(__name__)


def nodes_with_new_messages(state: Any, nodes_mapping: dict[int, Any]) -> list[int] | None:
    """The simulated nodes with a message not yet delivered, in the order the messages were stored;
    None when ``state`` is not Flower's in-memory link state (then every node is to be asked)."""
    store = getattr(state, "message_ins_store", None)
    lock = getattr(state, "lock", None)
    if not isinstance(store, dict) or lock is None:
        return None
    with lock:
        found = {
            m.metadata.dst_node_id: None
            for m in store.values()
            if m.metadata.delivered_at == "" and m.metadata.dst_node_id in nodes_mapping
        }
    return list(found)


def _pickup_loop(poll_seconds: float) -> Any:
    def add_messages_to_queue(
        state: Any, queue: Queue[Any], nodes_mapping: dict[int, Any], f_stop: threading.Event
    ) -> None:
        while not f_stop.is_set():
            pending = nodes_with_new_messages(state, nodes_mapping)
            for node_id in nodes_mapping if pending is None else pending:
                for message in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(message)
            f_stop.wait(poll_seconds)

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
