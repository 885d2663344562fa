"""Per-member request limits: a token bucket per member, refilled at the policy's rate."""

from __future__ import annotations

import math
import threading
import time


class RateLimiter:
    """``per_minute`` requests a minute per member, with bursts up to a minute's worth."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}  # member -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, member: str) -> float:
        """0 when the request may go ahead, else the seconds to wait before the next one may."""
        now = time.monotonic()
        with self._lock:
            tokens, at = self._buckets.get(member, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[member] = (tokens - 1.0, now)
                return 0.0
            self._buckets[member] = (tokens, now)
            return (1.0 - tokens) / self.rate


def retry_after(wait_s: float) -> str:
    """The ``Retry-After`` header: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait_s)))
