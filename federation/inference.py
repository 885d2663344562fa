"""The four-dimension model's towers as numpy arrays, for scoring.

Torch spends 10-20 microseconds on every operator call, so a request for a few applicants
costs milliseconds in call overhead alone; the same arithmetic on numpy arrays costs a
fraction of that and, for large batches, the same matrix products. Training stays in torch:
:func:`compile_towers` copies a trained model's weights (it never changes the model), and
``tests/federation/test_inference.py`` holds both paths to the same outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
from torch import nn

from federation.model import DimensionTower, FourDimensionModel


@dataclass(frozen=True)
class NumpyTower:
    """One dimension's tower: its inputs' indices, its embeddings and its layers."""

    numeric_idx: np.ndarray
    imputed_idx: np.ndarray
    cat_idx: tuple[int, ...]
    embeddings: tuple[np.ndarray, ...]  # (categories + 1, embedding_dim) each
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]  # (weight transposed, bias); ReLU between

    def __call__(self, z: np.ndarray, missing: np.ndarray, cat: np.ndarray) -> np.ndarray:
        """The tower's output for every row, as :meth:`DimensionTower.forward` computes it."""
        parts = [z[:, self.numeric_idx], missing[:, self.imputed_idx]]
        parts += [table[cat[:, j]] for j, table in zip(self.cat_idx, self.embeddings, strict=True)]
        x = np.concatenate(parts, axis=1)
        last = len(self.layers) - 1
        for i, (weight, bias) in enumerate(self.layers):
            x = x @ weight + bias
            if i < last:
                np.maximum(x, 0.0, out=x)
        return x[:, 0]


@dataclass(frozen=True)
class NumpyTowers:
    """Every tower of a model, with the normalization its inputs go through."""

    mean: np.ndarray
    std: np.ndarray
    towers: dict[str, NumpyTower]

    def normalized(self, numeric: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The towers' numeric inputs and missing indicators, as the torch model forms them."""
        missing = np.isnan(numeric)
        with np.errstate(invalid="ignore"):
            z = np.where(missing, np.float32(0.0), (numeric - self.mean) / self.std)
        return z.astype(np.float32, copy=False), missing.astype(np.float32)


def _layers(tower: DimensionTower) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    modules = list(tower.mlp)
    linear = [m for m in modules if isinstance(m, nn.Linear)]
    expected = [nn.Linear, nn.ReLU] * (len(linear) - 1) + [nn.Linear]
    if [type(m) for m in modules] != expected:
        raise TypeError(f"a tower of {[type(m).__name__ for m in modules]} has no numpy form")
    return tuple((m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) for m in linear)


def compile_towers(model: FourDimensionModel) -> NumpyTowers:
    """A copy of ``model``'s towers and normalization as numpy arrays (float32, as trained)."""
    towers = {}
    for dim in model.dimensions:
        tower = cast(DimensionTower, model.towers[dim.value])
        towers[dim.value] = NumpyTower(
            numeric_idx=tower.numeric_idx.numpy().copy(),
            imputed_idx=tower.imputed_idx.numpy().copy(),
            cat_idx=tuple(tower.cat_idx.tolist()),
            embeddings=tuple(cast(nn.Embedding, e).weight.detach().numpy().copy() for e in tower.embeddings),
            layers=_layers(tower),
        )
    return NumpyTowers(
        mean=model.mean.detach().numpy().copy(), std=model.std.detach().numpy().copy(), towers=towers
    )
