"""Fairness of the global model per protected group, computed at each node, combined securely.

The schema marks columns ``protected``: they are never model inputs, but the model
card shows, for each of them and each of its groups, the share of applicants, their
default rate, their approval rate (probability of default below the run's cut-off)
and the model's AUC within the group. No row leaves a node for that:

- every node turns its holdout rows into one vector (:func:`node_vector`) of
  *fractions*: per attribute and group, the number of rows, of defaulters and of
  approvals, and a histogram of the scores of the defaulters and one of the
  non-defaulters over :data:`SCORE_BINS` bins fixed here (equal width on the logit
  scale), every count divided by the node's holdout rows;
- the coordinator gets the row-weighted average of these vectors (under SecAgg+
  nothing else), which is the same vector over the pooled holdout rows of the
  federation, and :func:`fairness_report` turns it into the figures.

Groups (:func:`protected_attributes`): a categorical column's categories; a numeric
column's bands cut at its ``group_edges`` (without them, at the midpoint of its
``min`` and ``max``; without those, one band); a binary column's 0 and 1. Rows
without a value form the group ``missing``, shown only when it holds rows.

Small groups: a group with fewer than :data:`MIN_GROUP_ROWS` holdout rows in the
whole federation shows its share only (its rates would describe a handful of
applicants, and could reveal them); its AUC also needs at least
:data:`MIN_CLASS_ROWS` defaulters and as many non-defaulters. A missing figure is
``None``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Final

import numpy as np
import pandas as pd

from federation.schema import Column, ColumnType, Schema

SCORE_BINS: Final = 128  # score histogram bins, the same at every node (the vector's length depends on it)
LOGIT_LOW: Final = -8.0  # the bins cover logit(pd) in [-8, 8] (pd 0.03 % to 99.97 %); beyond, the end bins
LOGIT_HIGH: Final = 8.0
MIN_GROUP_ROWS: Final = 30  # holdout rows federation-wide below which a group shows its share only
MIN_CLASS_ROWS: Final = 5  # defaulters, and non-defaulters, a group's AUC needs
MISSING: Final = "missing"
FIGURES: Final = ("share", "default_rate", "approval_rate", "auc")
_GAPS: Final = ("default_rate", "approval_rate", "auc")
# per group: rows, defaulters, approvals, then the two score histograms
_COUNTS: Final = 3
_BLOCK: Final = _COUNTS + 2 * SCORE_BINS


@dataclass(frozen=True)
class ProtectedAttribute:
    """A protected column and how its values fall into groups; the last group is :data:`MISSING`."""

    name: str
    groups: tuple[str, ...]
    edges: tuple[float, ...] = ()  # numeric and binary: band boundaries (a value on an edge: the band above)
    categories: tuple[str, ...] = ()  # categorical: one group per category, in schema order

    def group_of(self, raw: pd.Series | None, rows: int) -> np.ndarray:
        """Each row's group index (int64); a column the table lacks: every row ``missing``."""
        missing = len(self.groups) - 1
        if raw is None:
            return np.full(rows, missing, dtype=np.int64)
        if self.categories:
            codes = pd.Categorical(raw.astype("string"), categories=list(self.categories)).codes
            return np.where(codes >= 0, codes, missing).astype(np.int64)
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        bands = np.searchsorted(np.asarray(self.edges, dtype=np.float64), values, side="right")
        return np.where(np.isnan(values), missing, bands).astype(np.int64)


def _number(value: float) -> str:
    return f"{value:g}"


def _bands(edges: Sequence[float]) -> tuple[str, ...]:
    if not edges:
        return ("all",)
    inner = [f"{_number(lo)} to <{_number(hi)}" for lo, hi in pairwise(edges)]
    return (f"<{_number(edges[0])}", *inner, f">={_number(edges[-1])}")


def attribute_of(column: Column) -> ProtectedAttribute:
    """The groups of one protected column."""
    if column.type is ColumnType.CATEGORICAL:
        return ProtectedAttribute(column.name, (*column.categories, MISSING), categories=column.categories)
    if column.type is ColumnType.BINARY:
        return ProtectedAttribute(column.name, ("0", "1", MISSING), edges=(0.5,))
    edges = tuple(column.group_edges)
    if not edges and column.min is not None and column.max is not None and column.max > column.min:
        edges = ((column.min + column.max) / 2,)
    return ProtectedAttribute(column.name, (*_bands(edges), MISSING), edges=edges)


