"""Record-level differential privacy for local training (DP-SGD with Opacus).

The node derives its noise from its target (epsilon, delta) for the whole run
and its training plan (rows, batch size, local epochs, rounds), samples each
batch by Poisson sampling (what the RDP analysis assumes), clips every
example's gradient and adds Gaussian noise. Pure accounting lives in
:func:`plan_dp` and :func:`epsilon_spent`; the torch part in :func:`train_local_dp`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from federation.hyperparameters import TrainConfig
from federation.loading import EncodedData
from federation.model import FourDimensionModel, tensors

DEFAULT_MAX_GRAD_NORM = 1.0


@dataclass(frozen=True)
class DPPlan:
    """Noise and sampling for one institution's whole run."""

    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    rounds: int
    max_grad_norm: float = DEFAULT_MAX_GRAD_NORM

    @property
    def total_steps(self) -> int:
        return self.steps_per_round * self.rounds


def plan_dp(
    epsilon: float,
    delta: float,
    rows: int,
    batch_size: int,
    epochs_per_round: int,
    rounds: int,
    max_grad_norm: float = DEFAULT_MAX_GRAD_NORM,
) -> DPPlan:
    """The noise multiplier that spends exactly ``epsilon`` over the run (RDP accountant)."""
    if not epsilon > 0 or math.isinf(epsilon):
        raise ValueError(f"epsilon must be finite and > 0, got {epsilon}")
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if rows < 1 or batch_size < 1 or epochs_per_round < 1 or rounds < 1:
        raise ValueError("rows, batch_size, epochs_per_round and rounds must all be >= 1")
    sample_rate = min(1.0, batch_size / rows)
    steps_per_round = epochs_per_round * math.ceil(1 / sample_rate)
    from opacus.accountants.utils import get_noise_multiplier  # opacus loads only when DP is on

    sigma = get_noise_multiplier(
        target_epsilon=epsilon,
        target_delta=delta,
        sample_rate=sample_rate,
        steps=steps_per_round * rounds,
        accountant="rdp",
    )
    return DPPlan(epsilon, delta, float(sigma), sample_rate, steps_per_round, rounds, max_grad_norm)


def epsilon_spent(plan: DPPlan, rounds_done: int) -> float:
    """Epsilon spent after ``rounds_done`` rounds of ``plan`` (RDP accountant)."""
    if rounds_done <= 0:
        return 0.0
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round * rounds_done)]
    return float(accountant.get_epsilon(plan.delta))


def train_local_dp(
    model: FourDimensionModel, data: EncodedData, config: TrainConfig, plan: DPPlan, seed: int
) -> float:
    """One round of DP-SGD on ``data`` (``plan.steps_per_round`` Poisson-sampled steps); returns mean loss."""
    if data.label is None:
        raise ValueError("training data has no label column")
    numeric, categorical = tensors(data)
    label = torch.from_numpy(data.label)
    generator = torch.Generator().manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus warns about secure RNG; the seed is deliberate here
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer

        wrapped = GradSampleModule(model)
        optimizer = DPOptimizer(
            torch.optim.Adam(wrapped.parameters(), lr=config.learning_rate),
            noise_multiplier=plan.noise_multiplier,
            max_grad_norm=plan.max_grad_norm,
            expected_batch_size=max(1, round(plan.sample_rate * len(label))),
            generator=generator,
        )
    loss_fn = nn.BCEWithLogitsLoss()
    wrapped.train()
    total, seen = 0.0, 0
    with warnings.catch_warnings():
        # Opacus' hooks fire on module outputs only: the inputs are data, never differentiated
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        for _ in range(plan.steps_per_round):
            batch = torch.nonzero(torch.rand(len(label), generator=generator) < plan.sample_rate).squeeze(1)
            if len(batch) == 0:
                continue
            optimizer.zero_grad()
            loss = loss_fn(wrapped(numeric[batch], categorical[batch]), label[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            seen += len(batch)
    wrapped._close()
    model.eval()
    return total / max(seen, 1)
