"""Feature-level reason codes that are faithful to the model.

The effect of feature ``j`` on an applicant's score is what the model itself says:

    effect_j = logit(x) - logit(x with feature j moved to its population baseline)

Every reported effect can be checked by scoring that one changed input. A feature
feeds one dimension's tower only, so moving it changes that tower's output and
nothing else; the effects of a tower's features are computed together, as one
batch of perturbed copies of the rows.

Population baselines
--------------------
Numeric and binary feature
    The federation's mean (``model.mean[j]``, the value that normalizes to 0),
    reported as present. For an imputed column an applicant's missing value and
    the baseline differ only in the missing-indicator input.
Categorical feature
    A real category, never an average of embeddings: the *most typical* one.
    For a borrower at the federation's mean on every numeric input, each category
    gives the tower an output; the baseline is the category whose output is the
    closest to the mean of those outputs over all the feature's categories
    (ties: the earlier category). A tower with several categorical features
    holds the others at their own baselines, found by sweeping the features in
    layout order until no baseline changes (starting from the category whose
    embedding is the closest to the mean embedding). The baselines depend on the
    model alone, so an applicant gets the same reasons in any batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

import numpy as np
import torch
from torch import nn

from federation.loading import EncodedData, FeatureLayout
from federation.model import DimensionTower, FourDimensionModel
from federation.schema import Column, ColumnType, Schema, Transform

Direction = Literal["raises_risk", "lowers_risk"]
RAISES_RISK: Final = "raises_risk"
LOWERS_RISK: Final = "lowers_risk"

MIN_EFFECT = 1e-6  # a smaller |effect| (logit scale) is no reason
EFFECT_BATCH = 2048  # applicants per pass; a tower sees (its features + 1) times as many rows
MAX_SWEEPS = 10  # passes over a tower's categorical features when choosing their baselines


@dataclass(frozen=True, slots=True)
class Reason:
    """One feature's part in an applicant's score."""

    feature: str  # the column name
    dimension: str
    direction: Direction  # the sign of ``effect``: the model's, never the text's
    effect: float  # logit(applicant) - logit(applicant with this feature at its baseline)
    value: float | int | str | None  # the applicant's value as given; None when missing
    text: str  # plain words


def feature_names(layout: FeatureLayout) -> tuple[str, ...]:
    """The model's inputs in layout order: numeric (and binary) columns, then categorical ones."""
    return layout.numeric + layout.categorical