def protected_attributes(schema: Schema) -> tuple[ProtectedAttribute, ...]:
    """The schema's protected columns, in schema order, with their groups."""
    return tuple(attribute_of(c) for c in schema.columns if c.protected)


def group_index(frame: pd.DataFrame, attributes: Sequence[ProtectedAttribute]) -> np.ndarray:
    """Each row's group per attribute, shape (rows, attributes): what a node keeps of its protected values."""
    rows = len(frame)
    columns = [a.group_of(frame[a.name] if a.name in frame.columns else None, rows) for a in attributes]
    return np.stack(columns, axis=1) if columns else np.zeros((rows, 0), dtype=np.int64)


def vector_length(attributes: Sequence[ProtectedAttribute]) -> int:
    return sum(len(a.groups) for a in attributes) * _BLOCK


def score_bin(pd_: np.ndarray) -> np.ndarray:
    """Each probability of default's histogram bin: equal width in logit(pd), ends open."""
    p = np.clip(np.asarray(pd_, dtype=np.float64), 1e-300, 1.0)
    with np.errstate(divide="ignore"):
        logit = np.log(p) - np.log1p(-p)  # pd = 1 gives +inf: the last bin
    scaled = (logit - LOGIT_LOW) / (LOGIT_HIGH - LOGIT_LOW) * SCORE_BINS
    return np.clip(np.floor(scaled), 0, SCORE_BINS - 1).astype(np.int64)


def _check_cutoff(approve_below_pd: float) -> None:
    if not 0.0 < approve_below_pd < 1.0:
        raise ValueError(
            f"the approval cut-off must be a probability of default in (0, 1), got {approve_below_pd}"
        )


def node_vector(
    pd_: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    attributes: Sequence[ProtectedAttribute],
    approve_below_pd: float,
) -> np.ndarray:
    """What a node sends: per attribute and group, counts divided by the node's rows (float64).

    ``pd_`` the model's probability of default of each holdout row, ``labels`` 1 for a
    default, ``groups`` the rows' :func:`group_index`. Per group, in attribute and group
    order: rows, defaulters, approvals (``pd < approve_below_pd``), the histogram of the
    defaulters' scores, then of the non-defaulters' (:data:`SCORE_BINS` bins each).
    """
    _check_cutoff(approve_below_pd)
    p = np.asarray(pd_, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    rows = len(p)
    if y.shape != (rows,) or groups.shape != (rows, len(attributes)):
        raise ValueError(
            f"{rows} scores, {y.shape} labels and {groups.shape} groups for {len(attributes)} attribute(s)"
        )
    if not np.isfinite(p).all() or ((p < 0) | (p > 1)).any() or not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("scores must be probabilities and labels 0 or 1")
    if rows == 0:
        return np.zeros(vector_length(attributes))
    defaulted = y.astype(np.int64)
    approved = (p < approve_below_pd).astype(np.float64)
    bins = score_bin(p)
    blocks = []
    for column, attribute in enumerate(attributes):
        g = groups[:, column]
        n = len(attribute.groups)
        if ((g < 0) | (g >= n)).any():
            raise ValueError(f"{attribute.name}: group index outside 0..{n - 1}")
        counts = np.stack(
            [
                np.bincount(g, minlength=n),
                np.bincount(g, weights=y, minlength=n),
                np.bincount(g, weights=approved, minlength=n),
            ],
            axis=1,
        )
        # the defaulters' histogram first: index (group, 1 - label, bin)
        cell = (g * 2 + (1 - defaulted)) * SCORE_BINS + bins
        histograms = np.bincount(cell, minlength=n * 2 * SCORE_BINS).reshape(n, 2 * SCORE_BINS)
        blocks.append(np.concatenate([counts, histograms], axis=1).ravel())
    return np.concatenate(blocks).astype(np.float64) / rows


def histogram_auc(defaulters: np.ndarray, others: np.ndarray) -> np.ndarray:
    """AUC from score histograms (last axis: bins, low to high score); ties within a bin count one half.

    NaN where either histogram is empty.
    """
    below = np.cumsum(others, axis=-1) - others
    wins = np.sum(defaulters * (below + 0.5 * others), axis=-1)
    pairs = defaulters.sum(axis=-1) * others.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / np.where(pairs > 0, pairs, 1.0), np.nan)


