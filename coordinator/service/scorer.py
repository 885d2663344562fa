"""Scores, grades, reasons and decisions for a batch of applicants with the active model version."""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

import numpy as np

from federation.inference import NumpyTowers, compile_towers
from federation.loading import EncodedData
from federation.model import FourDimensionModel, load_model
from federation.model_card import ModelCard
from federation.reasons import categorical_baselines, reason_records, towers_and_effects
from federation.schema import Schema
from federation.scoring import points_from_logit
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
    baselines: tuple[int, ...]  # each categorical input's baseline category: found once per model
    towers: NumpyTowers  # the weights as numpy arrays: a few applicants cost microseconds, not ms

    @classmethod
    def load(cls, version: ModelVersion, schema: Schema) -> ServingModel:
        model, card = load_model(version.model_path, expected_sha256=version.model_sha256)
        card.schema(schema, "the service's schema")
        return cls(version, model, card, schema, categorical_baselines(model), compile_towers(model))

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
    effects: np.ndarray  # (rows, features): each feature's effect on the logit

    def rows(self, start: int, stop: int) -> Scored:
        """Rows ``start:stop`` of the batch."""
        return Scored(
            ids=self.ids[start:stop],
            pd=self.pd[start:stop],
            points=self.points[start:stop],
            logit=self.logit[start:stop],
            baseline=self.baseline,
            dimensions=self.dimensions,
            contributions=self.contributions[start:stop],
            grades=self.grades[start:stop],
            reasons=self.reasons[start:stop],
            effects=self.effects[start:stop],
        )

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


def score_batch(
    serving: ServingModel, data: EncodedData, rules: ScoringRules, given: list[dict[str, Any]] | None = None
) -> Scored:
    """Scores, grades and reasons for every row of ``data``: one pass through the towers."""
    towers, effects = towers_and_effects(
        serving.model, data, baselines=serving.baselines, compiled=serving.towers
    )
    reference = serving.towers.reference
    contributions = towers - reference
    baseline = float(reference.sum())
    logit = contributions.sum(axis=1) + baseline
    if not np.isfinite(logit).all():  # never answer NaN: the model or its input is broken
        raise ValueError("the model gave a non-finite score; nothing is served")
    pd_ = 1.0 / (1.0 + np.exp(-logit))
    scale = rules.scale
    return Scored(
        ids=[str(i) for i in data.ids.tolist()],
        pd=pd_,
        points=points_from_logit(logit, scale.base_points, scale.base_odds, scale.points_to_double_odds),
        logit=logit,
        baseline=baseline,
        dimensions=tuple(d.value for d in serving.model.dimensions),
        contributions=contributions,
        grades=grades(pd_, rules.decision),
        reasons=reason_records(
            serving.model, serving.schema, data, effects, MAX_REASONS, given=given, compiled=serving.towers
        ),
        effects=effects,
    )


def decide(pd: float, requested: float, rules: DecisionRules) -> tuple[str, float]:
    """approve / refer / decline by the policy's cut-offs, and the suggested limit."""
    asked = max(requested, 0.0) if np.isfinite(requested) else rules.max_limit  # none given: the cap
    if pd < rules.approve_below:
        return "approve", float(min(asked, rules.max_limit))
    if pd >= rules.decline_from:
        return "decline", 0.0
    return "refer", float(min(asked * rules.refer_limit_fraction, rules.max_limit))
