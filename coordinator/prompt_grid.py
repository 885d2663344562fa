"""A grid that collects replies promptly.

Flower's grids poll for replies at a fixed interval (0.1 s in simulation, 3 s
over gRPC). SecAgg+ exchanges four message rounds per training round, so that
wait is paid four times; polling more often costs the SuperLink one cheap
lookup per interval. A lookup costs time in proportion to the replies awaited, so with
hundreds of institutions the interval stretches to keep asking under 5% of a core. The
cost is taken from lookups that found nothing: one that brought replies also fetched
their content (over the network, tenths of a second), and stretching by that would
leave the other replies waiting for seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

DEFAULT_POLL_SECONDS = 0.01
POLL_CPU_SHARE = 0.05  # the most of a core the wait for replies may spend asking for them


class PromptGrid(Grid):
    """Delegates to Flower's grid; only the wait for replies differs."""

    def __init__(self, inner: Grid, poll_seconds: float = DEFAULT_POLL_SECONDS) -> None:
        if poll_seconds <= 0:
            raise ValueError(f"poll_seconds must be > 0, got {poll_seconds}")
        self.inner = inner
        self.poll_seconds = poll_seconds

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self.inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        waiting = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        asking_per_reply = 0.0  # what a lookup that found nothing cost, per reply awaited
        while waiting:
            asked = time.monotonic()
            arrived = list(self.pull_messages(waiting))
            if not arrived:  # a lookup that brought replies also paid for fetching them: not counted
                asking_per_reply = (time.monotonic() - asked) / len(waiting)
            replies.extend(arrived)
            waiting.difference_update(m.metadata.reply_to_message_id for m in arrived)
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(max(self.poll_seconds, asking_per_reply * len(waiting) / POLL_CPU_SHARE))
        return replies
