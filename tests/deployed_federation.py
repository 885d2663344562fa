"""What the deployment tests share beyond ``coordinator.local_deployment``: waiting for what they
start and crashing it (the ``processes`` fixture that stops it is in ``tests/conftest.py``)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def reachable(address: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((address, port)) == 0


def wait_until(
    what: str, ready: object, proc: subprocess.Popen[bytes], log: Path, seconds: float = 120
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(ready) and ready():
            return
        assert proc.poll() is None, f"{what} exited: " + log.read_text(errors="replace")[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"{what} not ready after {seconds} s: " + log.read_text(errors="replace")[-3000:])


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process descended from it, whatever session each runs in."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def crash(pid: int) -> None:
    """SIGKILL ``pid`` and all its descendants at once: a machine that loses power, not a clean stop."""
    for member in process_tree(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(member, signal.SIGKILL)
