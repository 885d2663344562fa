"""The simulation engine hands the coordinator's messages to the virtual nodes promptly.

Flower's simulation engine moves new messages from the SuperLink's state to
its node workers in a loop that sleeps 0.1 s between passes
(``vce_api.add_messages_to_queue``), so every message round waits up to 0.1 s
before any node starts. A SecAgg+ round has four message rounds, a plain round
one. This replaces that loop with the same loop on a shorter interval. Each
pass is one lookup per node in the in-memory state, and a lookup scans the
messages in flight: cheap for the tens of institutions simulated here, a
busier driver for hundreds (pass a longer interval there).
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


def _pickup_loop(poll_seconds: float) -> Any:
    def add_messages_to_queue(
        state: Any, queue: Queue[Any], nodes_mapping: dict[int, Any], f_stop: threading.Event
    ) -> None:
        while not f_stop.is_set():
            for node_id in nodes_mapping:
                for message in state.get_message_ins(node_id=node_id, limit=1):
                    queue.put(message)
            f_stop.wait(poll_seconds)

    return add_messages_to_queue


def install_prompt_pickup(poll_seconds: float = DEFAULT_POLL_SECONDS) -> bool:
    """Patch the simulation engine's pickup interval; returns whether it was patched."""
    if poll_seconds <= 0:
        raise ValueError(f"poll_seconds must be > 0, got {poll_seconds}")
    if flwr.__version__ != _FLOWER_VERSION:
        _log.warning("Flower %s: the simulation engine keeps its 0.1 s message pickup", flwr.__version__)
        return False
    from flwr.server.superlink.fleet.vce import vce_api

    vce_api.add_messages_to_queue = _pickup_loop(poll_seconds)
    return True
