"""Child processes the commands start: each in its own process group, stopped by its PID.

``flower-superlink`` and ``flower-supernode`` start children of their own (the apps, SuperExec);
stopping the whole group stops them too, so a command never leaves a process behind.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from federation.errors import FedCreditError

BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode, flwr: beside this Python


def flower_env(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for Flower's programs: no telemetry, no update checks, ``FLWR_HOME`` given."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_HOME": str(flwr_home),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # flower-superexec, flwr-serverapp
        **(extra or {}),
    }


def start(command: Sequence[str], env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` in a new process group, its output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            list(command), env=dict(env), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(process: subprocess.Popen[bytes], grace_s: float = 15.0) -> int:
    """Stop ``process`` and its group (SIGTERM, then SIGKILL after ``grace_s``); its exit code."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        except ProcessLookupError:
            process.wait()
    return process.returncode


def program(process: subprocess.Popen[bytes]) -> str:
    """The name of the program ``process`` runs."""
    args = process.args
    first = args[0] if isinstance(args, list | tuple) else args
    return Path(str(first)).name


def wait_for_port(
    host: str, port: int, process: subprocess.Popen[bytes], log: Path, seconds: float = 60.0
) -> None:
    """Wait until ``host:port`` accepts connections; a one-line error if ``process`` exits first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FedCreditError(f"{program(process)} exited ({process.returncode}): {last_line(log)}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise FedCreditError(f"nothing listens on {host}:{port} after {seconds:.0f} s; see {log}")


_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def clean(line: str) -> str:
    """A log line without colour codes or surrounding space."""
    return _COLOUR.sub("", line).strip()


def last_line(log: Path) -> str:
    """The last meaningful line of a log, for a one-line error."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {log})"
    for line in reversed(lines):
        text = clean(line)
        if text and not text.startswith("INFO"):
            return text
    return "(empty log)"


class Stopped(FedCreditError):
    """A supervised process stopped on its own."""

    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        super().__init__(f"{program(process)} stopped (exit code {process.returncode}): {last_line(log)}")
        self.returncode = process.returncode


def supervise(started: Sequence[tuple[subprocess.Popen[bytes], Path]]) -> None:
    """Block until SIGINT or SIGTERM (then return: the caller stops what it started), or until one
    of ``started`` exits on its own (:class:`Stopped`)."""
    asked = {"stop": False}

    def ask(*_: object) -> None:
        asked["stop"] = True

    signal.signal(signal.SIGTERM, ask)
    signal.signal(signal.SIGINT, ask)
    while not asked["stop"]:
        for process, log in started:
            if process.poll() is not None:
                raise Stopped(process, log)
        time.sleep(0.5)
