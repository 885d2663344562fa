"""Local training and prediction for the four-dimension model (vectorized, batched)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from federation.hyperparameters import TrainConfig
from federation.loading import EncodedData
from federation.model import FourDimensionModel, tensors

PREDICT_BATCH = 65_536


def train_local(model: FourDimensionModel, data: EncodedData, config: TrainConfig, seed: int) -> float:
    """Train ``model`` in place on ``data``; returns the mean training loss of the last epoch."""
    if data.label is None:
        raise ValueError("training data has no label column")
    numeric, categorical = tensors(data)
    label = torch.from_numpy(data.label)
    generator = torch.Generator().manual_seed(seed)
    anchor = [p.detach().clone() for p in model.parameters()] if config.proximal_mu > 0 else []
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    loss_fn = nn.BCEWithLogitsLoss()
    model.train()
    last = 0.0
    for _ in range(config.epochs):
        order = torch.randperm(len(label), generator=generator)
        total = 0.0
        for batch in torch.split(order, config.batch_size):
            optimizer.zero_grad()
            loss = loss_fn(model(numeric[batch], categorical[batch]), label[batch])
            if anchor:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True))
                loss = loss + config.proximal_mu / 2 * prox
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        last = total / len(label)
    model.eval()
    return last


@torch.no_grad()
def predict_logits(model: FourDimensionModel, data: EncodedData) -> np.ndarray:
    model.eval()
    numeric, categorical = tensors(data)
    outs = [
        model(n, c)
        for n, c in zip(
            torch.split(numeric, PREDICT_BATCH), torch.split(categorical, PREDICT_BATCH), strict=True
        )
    ]
    return torch.cat(outs).numpy() if outs else np.zeros(0, dtype=np.float32)


def predict_proba(model: FourDimensionModel, data: EncodedData) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-predict_logits(model, data).astype(np.float64)))


@torch.no_grad()
def mean_raw_contributions(model: FourDimensionModel, data: EncodedData) -> np.ndarray:
    """Mean tower output per dimension over ``data`` (float64, shape (dimensions,))."""
    model.eval()
    numeric, categorical = tensors(data)
    return model.raw_contributions(numeric, categorical).double().mean(dim=0).numpy()
