"""Flower's SuperNode, with its waits between a message and the next made short.

Flower 1.42's SuperNode loop (``flwr.supernode.start_client_internal``) asks the SuperLink for
a message; when there is none it waits 3 s; when there is one it hands it to a task, looks for
the task's reply every 0.5 s, sends it and asks again. A SecAgg+ round is four messages in a
row, and the next one exists only once every node has replied to the last: the node that
replies last asks too early and waits its 3 s, every message. Here:

* the reply is looked for every 20 ms, and a message's content retried within 50 ms
  (``federation.flower_pulls``) instead of after 1, 2, 4 s;
* after a reply the node asks for the next message after 0.1 s, then waits 1.5 times longer
  each time it finds none, up to Flower's 3 s: about seven more requests per message to the
  SuperLink, in exchange for most of a poll interval per message (the next message comes once
  the slowest node has replied). An idle node asks every 3 s, as Flower has it.

``fedcredit node start`` runs this in place of ``flower-supernode``, with the same arguments.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import flwr

from federation.flower_pulls import prompt_object_pulls

_FLOWER_VERSION = "1.42.0"  # the version whose reply wait this shortens
FLOWER_REPLY_WAIT_S = 0.5
FLOWER_POLL_S = 3
REPLY_WAIT_S = 0.02
FOLLOW_UP_FIRST_S = 0.1  # after a reply, the first wait before asking for the next message
FOLLOW_UP_GROWTH = 1.5  # each empty answer after that waits this much longer, up to FLOWER_POLL_S
_log = logging.getLogger(__name__)


class _ShortWaits:
    """Stands in for the ``time`` module inside Flower's SuperNode loop: only its two waits change."""

    def __init__(self) -> None:
        self.next_poll_s = float(FLOWER_POLL_S)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        if seconds == FLOWER_REPLY_WAIT_S:  # a task's reply is on its way: it is sent right after
            self.next_poll_s = FOLLOW_UP_FIRST_S
            time.sleep(REPLY_WAIT_S)
        elif seconds == FLOWER_POLL_S:  # no message: ask again soon after a reply, then back off
            time.sleep(self.next_poll_s)
            self.next_poll_s = min(float(FLOWER_POLL_S), self.next_poll_s * FOLLOW_UP_GROWTH)
        else:
            time.sleep(seconds)


def prompt_replies() -> bool:
    """Shorten the SuperNode's waits after a message; whether Flower's were replaced."""
    if flwr.__version__ != _FLOWER_VERSION:
        _log.warning("Flower %s: the SuperNode keeps its own waits", flwr.__version__)
        return False
    from flwr.supernode import start_client_internal

    start_client_internal.time = _ShortWaits()  # type: ignore[assignment,attr-defined]
    return True


def main() -> int:
    prompt_object_pulls()
    prompt_replies()
    from flwr.supernode.cli import flower_supernode

    sys.argv[0] = "flower-supernode"
    flower_supernode()
    return 0


if __name__ == "__main__":
    sys.exit(main())
