"""What the deployment tests share: a signed federation policy naming their nodes, and waiting
for what they start (the ``processes`` fixture that stops it is in ``tests/conftest.py``)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from coordinator.simulation.nodes import SimulatedNode
from policies.signing import read_public_keys, sign_policy

POLICY = """format_version = 1
kind = "federation"
id = "federation.{name}"
version = 1
owner = "test"
effective = 2026-01-01
expires = 2099-12-31

[[members]]
name = "coordinator"
role = "coordinator"
public_key = "{coordinator}"
{holders}
[dataset]
schema = "sme"
schema_version = "1.0.0"

[aggregation]
strategy = "fedavg"
rounds = {rounds}
max_rounds = 5
min_institutions = {min_institutions}

[privacy]
secure_aggregation = {secure_aggregation}
delta = 1e-5

[scoring]
allowed_members = [{scorers}]
allowed_purposes = ["credit_underwriting"]
require_consent_reference = false
requests_per_minute = 600
"""


def write_federation_policy(
    path: Path,
    signer: Path,
    coordinator: str,
    nodes: Sequence[SimulatedNode],
    *,
    name: str,
    rounds: int,
    min_institutions: int,
    secure_aggregation: bool,
    scorers: Sequence[str] = (),
) -> Path:
    """A federation policy naming ``nodes`` as data holders (by their node keys), signed by ``signer``."""
    holders = "".join(
        f'\n[[members]]\nname = "{n.institution}"\nrole = "data_holder"\n'
        f'public_key = "{read_public_keys(n.node_key.with_suffix(".pub"))[0]}"\n'  # type: ignore[union-attr]
        for n in nodes
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        POLICY.format(
            name=name,
            coordinator=coordinator,
            holders=holders,
            rounds=rounds,
            min_institutions=min_institutions,
            secure_aggregation=str(secure_aggregation).lower(),
            scorers=", ".join(f'"{s}"' for s in scorers),
        ),
        encoding="utf-8",
    )
    sign_policy(path, signer)
    return path


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
