"""The service's Prometheus histograms: cumulative buckets, as the exposition format defines them."""

from __future__ import annotations

from coordinator.service.metrics import Histogram


def test_histogram_buckets_count_every_value_at_or_below_their_bound() -> None:
    histogram = Histogram((0.001, 0.01, 0.1))
    for value in (0.0005, 0.001, 0.002, 0.01, 0.05, 0.5, 5.0):
        histogram.observe(value)
    assert histogram.lines("t", 'route="/v1/scores"') == [
        't_bucket{route="/v1/scores",le="0.001"} 2',  # a value on a bound is in its bucket
        't_bucket{route="/v1/scores",le="0.01"} 4',
        't_bucket{route="/v1/scores",le="0.1"} 5',
        't_bucket{route="/v1/scores",le="+Inf"} 7',
        't_sum{route="/v1/scores"} 5.5635',
        't_count{route="/v1/scores"} 7',
    ]
