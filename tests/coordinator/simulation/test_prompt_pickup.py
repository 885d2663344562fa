"""The simulation engine's message pickup, patched to a shorter interval."""

from __future__ import annotations

import threading
import time
from collections import deque
from queue import Queue
from typing import Any

import pytest
from flwr.server.superlink.fleet.vce import vce_api

from coordinator.simulation.prompt_pickup import install_prompt_pickup


class _State:
    """The one LinkState call the pickup loop makes: pending messages for a node."""

    def __init__(self) -> None:
        self.pending: dict[int, deque[str]] = {1: deque(), 2: deque()}  # append/popleft are thread-safe

    def get_message_ins(self, node_id: int, limit: int) -> list[str]:
        pending = self.pending[node_id]
        return [pending.popleft() for _ in range(min(limit, len(pending)))]


def test_messages_reach_the_node_queue_within_the_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vce_api, "add_messages_to_queue", vce_api.add_messages_to_queue)  # restored after
    assert install_prompt_pickup(0.005)
    state, queue, stop = _State(), Queue[Any](), threading.Event()
    loop = threading.Thread(target=vce_api.add_messages_to_queue, args=(state, queue, {1: 0, 2: 1}, stop))
    loop.start()
    try:
        waits = []
        for i in range(10):
            time.sleep(0.013)
            started = time.perf_counter()
            state.pending[1 + i % 2].append(f"train-{i}")
            assert queue.get(timeout=1.0) == f"train-{i}"
            waits.append(time.perf_counter() - started)
        # Flower's own loop sleeps 0.1 s between passes: 0.05 s on average
        assert sum(waits) / len(waits) < 0.03
    finally:
        stop.set()
        loop.join(timeout=1.0)
    assert not loop.is_alive()


def test_a_non_positive_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="poll_seconds"):
        install_prompt_pickup(0)
