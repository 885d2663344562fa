"""SecAgg+ settings: shares, threshold, clipping and quantization.

Updates are scaled by rows / MAX_ROWS_PER_NODE, clipped to +-clipping range and
quantized to QUANTIZATION_RANGE levels before masking (benchmarks/privacy.py
measures the error against the plain sum).
"""

from __future__ import annotations

from typing import cast

import flwr
from flwr.common import Context
from flwr.server import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, Key
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid

from coordinator.recording import RecordingStrategy, RunCannotContinueError
from federation.secagg.flower import (
    FLOWER_VERSION,
    MASK_SCHEME,
    install_into_flower,
    mask_scheme,
)
from federation.secagg.majority import threshold_problem

install_into_flower()  # SecAgg+ at the coordinator: federation.secagg.shamir and federation.secagg.masks

MAX_ROWS_PER_NODE = 100_000.0  # a node with more rows must raise it (the precision falls with it)
WEIGHT_CLIPPING_RANGE = 16.0
STATS_CLIPPING_RANGE = 1_000.0
QUANTIZATION_RANGE = 2**30  # Flower rounds into int32: at most 2**31
MODULUS_RANGE = 2**42


class FailClosedSecAggPlusWorkflow(SecAggPlusWorkflow):
    """Flower's SecAgg+, except that a round it cannot complete stops the run.

    Flower's workflow logs "Secure aggregation halted" and the run goes on, round after
    round, with the model it had; here the refusals are recorded and the run ends.
    """

    def __call__(self, grid: Grid, context: Context) -> None:
        if not isinstance(context, LegacyContext):
            raise TypeError(f"SecAgg+ runs in a LegacyContext, got {type(context).__name__}")
        state = WorkflowState()
        for step in (
            self.setup_stage,
            self.share_keys_stage,
            self.collect_masked_vectors_stage,
            self.unmask_stage,
        ):
            if not step(grid, context, state):
                server_round = cast(int, context.state.config_records[MAIN_CONFIGS_RECORD][Key.CURRENT_ROUND])
                if isinstance(context.strategy, RecordingStrategy):
                    raise context.strategy.halted(server_round, "fit", state.failures)
                raise RunCannotContinueError(f"round {server_round}: secure aggregation could not complete")


class SecureAggregationError(ValueError):
    """The federation's secure-aggregation settings cannot protect a round with this many institutions."""


def shares_and_threshold(
    institutions: int, shares: int | None = None, threshold: int | None = None
) -> tuple[int | float, int]:
    """SecAgg+ ``num_shares`` and ``reconstruction_threshold`` for a round with ``institutions`` nodes.

    ``shares``/``threshold`` come from the federation policy; by default every
    institution holds a share and a majority of the shares rebuilds a secret.
    """
    if institutions < 2:
        raise SecureAggregationError(f"secure aggregation needs at least 2 institutions, got {institutions}")
    used = institutions if shares is None else min(shares, institutions)
    if used < institutions and used % 2 == 0:
        # Flower 1.42 tells the nodes an even count, then widens the neighbourhood by one: nodes crash
        raise SecureAggregationError(
            f"{used} shares for {institutions} institutions: a share count below the number of "
            "institutions must be odd"
        )
    needed = threshold if threshold is not None else max(2, used // 2 + 1)
    if needed >= used and institutions > 2:
        raise SecureAggregationError(
            f"reconstruction threshold {needed} needs more than {used} share(s); "
            f"{institutions} institution(s) are in the round"
        )
    problem = threshold_problem(used, needed)
    if problem is not None:
        raise SecureAggregationError(problem)
    # Flower takes an integer share count only above 2; 1.0 means "all of them"
    return (1.0 if used <= 2 else used), needed


def secagg_workflow(
    institutions: int,
    clipping_range: float,
    shares: int | None = None,
    threshold: int | None = None,
    max_weight: float = MAX_ROWS_PER_NODE,
) -> FailClosedSecAggPlusWorkflow:
    if mask_scheme() != MASK_SCHEME:
        raise SecureAggregationError(
            f"Flower {flwr.__version__}: SecAgg+ would run with Flower's own 32-bit mask seeds; "
            f"FedCredit runs it only with {MASK_SCHEME} (Flower {FLOWER_VERSION})"
        )
    num_shares, reconstruction_threshold = shares_and_threshold(institutions, shares, threshold)
    return FailClosedSecAggPlusWorkflow(
        num_shares=num_shares,
        reconstruction_threshold=reconstruction_threshold,
        max_weight=max_weight,
        clipping_range=clipping_range,
        quantization_range=QUANTIZATION_RANGE,
        modulus_range=MODULUS_RANGE,
    )
