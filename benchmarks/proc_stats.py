"""What /proc says of a benchmark's processes: CPU time, the process tree (Linux)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    name: str
    ppid: int
    session: int
    cpu_seconds: float  # user + system


def stat_of(pid: int) -> ProcStat | None:
    """What /proc/<pid>/stat says of ``pid``; None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, rest = raw[raw.index("(") + 1 : raw.rindex(")")], raw[raw.rindex(")") + 2 :].split()
    # fields 4 (ppid), 6 (session), 14 and 15 (utime, stime in clock ticks)
    return ProcStat(name, int(rest[1]), int(rest[3]), (int(rest[11]) + int(rest[12])) / CLOCK_TICKS)


def process_tree(root: int, session: int | None = None) -> dict[int, ProcStat]:
    """``root``, its descendants and the processes in ``session``."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (found := stat_of(int(entry))) is not None:
            stats[int(entry)] = found
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        children.setdefault(stat.ppid, []).append(pid)
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in stats and pid not in tree:
            tree.add(pid)
            todo.extend(children.get(pid, []))
    if session is not None:
        tree |= {pid for pid, stat in stats.items() if stat.session == session}
    return {pid: stats[pid] for pid in tree}


def cpu_seconds(root: int) -> float:
    """User and system CPU seconds of ``root`` and its descendants so far."""
    return sum(stat.cpu_seconds for stat in process_tree(root).values())
