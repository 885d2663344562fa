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
class _Tower:
    """One dimension's tower: its inputs' indices, its embeddings and its layers."""

    numeric_idx: np.ndarray
    imputed_idx: np.ndarray
    cat_idx: tuple[int, ...]
    embeddings: tuple[np.ndarray, ...]  # (categories + 1, embedding_dim) each
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]  # (weight transposed, bias); ReLU between


@dataclass(frozen=True)
class StackedTowers:
    """Every tower padded to one input width and stacked, so that all towers run as one batched
    matrix product per layer, as :meth:`DimensionTower.forward` computes each: a few applicants
    cost numpy calls rather than arithmetic, and this makes a dozen where tower by tower made a
    hundred.

    A tower's input slots read the columns of ``[z | missing | embeddings | 0]`` (``source``);
    slots past its own inputs read the zero column and meet zero weights."""

    dimensions: tuple[str, ...]  # the towers, in stacking order
    slots: tuple[np.ndarray, ...]  # per tower: the source column of each of its own input slots
    source: np.ndarray  # (towers * width,): every padded slot's source column
    table: np.ndarray  # every categorical input's embedding table, one after another
    offsets: np.ndarray  # (categorical inputs,): where each one's table starts
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]  # (towers, in, out) weights, (towers, 1, out) biases

    @property
    def width(self) -> int:
        return len(self.source) // len(self.dimensions)

    def inputs(self, z: np.ndarray, missing: np.ndarray, cat: np.ndarray) -> np.ndarray:
        """Every tower's input for every row: (towers, rows, width)."""
        rows = len(z)
        embedded = self.table[cat + self.offsets].reshape(rows, len(self.offsets) * self.table.shape[1])
        columns = np.concatenate([z, missing, embedded, np.zeros((rows, 1), np.float32)], axis=1)
        return columns[:, self.source].reshape(rows, len(self.dimensions), -1).transpose(1, 0, 2)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The towers' outputs for inputs ``x`` (towers, rows, width): (towers, rows)."""
        last = len(self.layers) - 1
        for i, (weight, bias) in enumerate(self.layers):
            x = np.matmul(x, weight)
            x += bias
            if i < last:
                np.maximum(x, 0.0, out=x)
        return x[:, :, 0]


@dataclass(frozen=True)
class NumpyTowers:
    """Every tower of a model, with the normalization its inputs go through."""

    mean: np.ndarray
    std: np.ndarray
    stacked: StackedTowers
    reference: np.ndarray  # float64: each tower's reference output (its contribution's zero)

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
        towers[dim.value] = _Tower(
            numeric_idx=tower.numeric_idx.numpy().copy(),
            imputed_idx=tower.imputed_idx.numpy().copy(),
            cat_idx=tuple(tower.cat_idx.tolist()),
            embeddings=tuple(cast(nn.Embedding, e).weight.detach().numpy().copy() for e in tower.embeddings),
            layers=_layers(tower),
        )
    return NumpyTowers(
        mean=model.mean.detach().numpy().copy(),
        std=model.std.detach().numpy().copy(),
        stacked=_stack(towers, len(model.layout.numeric), len(model.layout.categorical)),
        reference=model.reference.detach().numpy().astype(np.float64),
    )


def _stack(towers: dict[str, _Tower], n_num: int, n_cat: int) -> StackedTowers:
    """``towers`` padded and stacked (every model's towers share a depth and an embedding width)."""
    tables: dict[int, np.ndarray] = {
        j: e for t in towers.values() for j, e in zip(t.cat_idx, t.embeddings, strict=True)
    }
    if sorted(tables) != list(range(n_cat)) or len({e.shape[1] for e in tables.values()}) > 1:
        raise TypeError("the towers' embeddings have no stacked form")
    if len({len(t.layers) for t in towers.values()}) != 1:
        raise TypeError("towers of different depths have no stacked form")
    embedding = tables[0].shape[1] if n_cat else 0
    zero = 2 * n_num + n_cat * embedding  # the zero column
    slots = tuple(
        np.array(
            [
                *t.numeric_idx,
                *(n_num + t.imputed_idx),
                *(2 * n_num + j * embedding + p for j in t.cat_idx for p in range(embedding)),
            ],
            dtype=np.int64,
        )
        for t in towers.values()
    )
    width = max(len(own) for own in slots)
    source = np.full((len(towers), width), zero, dtype=np.int64)
    for d, own in enumerate(slots):
        source[d, : len(own)] = own
    layers = []
    for i in range(len(next(iter(towers.values())).layers)):
        shapes = [t.layers[i][0].shape for t in towers.values()]
        weight = np.zeros(
            (len(towers), width if i == 0 else max(s[0] for s in shapes), max(s[1] for s in shapes)),
            dtype=np.float32,
        )
        bias = np.zeros((len(towers), 1, weight.shape[2]), dtype=np.float32)
        for d, t in enumerate(towers.values()):
            w, b = t.layers[i]
            weight[d, : w.shape[0], : w.shape[1]] = w
            bias[d, 0, : len(b)] = b
        layers.append((weight, bias))
    return StackedTowers(
        dimensions=tuple(towers),
        slots=slots,
        source=source.reshape(-1),
        table=np.concatenate([tables[j] for j in range(n_cat)]) if n_cat else np.zeros((0, 0), np.float32),
        offsets=np.cumsum([0, *(len(tables[j]) for j in range(n_cat - 1))]).astype(np.int64)
        if n_cat
        else np.zeros(0, np.int64),
        layers=tuple(layers),
    )
