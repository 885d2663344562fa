"""The four-dimension credit-risk model.

One tower per non-empty dimension maps that dimension's features to a single
number; the fusion head adds them (each tower's last layer carries its own
intercept, so no separate bias is needed, which also keeps the model
DP-SGD-ready). Every logit splits exactly:
``logit = baseline + sum(contributions)``, one contribution per dimension.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from federation.loading import EncodedData, FeatureLayout
from federation.normalization import NormStats
from federation.schema import Dimension

MODEL_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelConfig:
    hidden: int = 32
    embedding_dim: int = 4


class DimensionTower(nn.Module):
    """Features of one dimension -> one logit contribution."""

    numeric_idx: torch.Tensor
    imputed_idx: torch.Tensor
    cat_idx: torch.Tensor

    def __init__(
        self,
        numeric_idx: list[int],
        imputed_idx: list[int],
        cat_idx: list[int],
        cards: list[int],
        config: ModelConfig,
    ) -> None:
        super().__init__()
        self.register_buffer("numeric_idx", torch.tensor(numeric_idx, dtype=torch.long))
        self.register_buffer("imputed_idx", torch.tensor(imputed_idx, dtype=torch.long))
        self.register_buffer("cat_idx", torch.tensor(cat_idx, dtype=torch.long))
        self.embeddings = nn.ModuleList(nn.Embedding(c, config.embedding_dim) for c in cards)
        width = len(numeric_idx) + len(imputed_idx) + config.embedding_dim * len(cards)
        self.mlp = nn.Sequential(
            nn.Linear(width, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, 1),
        )

    def forward(self, z: torch.Tensor, missing: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        parts = [z[:, self.numeric_idx], missing[:, self.imputed_idx]]
        parts += [emb(cat[:, j]) for j, emb in zip(self.cat_idx.tolist(), self.embeddings, strict=True)]
        out: torch.Tensor = self.mlp(torch.cat(parts, dim=1)).squeeze(1)
        return out


class FourDimensionModel(nn.Module):
    """Additive fusion of per-dimension towers over normalized inputs."""

    mean: torch.Tensor
    std: torch.Tensor
    reference: torch.Tensor

    def __init__(self, layout: FeatureLayout, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.layout = layout
        self.config = config or ModelConfig()
        k = len(layout.numeric)
        self.register_buffer("mean", torch.zeros(k))
        self.register_buffer("std", torch.ones(k))
        self.dimensions: tuple[Dimension, ...] = layout.dimensions
        self.towers = nn.ModuleDict()
        for dim in self.dimensions:
            num = [i for i, d in enumerate(layout.numeric_dimensions) if d is dim]
            imputed = [i for i in num if layout.numeric_imputed[i]]
            cat = [i for i, d in enumerate(layout.categorical_dimensions) if d is dim]
            cards = [layout.cardinalities[i] for i in cat]
            self.towers[dim.value] = DimensionTower(num, imputed, cat, cards, self.config)
        # Mean raw tower output over the federation's rows: contributions are reported
        # relative to it, so a positive one means "riskier than the average borrower".
        self.register_buffer("reference", torch.zeros(len(self.dimensions)))

    def set_normalization(self, stats: NormStats) -> None:
        if stats.mean.shape != (len(self.layout.numeric),):
            raise ValueError(
                f"normalization has {stats.mean.shape[0]} columns, model expects {len(self.layout.numeric)}"
            )
        self.mean.copy_(torch.as_tensor(stats.mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(stats.std, dtype=torch.float32))

    def raw_contributions(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """Per-dimension tower outputs, shape (rows, dimensions)."""
        missing = torch.isnan(numeric)
        z = torch.where(missing, torch.zeros_like(numeric), (numeric - self.mean) / self.std)
        missing_f = missing.to(z.dtype)
        outs = []
        for dim in self.dimensions:
            outs.append(self.towers[dim.value](z, missing_f, categorical))
        return torch.stack(outs, dim=1)

    def contributions(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """Per-dimension logit contributions relative to the average borrower.

        ``contributions(x).sum(1) + baseline() == forward(x)`` exactly.
        """
        return self.raw_contributions(numeric, categorical) - self.reference

    def baseline(self) -> torch.Tensor:
        """The logit of a borrower whose every dimension is at the federation's average."""
        return self.reference.sum()

    def set_reference(self, reference: np.ndarray) -> None:
        if reference.shape != (len(self.dimensions),):
            raise ValueError(f"reference has shape {reference.shape}, expected ({len(self.dimensions)},)")
        self.reference.copy_(torch.as_tensor(reference, dtype=torch.float32))

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        return self.raw_contributions(numeric, categorical).sum(dim=1)


def tensors(data: EncodedData) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(data.numeric), torch.from_numpy(data.categorical)


def trainable_weights(model: nn.Module) -> list[np.ndarray]:
    """The parameters exchanged in federated rounds (buffers stay local)."""
    return [p.detach().cpu().numpy().copy() for p in model.parameters()]


def load_trainable_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    params = list(model.parameters())
    if len(params) != len(weights):
        raise ValueError(f"expected {len(params)} weight arrays, got {len(weights)}")
    with torch.no_grad():
        for p, w in zip(params, weights, strict=True):
            if p.shape != w.shape:
                raise ValueError(f"weight shape {tuple(w.shape)} does not match parameter {tuple(p.shape)}")
            p.copy_(torch.as_tensor(w))


def save_model(model: FourDimensionModel, path: str | Path, metadata: dict[str, Any]) -> None:
    """Write the model, its layout and metadata to one file (torch, weights-only loadable)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": MODEL_FORMAT_VERSION,
        "layout": model.layout.to_dict(),
        "config": {"hidden": model.config.hidden, "embedding_dim": model.config.embedding_dim},
        "state_dict": model.state_dict(),
        "metadata": metadata,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_model(path: str | Path) -> tuple[FourDimensionModel, dict[str, Any]]:
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if payload.get("format_version") != MODEL_FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported model format {payload.get('format_version')!r}")
    model = FourDimensionModel(FeatureLayout.from_dict(payload["layout"]), ModelConfig(**payload["config"]))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, dict(payload["metadata"])
