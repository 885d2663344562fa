"""Prometheus metrics of the service, in the text exposition format (no extra dependency)."""

from __future__ import annotations

import bisect
import itertools
import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # per bucket, not cumulative (the last: over them all)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1  # the first bound >= value
        self.total += 1
        self.sum += value

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [
            f'{name}_bucket{{{labels}{sep}le="{b}"}} {c}'
            for b, c in zip(self.buckets, itertools.accumulate(self.counts[:-1]), strict=True)
        ]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        suffix = f"{{{labels}}}" if labels else ""
        return [*out, f"{name}_sum{suffix} {self.sum}", f"{name}_count{suffix} {self.total}"]


class Metrics:
    """Requests by route and status, latency by route, refusals by reason, audit commit lag."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.refusals: dict[str, int] = defaultdict(int)
        self.audit_lag = Histogram(LAG_BUCKETS)
        self.audited = 0

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, status)] += 1
            histogram = self.latency.get(route)
            if histogram is None:
                histogram = self.latency[route] = Histogram(LATENCY_BUCKETS)
            histogram.observe(seconds)

    def refusal(self, reason: str) -> None:
        with self._lock:
            self.refusals[reason] += 1

    def committed(self, entries: int, lag_s: float) -> None:
        with self._lock:
            self.audited += entries
            self.audit_lag.observe(lag_s)

    def exposition(self, backlog: int) -> str:
        with self._lock:
            lines = [
                "# HELP fedcredit_requests_total Requests by method, route and status.",
                "# TYPE fedcredit_requests_total counter",
            ]
            lines += [
                f'fedcredit_requests_total{{method="{m}",route="{r}",status="{s}"}} {n}'
                for (m, r, s), n in sorted(self.requests.items())
            ]
            lines += [
                "# HELP fedcredit_request_seconds Time from request to response.",
                "# TYPE fedcredit_request_seconds histogram",
            ]
            for route, hist in sorted(self.latency.items()):
                lines += hist.lines("fedcredit_request_seconds", f'route="{route}"')
            lines += [
                "# HELP fedcredit_refusals_total Requests refused, by reason.",
                "# TYPE fedcredit_refusals_total counter",
            ]
            lines += [
                f'fedcredit_refusals_total{{reason="{k}"}} {v}' for k, v in sorted(self.refusals.items())
            ]
            lines += [
                "# HELP fedcredit_audit_commit_lag_seconds From a query's arrival at the audit writer to its commit.",
                "# TYPE fedcredit_audit_commit_lag_seconds histogram",
                *self.audit_lag.lines("fedcredit_audit_commit_lag_seconds"),
                "# HELP fedcredit_audited_queries_total Query audit entries committed.",
                "# TYPE fedcredit_audited_queries_total counter",
                f"fedcredit_audited_queries_total {self.audited}",
                "# HELP fedcredit_audit_backlog Queries waiting for their audit commit.",
                "# TYPE fedcredit_audit_backlog gauge",
                f"fedcredit_audit_backlog {backlog}",
            ]
        return "\n".join(lines) + "\n"
