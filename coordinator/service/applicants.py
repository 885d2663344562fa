"""Request bodies built from the dataset schema, and their fast encoding into model inputs.

The applicant model has one field per model input (protected attributes are never
asked for), typed and bounded as the schema says, so the OpenAPI document shows members
exactly what to send and every bad field is reported at once (422).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, create_model

from federation.loading import EncodedData, FeatureLayout, apply_transform
from federation.memo import by_identity
from federation.schema import ColumnType, MissingPolicy, Schema, Transform
from policies.documents import PURPOSES


def _numeric_field(
    description: str, low: float | None, high: float | None, optional: bool
) -> tuple[Any, Any]:
    kind: Any = float | None if optional else float
    return kind, Field(
        None if optional else ..., ge=low, le=high, allow_inf_nan=False, description=description
    )


def applicant_model(schema: Schema) -> type[BaseModel]:
    """The pydantic model of one applicant under ``schema`` (extra fields refused)."""
    fields: dict[str, Any] = {
        schema.id_column: (
            str,
            Field(min_length=1, max_length=128, description="The applicant's id at the member"),
        )
    }
    for col in schema.features():
        optional = col.missing is MissingPolicy.IMPUTE
        text = col.description + (" (may be null)" if optional else "")
        if col.type is ColumnType.NUMERIC:
            fields[col.name] = _numeric_field(text, col.min, col.max, optional)
        elif col.type is ColumnType.BINARY:
            binary: Any = Literal[0, 1] | None if optional else Literal[0, 1]
            fields[col.name] = (binary, Field(None if optional else ..., description=text))
        else:
            kind: Any = Literal[tuple(col.categories)]
            fields[col.name] = (
                kind | None if optional else kind,
                Field(None if optional else ..., description=text),
            )
    return create_model(
        f"Applicant_{schema.name}".replace("-", "_"),
        __config__=ConfigDict(extra="forbid", title=f"Applicant ({schema.name} {schema.version})"),
        **fields,
    )


Purpose = Literal[PURPOSES]  # type: ignore[valid-type]

_CONSENT = Field(
    None,
    min_length=1,
    max_length=200,
    description="The applicant's consent reference at the member (required where the federation policy says)",
)


def request_models(schema: Schema, max_batch: int) -> tuple[type[BaseModel], type[BaseModel]]:
    """The single and batch request bodies."""
    applicant = applicant_model(schema)
    config = ConfigDict(extra="forbid")
    single = create_model(
        "ScoreRequest",
        __config__=config,
        purpose=(Purpose, Field(description="Why the member asks; must be allowed for it")),
        consent_reference=(str | None, _CONSENT),
        applicant=(applicant, ...),
    )
    batch = create_model(
        "BatchScoreRequest",
        __config__=config,
        purpose=(Purpose, Field(description="Why the member asks; must be allowed for it")),
        consent_reference=(str | None, _CONSENT),
        applicants=(list[applicant], Field(min_length=1, max_length=max_batch)),  # type: ignore[valid-type]
    )
    return single, batch


@dataclass(frozen=True)
class _Encoding:
    """How a schema's applicants become a layout's inputs, worked out once per model."""

    numeric: Callable[[dict[str, Any]], tuple[Any, ...]]  # a row's numeric inputs, layout order
    transforms: tuple[tuple[Transform, np.ndarray], ...]  # the columns each transform applies to
    categorical: tuple[tuple[str, dict[str, int]], ...]  # each input's name and codes (0: missing)
    id_column: str


@by_identity
@functools.lru_cache(maxsize=8)
def _encoding(schema: Schema, layout: FeatureLayout) -> _Encoding:
    by_transform: dict[Transform, list[int]] = {}
    for j, name in enumerate(layout.numeric):
        by_transform.setdefault(schema.column(name).transform, []).append(j)
    return _Encoding(
        numeric=operator.itemgetter(*layout.numeric) if len(layout.numeric) > 1 else _one(layout.numeric),
        transforms=tuple(
            (t, np.asarray(cols)) for t, cols in by_transform.items() if t is not Transform.NONE
        ),
        categorical=tuple(
            (name, {c: i + 1 for i, c in enumerate(schema.column(name).categories)})
            for name in layout.categorical
        ),
        id_column=schema.id_column,
    )


def _one(names: tuple[str, ...]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """``itemgetter`` that always gives a tuple (with one name it would give the bare value)."""
    return lambda row: tuple(row[n] for n in names)


def encode_applicants(rows: list[dict[str, Any]], schema: Schema, layout: FeatureLayout) -> EncodedData:
    """Validated applicants' fields (a request model's ``__dict__`` each) as model inputs: one array
    for the numbers (None -> NaN), a transform per group of columns; the same arithmetic as
    :func:`federation.loading.apply_transform` on a file."""
    plan = _encoding(schema, layout)
    values = np.array([plan.numeric(r) for r in rows], dtype=np.float64).reshape(
        len(rows), len(layout.numeric)
    )
    for transform, cols in plan.transforms:
        values[:, cols] = apply_transform(values[:, cols], transform)
    categorical = np.array(
        [[codes.get(r[name], 0) for name, codes in plan.categorical] for r in rows], dtype=np.int64
    ).reshape(len(rows), len(plan.categorical))
    ids = np.array([r[plan.id_column] for r in rows], dtype=object)
    return EncodedData(
        ids=ids,
        numeric=values.astype(np.float32),
        categorical=categorical,
        label=None,
        layout=layout,
    )
