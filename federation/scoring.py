"""Turn model outputs into a probability of default, a points score and per-dimension parts."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from federation.loading import EncodedData
from federation.model import FourDimensionModel, tensors
from federation.training import PREDICT_BATCH

# Points scale: 600 points at odds of 50 good : 1 bad, 20 points to double the odds.
BASE_POINTS = 600.0
BASE_ODDS = 50.0
POINTS_TO_DOUBLE_ODDS = 20.0


def points_from_logit(
    logit: np.ndarray,
    base_points: float = BASE_POINTS,
    base_odds: float = BASE_ODDS,
    points_to_double_odds: float = POINTS_TO_DOUBLE_ODDS,
) -> np.ndarray:
    """Credit points from the log-odds of default (higher points = lower risk): ``base_points`` at
    odds of ``base_odds`` good : 1 bad, ``points_to_double_odds`` more for each doubling of the odds."""
    factor = points_to_double_odds / math.log(2)
    return base_points + factor * (-logit - math.log(base_odds))


@dataclass(frozen=True)
class ScoreBatch:
    ids: np.ndarray
    probability_of_default: np.ndarray
    points: np.ndarray
    logit: np.ndarray
    baseline: float  # the average borrower's logit
    dimensions: tuple[str, ...]
    contributions: np.ndarray  # (rows, dimensions), logit scale; sum + baseline = logit

    def frame(self) -> pd.DataFrame:
        """One row per applicant (columns built whole, no per-row Python)."""
        columns: dict[str, object] = {
            "id": self.ids.astype(str),
            "probability_of_default": self.probability_of_default,
            "points": np.round(self.points, 1),
            "logit": self.logit,
            "baseline": np.full(len(self.ids), self.baseline),
        }
        for j, dim in enumerate(self.dimensions):
            columns[f"contribution_{dim}"] = self.contributions[:, j]
        return pd.DataFrame(columns)

    def records(self) -> list[dict[str, object]]:
        """Every applicant as :meth:`row` gives it, from whole columns (for JSON)."""
        points = np.round(self.points, 1).tolist()
        return [
            {
                "id": str(i),
                "probability_of_default": p,
                "points": pts,
                "logit": lg,
                "baseline": self.baseline,
                "contributions": dict(zip(self.dimensions, c, strict=True)),
            }
            for i, p, pts, lg, c in zip(
                self.ids.tolist(),
                self.probability_of_default.tolist(),
                points,
                self.logit.tolist(),
                self.contributions.tolist(),
                strict=True,
            )
        ]

    def row(self, i: int) -> dict[str, object]:
        return {
            "id": str(self.ids[i]),
            "probability_of_default": float(self.probability_of_default[i]),
            "points": round(float(self.points[i]), 1),
            "logit": float(self.logit[i]),
            "baseline": self.baseline,
            "contributions": {
                d: float(c) for d, c in zip(self.dimensions, self.contributions[i], strict=True)
            },
        }


@torch.no_grad()
def score(model: FourDimensionModel, data: EncodedData, batch: int = PREDICT_BATCH) -> ScoreBatch:
    """Score every row of ``data``, ``batch`` rows at a time."""
    model.eval()
    numeric, categorical = tensors(data)
    parts = np.concatenate(
        [
            model.contributions(n, c).numpy().astype(np.float64)
            for n, c in zip(torch.split(numeric, batch), torch.split(categorical, batch), strict=True)
        ]
        or [np.zeros((0, len(model.dimensions)))]
    )
    baseline = float(model.baseline().item())
    logit = parts.sum(axis=1) + baseline
    return ScoreBatch(
        ids=data.ids,
        probability_of_default=1.0 / (1.0 + np.exp(-logit)),
        points=points_from_logit(logit),
        logit=logit,
        baseline=baseline,
        dimensions=tuple(d.value for d in model.dimensions),
        contributions=parts,
    )
