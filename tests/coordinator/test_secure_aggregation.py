"""SecAgg+ sizes and the federation policy's say over a run."""

from __future__ import annotations

from dataclasses import replace

import pytest

from coordinator.federation_policy import (
    DEMO_FEDERATION_POLICY,
    DEMO_FEDERATION_TRUST,
    apply_federation_policy,
    load_federation_policy,
)
from coordinator.run_settings import RunSettings
from coordinator.secure_aggregation import SecureAggregationError, shares_and_threshold
from policies.documents import ClientLevelDP


@pytest.mark.parametrize(
    ("institutions", "shares", "threshold", "expected"),
    [
        (10, None, None, (10, 6)),  # every institution holds a share, a majority rebuilds
        (5, None, None, (5, 3)),
        (3, None, None, (3, 2)),
        (2, None, None, (1.0, 2)),  # Flower's "all of them" for two
        (10, 5, 3, (5, 3)),  # from the federation policy
        (4, 5, None, (4, 3)),  # capped at the institutions present
    ],
)
def test_shares_and_threshold(
    institutions: int, shares: int | None, threshold: int | None, expected: tuple[float, int]
) -> None:
    assert shares_and_threshold(institutions, shares, threshold) == expected


def test_a_threshold_the_round_cannot_meet_is_refused() -> None:
    with pytest.raises(SecureAggregationError, match="reconstruction threshold 4 needs more than 4 share"):
        shares_and_threshold(4, 5, 4)
    with pytest.raises(SecureAggregationError, match="at least 2 institutions"):
        shares_and_threshold(1)
    with pytest.raises(SecureAggregationError, match="must be odd"):
        shares_and_threshold(6, 4)  # Flower 1.42 would crash every node
    with pytest.raises(SecureAggregationError, match="more than half"):
        shares_and_threshold(9, None, 2)  # two disjoint pairs of nodes could each rebuild a secret


def test_the_federation_policy_sets_the_run() -> None:
    policy = load_federation_policy(DEMO_FEDERATION_POLICY, DEMO_FEDERATION_TRUST)
    policy = replace(
        policy, secure_aggregation_shares=5, reconstruction_threshold=3, client_dp=ClientLevelDP(1.0, 2.0)
    )
    settings = apply_federation_policy(RunSettings(schema="sme", min_institutions=2), policy)
    assert (settings.strategy, settings.min_institutions, settings.rounds) == ("fedavg", 3, 10)
    assert (settings.secure_aggregation_shares, settings.reconstruction_threshold) == (5, 3)
    assert settings.client_dp == ClientLevelDP(1.0, 2.0)
