"""Request bodies built from the dataset schema, and their fast encoding into model inputs.

The applicant model has one field per model input (protected attributes are never
asked for), typed and bounded as the schema says, so the OpenAPI document shows members
exactly what to send and every bad field is reported at once (422).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, create_model

from federation.loading import EncodedData, FeatureLayout, apply_transform
from federation.schema import ColumnType, MissingPolicy, Schema
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


def encode_applicants(applicants: list[BaseModel], schema: Schema, layout: FeatureLayout) -> EncodedData:
    """Validated applicants as model inputs: one numpy column at a time, no per-cell work beyond a read."""
    rows = [a.__dict__ for a in applicants]
    numeric = np.empty((len(rows), len(layout.numeric)), dtype=np.float32)
    for j, name in enumerate(layout.numeric):
        values = np.array([r[name] for r in rows], dtype=np.float64)  # None -> nan
        numeric[:, j] = apply_transform(values, schema.column(name).transform)
    categorical = np.zeros((len(rows), len(layout.categorical)), dtype=np.int64)
    for j, name in enumerate(layout.categorical):
        codes = {c: i + 1 for i, c in enumerate(schema.column(name).categories)}  # 0: missing
        categorical[:, j] = [codes.get(r[name], 0) for r in rows]
    ids = np.array([r[schema.id_column] for r in rows], dtype=object)
    return EncodedData(ids=ids, numeric=numeric, categorical=categorical, label=None, layout=layout)
