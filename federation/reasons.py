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

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

import numpy as np
import torch
from torch import nn

from federation.inference import NumpyTowers, StackedTowers, compile_towers
from federation.loading import EncodedData, FeatureLayout
from federation.memo import by_identity
from federation.model import DimensionTower, FourDimensionModel
from federation.schema import Column, ColumnType, Schema, Transform

Direction = Literal["raises_risk", "lowers_risk"]
RAISES_RISK: Final = "raises_risk"
LOWERS_RISK: Final = "lowers_risk"

MIN_EFFECT = 1e-6  # a smaller |effect| (logit scale) is no reason
EFFECT_BATCH = 256  # applicants per pass: every tower sees (its features + 1) copies of them, and
# arrays of that size stay in the cache (larger passes were slower a row)
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


@dataclass(frozen=True)
class _Copies:
    """How the perturbed copies of the rows are made, all towers at once: copy 0 of a tower is
    the applicants as they are, copy ``k`` has one of the tower's inputs at its baseline (copies
    past a tower's own are unused)."""

    keep: np.ndarray  # (towers, copies, 1, width): 0 where a copy puts an input slot at its baseline
    base: np.ndarray  # (towers, copies, 1, width): the baseline's value there
    tower: np.ndarray  # (features,): each feature's tower, layout order
    copy: np.ndarray  # (features,): and its copy


@by_identity
def _copies(stacked: StackedTowers, layout: FeatureLayout, codes: tuple[int, ...]) -> _Copies:
    """The copies for a model's towers and categorical baselines: built once per model."""
    if stacked.dimensions != tuple(d.value for d in layout.dimensions):
        raise ValueError(f"compiled towers {stacked.dimensions} are not the layout's dimensions")
    n_num = len(layout.numeric)
    features = _tower_features(layout)
    copies = 1 + max(len(num) + len(cat) for num, cat in features.values())
    towers = len(stacked.dimensions)
    keep = np.ones((towers, copies, 1, stacked.width), dtype=np.float32)
    base = np.zeros((towers, copies, 1, stacked.width), dtype=np.float32)
    tower = np.zeros(layout.width, dtype=np.int64)
    copy = np.zeros(layout.width, dtype=np.int64)
    embedding = stacked.table.shape[1]
    for d, dim in enumerate(stacked.dimensions):
        num_idx, cat_idx = features[dim]
        slots = stacked.slots[d]
        for k, j in enumerate(num_idx, start=1):  # the value and its missing indicator at 0
            keep[d, k, 0, : len(slots)] = ~np.isin(slots, [j, n_num + j])
            tower[j], copy[j] = d, k
        for k, j in enumerate(cat_idx, start=1 + len(num_idx)):  # the baseline category's embedding
            first = 2 * n_num + j * embedding
            at = np.flatnonzero((slots >= first) & (slots < first + embedding))
            keep[d, k, 0, at] = 0.0
            base[d, k, 0, at] = stacked.table[stacked.offsets[j] + codes[j]]
            tower[n_num + j], copy[n_num + j] = d, k
    return _Copies(keep, base, tower, copy)