def _gap(figures: dict[str, dict[str, float | None]], name: str) -> dict[str, Any] | None:
    """The largest difference of one figure between the groups that have it (``missing`` aside)."""
    values: dict[str, float] = {
        group: value for group, f in figures.items() if group != MISSING and (value := f[name]) is not None
    }
    if len(values) < 2:
        return None
    lowest = min(values, key=values.__getitem__)
    highest = max(values, key=values.__getitem__)
    return {"gap": values[highest] - values[lowest], "lowest": lowest, "highest": highest}


def fairness_report(
    average: np.ndarray,
    attributes: Sequence[ProtectedAttribute],
    weight_total: float,
    approve_below_pd: float,
) -> dict[str, Any] | None:
    """The model card's fairness section from the nodes' averaged vectors; None without holdout rows.

    ``average`` is the row-weighted average of the nodes' :func:`node_vector`, ``weight_total``
    the sum of the weights it was averaged with (the nodes' holdout rows). Returns::

        {"approve_below_pd": 0.05, "holdout_rows": 1200, "min_group_rows": 30,
         "attributes": {attribute: {group: {"share", "default_rate", "approval_rate", "auc"}}},
         "gaps": {attribute: {"default_rate" | "approval_rate" | "auc":
                              {"gap", "lowest", "highest"} or None}}}

    Every figure is a float in [0, 1] or None (see the module's note on small groups);
    ``gaps`` compares the groups other than ``missing``.
    """
    _check_cutoff(approve_below_pd)
    if not attributes:
        return None
    expected = vector_length(attributes)
    if average.shape != (expected,):
        raise ValueError(f"a fairness vector has {expected} entries, got shape {average.shape}")
    if not np.isfinite(average).all():
        return None
    # fractions of the pooled rows; back to rows (quantization can leave a tiny negative)
    counts = np.clip(average.astype(np.float64), 0.0, None) * float(weight_total)
    out: dict[str, Any] = {"attributes": {}, "gaps": {}}
    offset = 0
    holdout_rows = 0.0
    for attribute in attributes:
        n = len(attribute.groups)
        block = counts[offset : offset + n * _BLOCK].reshape(n, _BLOCK)
        offset += n * _BLOCK
        rows, defaults, approvals = block[:, 0], block[:, 1], block[:, 2]
        auc = histogram_auc(block[:, _COUNTS : _COUNTS + SCORE_BINS], block[:, _COUNTS + SCORE_BINS :])
        total = float(rows.sum())
        holdout_rows = max(holdout_rows, total)
        figures: dict[str, dict[str, float | None]] = {}
        for i, group in enumerate(attribute.groups):
            if group == MISSING and rows[i] < 0.5:
                continue
            enough = rows[i] >= MIN_GROUP_ROWS - 0.5
            both = min(defaults[i], rows[i] - defaults[i]) >= MIN_CLASS_ROWS - 0.5
            figures[group] = {
                "share": float(rows[i] / total) if total > 0 else 0.0,
                "default_rate": float(min(defaults[i] / rows[i], 1.0)) if enough else None,
                "approval_rate": float(min(approvals[i] / rows[i], 1.0)) if enough else None,
                "auc": float(auc[i]) if enough and both and not math.isnan(auc[i]) else None,
            }
        out["attributes"][attribute.name] = figures
        out["gaps"][attribute.name] = {name: _gap(figures, name) for name in _GAPS}
    if holdout_rows < 0.5:
        return None
    return {
        "approve_below_pd": float(approve_below_pd),
        "holdout_rows": round(holdout_rows),
        "min_group_rows": MIN_GROUP_ROWS,
        **out,
    }
