"""Per-model set-up that scoring looks up on every request, found by the objects' identity.

``functools.lru_cache`` hashes its arguments on every call, and a frozen dataclass recomputes its
hash each time: for a dataset schema (every column, every field) that cost more than scoring one
applicant. :func:`by_identity` answers calls with the very same argument objects from a small
table first, and falls back to the wrapped (hash-keyed) cache for equal but distinct ones.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

R = TypeVar("R")
SIZE = 64


def by_identity(fn: Callable[..., R]) -> Callable[..., R]:
    """``fn`` (positional arguments only) memoized by its arguments' identity."""
    table: dict[tuple[int, ...], tuple[tuple[Any, ...], R]] = {}

    @functools.wraps(fn)
    def call(*args: Any) -> R:
        key = tuple(map(id, args))
        hit = table.get(key)
        if hit is not None and all(a is b for a, b in zip(hit[0], args, strict=True)):
            return hit[1]
        value = fn(*args)
        if len(table) >= SIZE:
            table.clear()
        table[key] = (args, value)  # the arguments are kept: their ids cannot be reused meanwhile
        return value

    return call