def towers_and_effects(
    model: FourDimensionModel,
    data: EncodedData,
    batch: int = EFFECT_BATCH,
    baselines: tuple[int, ...] | None = None,
    compiled: NumpyTowers | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each tower's raw output (rows, dimensions), as ``model.raw_contributions`` gives it, and
    :func:`feature_effects`, from one pass: scoring with reasons runs every tower once per copy.

    The towers run as numpy arrays (:mod:`federation.inference`); ``compiled`` (from
    :func:`compile_towers`) saves copying the weights again for a model that does not change."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    _check_layout(model, data)
    layout = model.layout
    net = compiled if compiled is not None else compile_towers(model)
    stacked = net.stacked
    plan = _copies(stacked, layout, categorical_baselines(model) if baselines is None else baselines)
    n_towers, n_copies = plan.keep.shape[:2]
    effects = np.zeros((len(data), layout.width), dtype=np.float64)
    towers = np.zeros((len(data), n_towers), dtype=np.float64)
    for start in range(0, len(data), batch):
        stop = min(start + batch, len(data))
        z, missing = net.normalized(data.numeric[start:stop])
        x = stacked.inputs(z, missing, data.categorical[start:stop])[:, None] * plan.keep + plan.base
        out = stacked(x.reshape(n_towers, -1, stacked.width)).reshape(n_towers, n_copies, stop - start)
        towers[start:stop] = out[:, 0].T
        effects[start:stop] = (out[plan.tower, 0].astype(np.float64) - out[plan.tower, plan.copy]).T
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


def _leaders_first(strength: np.ndarray, groups: np.ndarray, limit: int) -> np.ndarray:
    """Per row, the strongest feature of each dimension (``groups``: (dimensions, features), True
    where a feature is the dimension's) first, then the strongest of the rest, up to ``limit``; the
    chosen features come out ordered by strength (ties in feature order)."""
    rows = np.arange(len(strength))[:, None]
    if not strength.size:
        return np.zeros((len(strength), 0), dtype=np.int64)
    leader = np.zeros(strength.shape, dtype=bool)  # strengths are >= 0: -1 is never a group's max
    leader[rows, np.argmax(np.where(groups, strength[:, None, :], -1.0), axis=2)] = True
    # leaders outrank every other feature; among themselves and among the rest, strength decides
    priority = np.where(leader & (strength >= MIN_EFFECT), 1.0, 0.0)
    chosen = np.lexsort((-strength, -priority), axis=1)[:, :limit]
    return chosen[rows, np.lexsort((chosen, -strength[rows, chosen]), axis=1)]


def _significant(values: np.ndarray, digits: int = 7) -> np.ndarray:
    """``values`` rounded to ``digits`` significant digits (float32 holds about 7), NaN kept."""
    with np.errstate(divide="ignore", invalid="ignore"):
        magnitude = np.floor(np.log10(np.abs(values)))
    magnitude = np.where(np.isfinite(magnitude), magnitude, 0.0)
    scale = 10.0 ** (digits - 1 - magnitude)
    return np.round(values * scale) / scale


@dataclass(frozen=True)
class _Texts:
    """What a schema and a layout say about every model input, made once per model."""

    columns: list[Column]
    names: np.ndarray  # object: the feature names, layout order
    dimensions: np.ndarray  # object: each feature's dimension
    dimension_groups: np.ndarray  # (dimensions, features): True where a feature is the dimension's
    texts: np.ndarray  # object: every feature's texts, one after the other
    first_text: np.ndarray  # where each feature's texts start


@by_identity
@functools.lru_cache(maxsize=32)
def _texts(schema: Schema, layout: FeatureLayout) -> _Texts:
    names = feature_names(layout)
    declared = {c.name for c in schema.columns}
    unknown = [n for n in names if n not in declared]
    if unknown:
        raise ValueError(f"schema {schema.name!r} has no column(s) {unknown} that the model uses")
    columns = [schema.column(n) for n in names]
    n_num = len(layout.numeric)
    # a feature's texts by state: numeric 0 low / 1 high / 2 missing; categorical: its code (0 missing)
    texts = [
        list(_numeric_texts(c))
        if j < n_num
        else [f"{_subject(c)}: not reported", *(f"{_subject(c)}: {k}" for k in c.categories)]
        for j, c in enumerate(columns)
    ]
    dimensions = [d.value for d in layout.numeric_dimensions + layout.categorical_dimensions]
    return _Texts(
        columns=columns,
        names=np.array(names, dtype=object),
        dimensions=np.array(dimensions, dtype=object),
        dimension_groups=np.unique(np.asarray(dimensions))[:, None] == np.asarray(dimensions)[None, :],
        texts=np.array([t for ts in texts for t in ts], dtype=object),
        first_text=np.cumsum([0, *(len(t) for t in texts[:-1])]),
    )


def reason_records(
    model: FourDimensionModel,
    schema: Schema,
    data: EncodedData,
    effects: np.ndarray | None = None,
    limit: int = 4,
    *,
    adverse: bool = False,
    given: list[dict[str, Any]] | None = None,
    compiled: NumpyTowers | None = None,
) -> list[list[dict[str, Any]]]:
    """:func:`reason_codes` (or with ``adverse``, :func:`adverse_reasons`) as JSON-ready dicts, fast.

    With ``given`` (each applicant's fields as sent) a reason's ``value`` is the value sent; else it
    is recovered from the encoded data (a ``logit`` rate only within its clip). ``compiled``: the
    model's :func:`compile_towers`, when the caller holds it already (as for :func:`towers_and_effects`).
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
    _check_layout(model, data)
    layout = model.layout
    width = layout.width
    if effects is None:
        effects = feature_effects(model, data)
    if effects.shape != (len(data), width):
        raise ValueError(f"effects have shape {effects.shape}, expected {(len(data), width)}")
    known = _texts(schema, layout)

    strength = np.where(effects > 0, effects, 0.0) if adverse else np.abs(effects)
    if adverse:
        order = np.argsort(-strength, axis=1, kind="stable")[:, :limit]  # stable: ties in feature order
    else:
        order = _leaders_first(strength, known.dimension_groups, limit)
    rows = np.arange(len(data))
    kept = (strength[rows[:, None], order] >= MIN_EFFECT).sum(axis=1)

    # the kept (row, feature) pairs, flat, row by row: numpy picks every part, Python only packs dicts
    chosen = np.arange(order.shape[1])[None, :] < kept[:, None]
    feature = order[chosen]
    row_of = np.repeat(rows, kept)
    effect = effects[row_of, feature]
    n_num = len(layout.numeric)
    # each input's state, its text's index: numeric 0 low / 1 high / 2 missing; categorical: its code
    mean = compiled.mean if compiled is not None else model.mean.detach().cpu().numpy()
    states = np.empty((len(data), width), dtype=np.int64)
    with np.errstate(invalid="ignore"):
        states[:, :n_num] = np.where(np.isnan(data.numeric), 2, data.numeric > mean)
    states[:, n_num:] = data.categorical
    state = states[row_of, feature]
    names = known.names[feature].tolist()
    if given is None:
        columns = known.columns
        recovered = np.concatenate(
            [_significant(_given(data.numeric, columns[:n_num])), data.categorical.astype(np.float64)], axis=1
        )
        decoders = [_decoder(c) for c in columns]
        values = [
            decoders[j](v) for j, v in zip(feature.tolist(), recovered[row_of, feature].tolist(), strict=True)
        ]
    else:
        values = [given[r].get(n) for r, n in zip(row_of.tolist(), names, strict=True)]
    records = [
        {"feature": n, "dimension": d, "direction": dr, "effect": e, "value": v, "text": t}
        for n, d, dr, e, v, t in zip(
            names,
            known.dimensions[feature].tolist(),
            np.where(effect > 0, RAISES_RISK, LOWERS_RISK).tolist(),
            effect.tolist(),
            values,
            known.texts[known.first_text[feature] + state].tolist(),
            strict=True,
        )
    ]
    ends = np.cumsum(kept).tolist()
    return [records[end - count : end] for end, count in zip(ends, kept.tolist(), strict=True)]


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
