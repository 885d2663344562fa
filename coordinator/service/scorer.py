"""Scores, grades, reasons and decisions for a batch of applicants with the active model version."""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from federation.loading import EncodedData
from federation.model import FourDimensionModel, load_model
from federation.model_card import ModelCard
from federation.reasons import Reason, feature_effects, reason_codes
from federation.schema import Schema
from federation.scoring import points_from_logit, score
from policies.documents import DecisionRules, ScoringRules
from policies.registry import ModelVersion

MAX_REASONS = 4


@dataclass(frozen=True)
class ServingModel:
    """A registered version, loaded (its weights file checked against its sha256)."""

    version: ModelVersion
    model: FourDimensionModel
    card: ModelCard
    schema: Schema

    @classmethod
    def load(cls, version: ModelVersion, schema: Schema) -> ServingModel:
        model, card = load_model(version.model_path, expected_sha256=version.model_sha256)
        card.schema(schema, "the service's schema")
        return cls(version, model, card, schema)

    def identity(self) -> dict[str, str]:
        return {
            "version": self.version.label,
            "sha256": self.version.model_sha256,
            "trained_under_policy_sha256": self.version.federation_policy_sha256,
        }


def grades(pd: np.ndarray, rules: DecisionRules) -> list[str]:
    """Risk grade letters: A below the first bound, B below the second, ..."""
    index = np.searchsorted(np.asarray(rules.grades), pd, side="right")
    letters = string.ascii_uppercase
    return [letters[i] for i in index.tolist()]


def reason_dicts(
    rows: list[list[Reason]], given: list[dict[str, Any]] | None = None
) -> list[list[dict[str, Any]]]:
    """Reasons as JSON; with ``given`` (each applicant's fields as sent) a reason shows the value sent."""
    return [
        [
            {
                "feature": r.feature,
                "dimension": r.dimension,
                "direction": r.direction,
                "effect": round(r.effect, 6),
                "value": r.value if given is None else given[i].get(r.feature, r.value),
                "text": r.text,
            }
            for r in row
        ]
        for i, row in enumerate(rows)
    ]


@dataclass(frozen=True)
class Scored:
    """Columns for a batch; ``items()`` gives one JSON-ready dict per applicant."""

    ids: list[str]
    pd: np.ndarray
    points: np.ndarray
    logit: np.ndarray
    baseline: float
    dimensions: tuple[str, ...]
    contributions: np.ndarray
    grades: list[str]
    reasons: list[list[dict[str, Any]]]

    def items(self) -> list[dict[str, Any]]:
        return [
            {
                "id": i,
                "probability_of_default": p,
                "points": pts,
                "grade": g,
                "logit": lg,
                "baseline": self.baseline,
                "contributions": dict(zip(self.dimensions, c, strict=True)),
                "reasons": r,
            }
            for i, p, pts, g, lg, c, r in zip(
                self.ids,
                self.pd.tolist(),
                np.round(self.points, 1).tolist(),
                self.grades,
                self.logit.tolist(),
                self.contributions.tolist(),
                self.reasons,
                strict=True,
            )
        ]


@torch.no_grad()
def score_batch(
    serving: ServingModel, data: EncodedData, rules: ScoringRules, given: list[dict[str, Any]] | None = None
) -> Scored:
    result = score(serving.model, data)
    effects = feature_effects(serving.model, data)
    reasons = reason_codes(serving.model, serving.schema, data, effects, limit=MAX_REASONS)
    scale = rules.scale
    return Scored(
        ids=[str(i) for i in data.ids.tolist()],
        pd=result.probability_of_default,
        points=points_from_logit(
            result.logit, scale.base_points, scale.base_odds, scale.points_to_double_odds
        ),
        logit=result.logit,
        baseline=result.baseline,
        dimensions=result.dimensions,
        contributions=result.contributions,
        grades=grades(result.probability_of_default, rules.decision),
        reasons=reason_dicts(reasons, given),
    )


def decide(pd: float, requested: float, rules: DecisionRules) -> tuple[str, float]:
    """approve / refer / decline by the policy's cut-offs, and the suggested limit."""
    asked = requested if np.isfinite(requested) and requested > 0 else rules.max_limit
    if pd < rules.approve_below:
        return "approve", float(min(asked, rules.max_limit))
    if pd >= rules.decline_from:
        return "decline", 0.0
    return "refer", float(min(asked * rules.refer_limit_fraction, rules.max_limit))
