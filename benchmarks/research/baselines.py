"""Reference models: the same model trained on pooled rows or by one institution alone,
and a gradient-boosted-trees model on pooled rows."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier

from federation.hyperparameters import ModelConfig, TrainConfig
from federation.loading import EncodedData
from federation.metrics import auc
from federation.model import FourDimensionModel
from federation.normalization import NormStats, local_moments, stats_from_moments
from federation.seeding import rng_for
from federation.training import predict_proba, train_local


def pool(parts: list[EncodedData]) -> EncodedData:
    """Concatenate datasets with the same layout (the centralized baseline's input)."""
    layouts = {p.layout for p in parts}
    if len(layouts) != 1:
        raise ValueError("cannot pool datasets with different feature layouts")
    labels = [p.label for p in parts]
    return EncodedData(
        ids=np.concatenate([p.ids for p in parts]),
        numeric=np.concatenate([p.numeric for p in parts]),
        categorical=np.concatenate([p.categorical for p in parts]),
        label=None if any(x is None for x in labels) else np.concatenate(labels),  # type: ignore[arg-type]
        layout=parts[0].layout,
    )


def new_model(
    data: EncodedData, stats: NormStats | None, config: ModelConfig | None, seed: int
) -> FourDimensionModel:
    torch.manual_seed(seed)
    model = FourDimensionModel(data.layout, config)
    model.set_normalization(stats or stats_from_moments(local_moments(data.numeric)))
    return model


def train_for_epochs(
    data: EncodedData, epochs: int, train: TrainConfig, model_config: ModelConfig | None = None, seed: int = 0
) -> FourDimensionModel:
    """The model trained on ``data`` for ``epochs`` passes: pooled rows give the centralized
    reference; one institution's rows give its local model at the federation's budget."""
    model = new_model(data, None, model_config, seed)
    step = TrainConfig(1, train.batch_size, train.learning_rate, train.weight_decay)
    for epoch in range(epochs):
        train_local(model, data, step, seed=seed + epoch)
    return model


def train_local_only(
    data: EncodedData,
    train: TrainConfig | None = None,
    model_config: ModelConfig | None = None,
    max_epochs: int = 40,
    validation_fraction: float = 0.2,
    seed: int = 0,
) -> FourDimensionModel:
    """One institution alone, done well: early stopping on a slice of its own rows.

    The epoch count is chosen by AUC on ``validation_fraction`` of the rows, then
    the model is retrained on all of them for that many epochs.
    """
    train = train or TrainConfig()
    step = TrainConfig(1, train.batch_size, train.learning_rate, train.weight_decay)
    rng = rng_for(seed, "local-validation")
    val_mask = rng.random(len(data)) < validation_fraction
    fit_part, val_part = data.subset(np.flatnonzero(~val_mask)), data.subset(np.flatnonzero(val_mask))
    best_epoch, best_auc = 1, -1.0
    if val_part.label is not None and len(np.unique(val_part.label)) == 2:
        model = new_model(fit_part, None, model_config, seed)
        for epoch in range(1, max_epochs + 1):
            train_local(model, fit_part, step, seed=seed + epoch)
            score = auc(val_part.label, predict_proba(model, val_part))
            if score > best_auc:
                best_epoch, best_auc = epoch, score
    model = new_model(data, None, model_config, seed)
    for epoch in range(1, best_epoch + 1):
        train_local(model, data, step, seed=seed + epoch)
    return model


def gbdt_pooled(data: EncodedData, seed: int = 0) -> HistGradientBoostingClassifier:
    """Gradient-boosted trees on pooled rows (scikit-learn), for reference."""
    if data.label is None:
        raise ValueError("training data has no label column")
    model = HistGradientBoostingClassifier(
        max_iter=300,
        learning_rate=0.05,
        early_stopping=True,
        random_state=seed,
        categorical_features=list(range(data.numeric.shape[1], data.layout.width)),
    )
    model.fit(gbdt_features(data), data.label)
    return model


def gbdt_features(data: EncodedData) -> np.ndarray:
    return np.concatenate([data.numeric, data.categorical.astype(np.float32)], axis=1)
