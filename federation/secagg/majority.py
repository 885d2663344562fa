"""The majority rule of SecAgg+: when shares and a reconstruction threshold protect a node's secrets."""

from __future__ import annotations


def threshold_problem(shares: int, threshold: int) -> str | None:
    """Why a share count and reconstruction threshold do not protect a node's secrets; None if they do.

    Below 2, one share is the secret; at half or less, two disjoint groups of nodes could each rebuild it.
    """
    if threshold < 2 or threshold > shares or 2 * threshold <= shares:
        return f"reconstruction threshold {threshold} of {shares} shares: it must be at least 2 and more than half"
    return None
