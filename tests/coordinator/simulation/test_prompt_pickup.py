"""The simulation engine's message pickup, patched: prompt, and one pass over the stored messages."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from queue import Empty, Queue
from typing import Any
from uuid import uuid4

import pytest
from flwr.app import Message, Metadata, RecordDict
from flwr.common.constant import HEARTBEAT_INTERVAL_INF, NOOP_ACCOUNT_NAME, NOOP_FLWR_AID, SUPERLINK_NODE_ID
from flwr.proto.task_pb2 import Task
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState, RunRecord
from flwr.supercore.constant import NOOP_FEDERATION_ID
from flwr.supercore.date import now
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.superlink.federation import NoOpFederationManager

from coordinator.simulation.prompt_pickup import deliver_new_messages, install_prompt_pickup

RUN_ID = 7


class CountingState(InMemoryLinkState):
    """Flower's in-memory link state, as the simulation engine sets it up; counts the pickup's lookups."""

    def __init__(self, nodes: int) -> None:
        super().__init__(NoOpFederationManager(), ObjectStoreFactory().store())
        run = Run.create_empty(run_id=RUN_ID)
        run.primary_task_id, run.federation_id = 1, NOOP_FEDERATION_ID
        self.run_ids[RUN_ID] = RunRecord(run=run)
        self.task_store[1] = Task(task_id=1, run_id=RUN_ID)
        self.mapping: dict[int, int] = {}  # node id -> partition id, as vce_api registers them
        for partition in range(nodes):
            node_id = self.create_node(
                NOOP_FLWR_AID, NOOP_ACCOUNT_NAME, uuid4().bytes * 2, heartbeat_interval=HEARTBEAT_INTERVAL_INF
            )
            self.acknowledge_node_heartbeat(node_id=node_id, heartbeat_interval=HEARTBEAT_INTERVAL_INF)
            self.mapping[node_id] = partition
        self.asked: list[int] = []

    def get_message_ins(self, node_id: int, limit: int | None, *, run_id: int | None = None) -> list[Message]:
        self.asked.append(node_id)
        return super().get_message_ins(node_id, limit, run_id=run_id)

    def push(self, node_id: int, ttl: float = 600.0) -> str:
        """Store an instruction for ``node_id`` as the coordinator's grid does."""
        metadata = Metadata(
            run_id=RUN_ID,
            message_id=str(uuid4()),
            src_node_id=SUPERLINK_NODE_ID,
            dst_node_id=node_id,
            reply_to_message_id="",
            group_id="1",
            created_at=now().timestamp(),
            ttl=ttl,
            message_type="train",
        )
        # the metadata-complete form Flower uses internally (not among the typed overloads)
        message = Message(content=RecordDict(), metadata=metadata)  # type: ignore[call-overload]
        stored = self.store_message_ins(message)
        assert stored is not None
        return stored


@pytest.fixture
def pickup(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], Any]:
    monkeypatch.setattr(vce_api, "add_messages_to_queue", vce_api.add_messages_to_queue)  # restored after

    def install(poll_seconds: float) -> Any:
        assert install_prompt_pickup(poll_seconds)
        return vce_api.add_messages_to_queue

    return install


@contextmanager
def running(loop: Any, state: CountingState) -> Iterator[Queue[Message]]:
    queue: Queue[Message] = Queue()
    stop = threading.Event()
    thread = threading.Thread(target=loop, args=(state, queue, state.mapping, stop), daemon=True)
    thread.start()
    try:
        yield queue
    finally:
        stop.set()
        thread.join(timeout=2.0)
    assert not thread.is_alive()


def test_messages_reach_their_node_once(pickup: Callable[[float], Any]) -> None:
    state = CountingState(nodes=20)
    nodes = list(state.mapping)
    with running(pickup(0.005), state) as queue:
        sent = {state.push(node): node for node in nodes[3:8]}
        got = [queue.get(timeout=2.0) for _ in sent]
        time.sleep(0.05)  # several more passes: nothing is handed out twice
        with pytest.raises(Empty):
            queue.get_nowait()
    assert {m.metadata.message_id: m.metadata.dst_node_id for m in got} == sent
    assert all(m.metadata.delivered_at != "" for m in got)  # marked, as Flower's get_message_ins does
    assert set(state.message_ins_store) == set(sent)  # delivered, kept until the replies are pulled


def test_no_node_is_asked_in_turn(pickup: Callable[[float], Any]) -> None:
    state = CountingState(nodes=50)
    node = list(state.mapping)[17]
    with running(pickup(0.002), state) as queue:
        time.sleep(0.03)  # idle passes, nothing stored
        state.push(node)
        assert queue.get(timeout=2.0).metadata.dst_node_id == node
        time.sleep(0.03)  # idle passes with a delivered message in the store
    assert state.asked == []  # Flower's own loop asks all 50 nodes in every pass


def test_a_pass_delivers_what_flowers_get_message_ins_would() -> None:
    ours, flowers = CountingState(nodes=30), CountingState(nodes=30)
    rng = random.Random(3)
    nodes = list(range(30))
    for _ in range(60):  # some nodes get several messages, some none
        partition = rng.choice(nodes)
        for state in (ours, flowers):
            node_id = next(n for n, p in state.mapping.items() if p == partition)
            state.push(node_id)
    for _ in range(4):  # one message per node per pass, first stored first
        delivered = deliver_new_messages(ours, ours.mapping)
        expected = [m for n in flowers.mapping for m in flowers.get_message_ins(node_id=n, limit=1)]
        assert delivered is not None
        assert sorted(ours.mapping[m.metadata.dst_node_id] for m in delivered) == sorted(
            flowers.mapping[m.metadata.dst_node_id] for m in expected
        )
        assert [list(ours.message_ins_store).index(m.metadata.message_id) for m in delivered] == sorted(
            list(flowers.message_ins_store).index(m.metadata.message_id) for m in expected
        )


def test_an_expired_message_is_dropped_by_flowers_check(pickup: Callable[[float], Any]) -> None:
    state = CountingState(nodes=5)
    node = list(state.mapping)[2]
    state.push(node, ttl=0.05)
    time.sleep(0.1)
    with running(pickup(0.005), state) as queue:
        deadline = time.monotonic() + 5.0
        while state.message_ins_store and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(Empty):
            queue.get_nowait()
    assert state.message_ins_store == {}  # Flower's check deleted it on its TTL


def test_messages_reach_the_node_queue_within_the_interval(pickup: Callable[[float], Any]) -> None:
    state = CountingState(nodes=2)
    nodes = list(state.mapping)
    with running(pickup(0.005), state) as queue:
        waits = []
        for i in range(10):
            time.sleep(0.013)
            started = time.perf_counter()
            message_id = state.push(nodes[i % 2])
            assert queue.get(timeout=5.0).metadata.message_id == message_id
            waits.append(time.perf_counter() - started)
    # Flower's own loop sleeps 0.1 s between passes: 0.05 s on average; the median, so that one
    # pass a loaded machine stalls (the next wait stretches with it) does not decide
    assert sorted(waits)[len(waits) // 2] < 0.03


def test_a_state_without_the_in_memory_store_has_every_node_asked() -> None:
    assert deliver_new_messages(object(), {1: 0, 2: 1}) is None


def test_a_non_positive_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="poll_seconds"):
        install_prompt_pickup(0)
