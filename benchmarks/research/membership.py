"""Membership-inference attacks on a trained model: does it reveal who it was trained on?

Both attacks score each candidate row; their AUC at telling members (training
rows) from non-members (same population, never trained on) is 0.5 when the
model reveals nothing.

- loss threshold: members tend to have a lower loss.
- reference models (offline LiRA, Carlini et al. 2022): the attacker trains
  models on population rows it holds; a candidate whose confidence under the
  attacked model is unusually high *for that row* compared with the reference
  models is flagged. Calibrating per row separates rows that are merely easy
  from rows the model has memorised.
"""

from __future__ import annotations

import numpy as np

from benchmarks.research.baselines import train_for_epochs
from federation.hyperparameters import ModelConfig, TrainConfig
from federation.loading import EncodedData
from federation.metrics import auc
from federation.model import FourDimensionModel
from federation.training import predict_proba

_EPS = 1e-7


def _labels(data: EncodedData) -> np.ndarray:
    if data.label is None:
        raise ValueError("membership inference needs labelled rows")
    return data.label


def row_loss(model: FourDimensionModel, data: EncodedData) -> np.ndarray:
    y = _labels(data)
    p = np.clip(predict_proba(model, data), _EPS, 1 - _EPS)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def confidence_logit(model: FourDimensionModel, data: EncodedData) -> np.ndarray:
    """log(p / (1 - p)) of the row's true label: roughly Gaussian across models, as LiRA needs."""
    y = _labels(data)
    p = np.clip(predict_proba(model, data), _EPS, 1 - _EPS)
    p_true = np.where(y == 1, p, 1 - p)
    return np.log(p_true) - np.log1p(-p_true)


def _auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    is_member = np.concatenate([np.ones(len(member_scores)), np.zeros(len(nonmember_scores))])
    return auc(is_member, np.concatenate([member_scores, nonmember_scores]))


def loss_attack_auc(model: FourDimensionModel, members: EncodedData, nonmembers: EncodedData) -> float:
    return _auc(-row_loss(model, members), -row_loss(model, nonmembers))


def train_reference_models(
    population: EncodedData,
    count: int,
    epochs: int,
    train: TrainConfig,
    model_config: ModelConfig | None = None,
    seed: int = 0,
) -> list[FourDimensionModel]:
    """``count`` models, each on a random half of the attacker's population rows."""
    rng = np.random.default_rng(seed)
    half = len(population) // 2
    return [
        train_for_epochs(
            population.subset(rng.choice(len(population), half, replace=False)),
            epochs,
            train,
            model_config,
            seed=seed + k,
        )
        for k in range(count)
    ]


def reference_attack_auc(
    model: FourDimensionModel,
    members: EncodedData,
    nonmembers: EncodedData,
    references: list[FourDimensionModel],
) -> float:
    """Offline LiRA with one global variance (robust with a handful of reference models)."""
    if len(references) < 2:
        raise ValueError("the reference-model attack needs at least 2 reference models")

    def scores(rows: EncodedData) -> tuple[np.ndarray, np.ndarray]:
        ref = np.stack([confidence_logit(r, rows) for r in references])
        return confidence_logit(model, rows) - ref.mean(axis=0), ref.std(axis=0)

    member_gap, member_sd = scores(members)
    nonmember_gap, nonmember_sd = scores(nonmembers)
    sd = float(np.mean(np.concatenate([member_sd, nonmember_sd]))) + _EPS
    return _auc(member_gap / sd, nonmember_gap / sd)
