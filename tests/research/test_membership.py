"""The membership-inference attacks can find a leak: a memorising model is caught, a fresh one is not."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from benchmarks.research.baselines import train_for_epochs
from benchmarks.research.membership import loss_attack_auc, reference_attack_auc, train_reference_models
from federation.datasets.synthetic import generate_sme
from federation.hyperparameters import ModelConfig, TrainConfig
from federation.loading import EncodedData, encode_frame
from federation.schema import resolve_schema

MEMORISE = TrainConfig(batch_size=16, learning_rate=1e-2, weight_decay=0.0)
WIDE = ModelConfig(hidden=32)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Batches of 16 rows through a small model: a second intra-op thread only waits for the
    first, and on a busy machine it makes training several times slower (same results)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def rows() -> dict[str, EncodedData]:
    """60 defaulters and 60 others as members, as many of each as non-members; the rest is the
    attacker's population."""
    data = encode_frame(generate_sme(4000, seed=11), resolve_schema("sme"), "sme")
    assert data.label is not None
    pos, neg = np.flatnonzero(data.label == 1), np.flatnonzero(data.label == 0)
    return {
        "members": data.subset(np.concatenate([pos[:60], neg[:60]])),
        "nonmembers": data.subset(np.concatenate([pos[60:120], neg[60:120]])),
        "population": data.subset(np.concatenate([pos[120:], neg[120:600]])),
    }


def test_a_memorising_model_is_caught_by_both_attacks(rows: dict[str, EncodedData]) -> None:
    model = train_for_epochs(rows["members"], 60, MEMORISE, WIDE, seed=1)
    references = train_reference_models(rows["population"], 4, 60, MEMORISE, WIDE, seed=2)
    assert loss_attack_auc(model, rows["members"], rows["nonmembers"]) > 0.7
    assert reference_attack_auc(model, rows["members"], rows["nonmembers"], references) > 0.6


def test_a_model_that_never_saw_the_members_reveals_nothing(rows: dict[str, EncodedData]) -> None:
    references = train_reference_models(rows["population"], 4, 5, TrainConfig(), seed=3)
    outsider = train_for_epochs(rows["population"], 5, TrainConfig(), seed=4)
    assert abs(loss_attack_auc(outsider, rows["members"], rows["nonmembers"]) - 0.5) < 0.08
    assert abs(reference_attack_auc(outsider, rows["members"], rows["nonmembers"], references) - 0.5) < 0.08