def _normalized(model: FourDimensionModel, numeric: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The towers' numeric inputs, as :meth:`FourDimensionModel.raw_contributions` forms them."""
    missing = torch.isnan(numeric)
    z = torch.where(missing, torch.zeros_like(numeric), (numeric - model.mean) / model.std)
    return z, missing.to(z.dtype)


def _tower_features(layout: FeatureLayout) -> dict[str, tuple[list[int], list[int]]]:
    """Per dimension: the indices of its numeric and of its categorical inputs."""
    return {
        dim.value: (
            [i for i, d in enumerate(layout.numeric_dimensions) if d is dim],
            [i for i, d in enumerate(layout.categorical_dimensions) if d is dim],
        )
        for dim in layout.dimensions
    }


@torch.no_grad()
def categorical_baselines(model: FourDimensionModel) -> tuple[int, ...]:
    """The baseline code of every categorical input (layout order): see the module's docstring."""
    model.eval()
    layout = model.layout
    codes = [1] * len(layout.categorical)
    width = len(layout.numeric)
    for dim, (_, cat_idx) in _tower_features(layout).items():
        tower = cast(DimensionTower, model.towers[dim])
        embeddings = dict(zip(cat_idx, (cast(nn.Embedding, e) for e in tower.embeddings), strict=True))
        for j in cat_idx:  # start: the category whose embedding is the nearest the mean embedding
            rows = embeddings[j].weight[1:]
            codes[j] = 1 + int(torch.argmin(((rows - rows.mean(0)) ** 2).sum(1)))
        for _ in range(MAX_SWEEPS):
            changed = False
            for j in cat_idx:
                candidates = layout.cardinalities[j] - 1
                cat = torch.tensor([codes] * candidates, dtype=torch.long)
                cat[:, j] = torch.arange(1, candidates + 1)
                zeros = torch.zeros(candidates, width)
                out = tower(zeros, zeros, cat).double()
                best = 1 + int(torch.argmin((out - out.mean()).abs()))
                changed |= best != codes[j]
                codes[j] = best
            if not changed:
                break
    return tuple(codes)


def _check_layout(model: FourDimensionModel, data: EncodedData) -> None:
    if data.layout != model.layout:
        raise ValueError(
            f"the data's inputs {list(feature_names(data.layout))} are not the model's "
            f"{list(feature_names(model.layout))}; encode the data with the model's layout"
        )


def feature_effects(
    model: FourDimensionModel,
    data: EncodedData,
    batch: int = EFFECT_BATCH,
    baselines: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Every feature's effect on every applicant's logit, shape (rows, features), layout order.

    ``effects[i, j] = logit(x_i) - logit(x_i with feature j at its baseline)``: positive when
    the applicant's value raises the risk. Float64; batched, no per-row Python. ``baselines``
    (from :func:`categorical_baselines`) saves finding them again for a model that does not change.
    """
    return towers_and_effects(model, data, batch, baselines)[1]


@torch.inference_mode()
def towers_and_effects(
    model: FourDimensionModel,
    data: EncodedData,
    batch: int = EFFECT_BATCH,
    baselines: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each tower's raw output (rows, dimensions), as ``model.raw_contributions`` gives it, and
    :func:`feature_effects`, from one pass: scoring with reasons runs every tower once per copy."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    _check_layout(model, data)
    model.eval()
    layout = model.layout
    n_num = len(layout.numeric)
    codes = torch.tensor(categorical_baselines(model) if baselines is None else baselines, dtype=torch.long)
    effects = np.zeros((len(data), layout.width), dtype=np.float64)
    towers = np.zeros((len(data), len(model.dimensions)), dtype=np.float64)
    numeric_all = torch.from_numpy(data.numeric)
    categorical_all = torch.from_numpy(data.categorical)
    for start in range(0, len(data), batch):
        stop = min(start + batch, len(data))
        rows = stop - start
        z, missing = _normalized(model, numeric_all[start:stop])
        cat = categorical_all[start:stop]
        for d, (dim, (num_idx, cat_idx)) in enumerate(_tower_features(layout).items()):
            copies = 1 + len(num_idx) + len(cat_idx)  # copy 0: the applicants as they are
            zz, mm, cc = z.repeat(copies, 1), missing.repeat(copies, 1), cat.repeat(copies, 1)
            for slot, j in enumerate(num_idx, start=1):
                zz[slot * rows : (slot + 1) * rows, j] = 0.0
                mm[slot * rows : (slot + 1) * rows, j] = 0.0
            for slot, j in enumerate(cat_idx, start=1 + len(num_idx)):
                cc[slot * rows : (slot + 1) * rows, j] = codes[j]
            out = model.towers[dim](zz, mm, cc).view(copies, rows).numpy()
            towers[start:stop, d] = out[0]
            columns = num_idx + [n_num + j for j in cat_idx]
            effects[start:stop, columns] = (out[0].astype(np.float64) - out[1:]).T
    return towers, effects


def _subject(column: Column) -> str:
    """A column's name as words: ``supply_chain_position`` -> ``Supply chain position``."""
    words = column.name.replace("_", " ").strip()
    return words[:1].upper() + words[1:]


def _numeric_texts(column: Column) -> tuple[str, str, str]:
    """The texts of a low, a high and a missing value."""
    what = column.description or _subject(column)
    low = column.reason_low or f"{what}: lower than average"
    high = column.reason_high or f"{what}: higher than average"
    return low, high, f"{_subject(column)}: not reported"


def _given(numeric: np.ndarray, columns: list[Column]) -> np.ndarray:
    """Encoded numeric values back to the applicant's own (untransformed), float64, NaN = missing.

    A ``logit`` rate is known only within its clip (0.001..0.999): 1.0 comes back as 0.999."""
    raw = numeric.astype(np.float64)
    for j, column in enumerate(columns):
        if column.transform is Transform.LOG1P:
            raw[:, j] = np.expm1(raw[:, j])
        elif column.transform is Transform.SIGNED_LOG1P:
            raw[:, j] = np.sign(raw[:, j]) * np.expm1(np.abs(raw[:, j]))
        elif column.transform is Transform.LOGIT:  # a rate beyond the clip shows as the clip
            raw[:, j] = 1.0 / (1.0 + np.exp(-raw[:, j]))
    return raw


def _decoder(column: Column) -> Callable[[float], float | int | str | None]:
    """Turns one gathered value (a number, or a category's code) into the value as given.

    A number has float32's precision in the encoded data: it is given to 7 significant digits.
    """
    if column.type is ColumnType.CATEGORICAL:
        labels: tuple[str | None, ...] = (None, *column.categories)
        return lambda v: labels[int(v)]
    if column.type is ColumnType.BINARY:
        return lambda v: None if v != v else int(v)
    return lambda v: None if v != v else v  # already rounded to float32's digits


def _leaders_first(strength: np.ndarray, dimension_of: np.ndarray, limit: int) -> np.ndarray:
    """Per row, the strongest feature of each dimension first, then the strongest of the rest, up to
    ``limit``; the chosen features come out ordered by strength (ties in feature order)."""
    leader = np.zeros(strength.shape, dtype=bool)
    rows = np.arange(len(strength))
    for dim in np.unique(dimension_of):
        cols = np.flatnonzero(dimension_of == dim)
        leader[rows, cols[np.argmax(strength[:, cols], axis=1)]] = True
    # leaders outrank every other feature; among themselves and among the rest, strength decides
    priority = np.where(leader & (strength >= MIN_EFFECT), 1.0, 0.0)
    chosen = (
        np.lexsort((-strength, -priority), axis=1)[:, :limit]
        if strength.size
        else np.zeros((len(strength), 0), dtype=np.int64)
    )
    ranked = np.take_along_axis(strength, chosen, axis=1)
    return np.take_along_axis(chosen, np.lexsort((chosen, -ranked), axis=1), axis=1)


def _significant(values: np.ndarray, digits: int = 7) -> np.ndarray:
    """``values`` rounded to ``digits`` significant digits (float32 holds about 7), NaN kept."""
    with np.errstate(divide="ignore", invalid="ignore"):
        magnitude = np.floor(np.log10(np.abs(values)))
    magnitude = np.where(np.isfinite(magnitude), magnitude, 0.0)
    scale = 10.0 ** (digits - 1 - magnitude)
    return np.round(values * scale) / scale


def reason_records(
    model: FourDimensionModel,
    schema: Schema,
    data: EncodedData,
    effects: np.ndarray | None = None,
    limit: int = 4,
    *,
    adverse: bool = False,
    given: list[dict[str, Any]] | None = None,
) -> list[list[dict[str, Any]]]:
    """:func:`reason_codes` (or with ``adverse``, :func:`adverse_reasons`) as JSON-ready dicts, fast.

    With ``given`` (each applicant's fields as sent) a reason's ``value`` is the value sent; else it
    is recovered from the encoded data (a ``logit`` rate only within its clip).
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
    _check_layout(model, data)
    layout = model.layout
    names = feature_names(layout)
    if effects is None:
        effects = feature_effects(model, data)
    if effects.shape != (len(data), len(names)):
        raise ValueError(f"effects have shape {effects.shape}, expected {(len(data), len(names))}")
    declared = {c.name for c in schema.columns}
    unknown = [n for n in names if n not in declared]
    if unknown:
        raise ValueError(f"schema {schema.name!r} has no column(s) {unknown} that the model uses")
    columns = [schema.column(n) for n in names]
    dimensions = [d.value for d in layout.numeric_dimensions + layout.categorical_dimensions]

    strength = np.where(effects > 0, effects, 0.0) if adverse else np.abs(effects)
    if adverse:
        order = np.argsort(-strength, axis=1, kind="stable")[:, :limit]  # stable: ties in feature order
    else:
        order = _leaders_first(strength, np.asarray(dimensions), limit)
    kept = (np.take_along_axis(strength, order, axis=1) >= MIN_EFFECT).sum(axis=1).tolist()

    # each chosen (row, feature) as a state: numeric 0 low / 1 high / 2 missing; categorical: its code
    n_num = len(layout.numeric)
    mean = model.mean.detach().cpu().numpy()
    state = np.empty((len(data), len(names)), dtype=np.int64)
    with np.errstate(invalid="ignore"):
        state[:, :n_num] = np.where(np.isnan(data.numeric), 2, data.numeric > mean)
    state[:, n_num:] = data.categorical
    texts = [
        list(_numeric_texts(c))
        if j < n_num
        else [f"{_subject(c)}: not reported", *(f"{_subject(c)}: {k}" for k in c.categories)]
        for j, c in enumerate(columns)
    ]
    chosen_state = np.take_along_axis(state, order, axis=1).tolist()
    chosen_effects = np.take_along_axis(effects, order, axis=1).tolist()
    if given is None:
        recovered = np.concatenate(
            [_significant(_given(data.numeric, columns[:n_num])), data.categorical.astype(np.float64)], axis=1
        )
        decoders = [_decoder(c) for c in columns]
        chosen_values = np.take_along_axis(recovered, order, axis=1).tolist()
        values = [
            [decoders[j](v) for j, v in zip(row, vals, strict=True)]
            for row, vals in zip(order.tolist(), chosen_values, strict=True)
        ]
    else:
        values = [[g.get(names[j]) for j in row] for row, g in zip(order.tolist(), given, strict=True)]
    return [
        [
            {
                "feature": names[j],
                "dimension": dimensions[j],
                "direction": RAISES_RISK if e > 0 else LOWERS_RISK,
                "effect": e,
                "value": v,
                "text": texts[j][st],
            }
            for j, e, st, v in zip(row[:count], eff[:count], sts[:count], vals[:count], strict=True)
        ]
        for row, count, eff, sts, vals in zip(
            order.tolist(), kept, chosen_effects, chosen_state, values, strict=True
        )
    ]


def _rank(
    model: FourDimensionModel,
    schema: Schema,
    data: EncodedData,
    effects: np.ndarray | None,
    limit: int,
    adverse: bool,
) -> list[list[Reason]]:
    records = reason_records(model, schema, data, effects, limit, adverse=adverse)
    return [[Reason(**r) for r in row] for row in records]


def reason_codes(
    model: FourDimensionModel,
    schema: Schema,
    data: EncodedData,
    effects: np.ndarray | None = None,
    limit: int = 4,
) -> list[list[Reason]]:
    """Per applicant, at most ``limit`` features, largest |effect| first.

    The model explains a score per dimension, so its reasons do too: the strongest feature of each
    of the four dimensions is chosen first, then the strongest of the rest fill the places left;
    the chosen ones are ordered by |effect|. Ties keep the layout's feature order; an |effect|
    below ``MIN_EFFECT`` is no reason. ``effects``, from :func:`feature_effects`, saves computing
    them again.
    """
    return _rank(model, schema, data, effects, limit, adverse=False)


def adverse_reasons(
    model: FourDimensionModel,
    schema: Schema,
    data: EncodedData,
    effects: np.ndarray | None = None,
    limit: int = 4,
) -> list[list[Reason]]:
    """Per applicant, the at most ``limit`` features that raise the risk the most: a decline's reasons."""
    return _rank(model, schema, data, effects, limit, adverse=True)
