"""The coordinator's wait for replies: prompt when replies are near, sparing when many are awaited."""

from __future__ import annotations

import time
from collections.abc import Iterable
from types import SimpleNamespace
from uuid import uuid4

import pytest
from flwr.app import Message, Metadata, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from coordinator import prompt_grid
from coordinator.prompt_grid import PromptGrid


class Clock:
    """Virtual time: ``sleep`` advances it, nothing else does, so a loaded machine changes nothing."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    virtual = Clock()
    monkeypatch.setattr(
        prompt_grid, "time", SimpleNamespace(monotonic=virtual.monotonic, sleep=virtual.sleep)
    )
    return virtual


def reply_to(message_id: str) -> Message:
    metadata = Metadata(
        run_id=1,
        message_id=str(uuid4()),
        src_node_id=5,
        dst_node_id=0,
        reply_to_message_id=message_id,
        group_id="1",
        created_at=time.time(),
        ttl=60.0,
        message_type="train",
    )
    return Message(content=RecordDict(), metadata=metadata)  # type: ignore[call-overload]


class ScriptedLink(Grid):
    """A SuperLink seen from the ServerApp: each reply is ready at its time; a lookup costs
    ``per_awaited`` seconds per reply asked about, and ``per_fetched`` per reply it returns."""

    def __init__(
        self, clock: Clock, ready_after: list[float], per_awaited: float = 0.0, per_fetched: float = 0.0
    ) -> None:
        self.clock = clock
        self.ready_after, self.per_awaited, self.per_fetched = ready_after, per_awaited, per_fetched
        self.ready_at: dict[str, float] = {}
        self.lookups = 0

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        now = self.clock.monotonic()
        ids = [str(uuid4()) for _ in messages]
        self.ready_at = {i: now + after for i, after in zip(ids, self.ready_after, strict=True)}
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.lookups += 1
        asked = list(message_ids)
        ready = [i for i in asked if self.ready_at[i] <= self.clock.monotonic()]
        self.clock.sleep(self.per_awaited * len(asked) + self.per_fetched * len(ready))
        for i in ready:
            del self.ready_at[i]
        return [reply_to(i) for i in ready]

    def create_message(self, *args: object, **kwargs: object) -> Message:
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        raise NotImplementedError

    def set_run(self, run_id: int) -> None:
        raise NotImplementedError

    @property
    def run(self) -> Run:
        raise NotImplementedError


def collect(link: ScriptedLink) -> tuple[int, float]:
    started = link.clock.monotonic()
    replies = PromptGrid(link).send_and_receive([reply_to("") for _ in link.ready_after])
    return len(list(replies)), link.clock.monotonic() - started


def test_fetching_one_reply_does_not_hold_up_the_next(clock: Clock) -> None:
    # over the network a lookup that brings a reply also fetches its arrays: 0.3 s here
    link = ScriptedLink(clock, [0.05, 0.5, 0.55], per_awaited=0.0005, per_fetched=0.3)
    got, seconds = collect(link)
    assert got == 3
    # the last reply is ready at 0.55 s, and three fetches cost 0.9 s; stretching the wait by
    # the fetches (0.3 s / 5%) would have left the other two waiting 6 s
    assert seconds < 2.0


def test_many_awaited_replies_are_asked_about_sparingly(clock: Clock) -> None:
    awaited = 1000
    link = ScriptedLink(clock, [0.6] * awaited, per_awaited=0.000005)  # a lookup costs 5 ms at 1,000
    got, seconds = collect(link)
    assert got == awaited
    asking = (link.lookups - 1) * awaited * link.per_awaited
    assert asking / seconds <= prompt_grid.POLL_CPU_SHARE * 1.01  # at most 5% of the wait spent asking
    # yet the replies are taken within one interval (5 ms / 5% = 0.1 s) of their arrival
    assert seconds <= 0.6 + 0.1 + 0.01
