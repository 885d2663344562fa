"""Split a pooled table into institutions the way a real market splits borrowers.

Realistic (non-IID) splits: a national bank that lends everywhere, city banks
focused on their region, a rural cooperative heavy in agriculture, an online
bank heavy in e-commerce, and small institutions with 1-5 % of the rows each.
A Dirichlet label-skew split is available for stress tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from federation.datasets.synthetic import INDUSTRIES, REGIONS, TRUE_PD_COLUMN
from federation.seeding import rng_for

TRAIN_FILE = "train.csv"
HOLDOUT_FILE = "holdout.csv"
SMALL_SHARE = 0.05


@dataclass(frozen=True)
class InstitutionProfile:
    name: str
    kind: str
    share: float  # target share of rows before renormalization
    region_affinity: dict[str, float] = field(default_factory=dict)
    industry_affinity: dict[str, float] = field(default_factory=dict)


# In the order institutions are added as --institutions grows.
INSTITUTION_PROFILES: tuple[InstitutionProfile, ...] = (
    InstitutionProfile("national_bank", "national_bank", 0.40),
    InstitutionProfile(
        "online_bank",
        "online_bank",
        0.15,
        region_affinity={"rural_north": 0.3, "rural_west": 0.3},
        industry_affinity={"ecommerce": 6.0, "services": 1.5, "agriculture": 0.2},
    ),
    InstitutionProfile(
        "rural_cooperative",
        "rural_cooperative",
        0.08,
        region_affinity={"rural_north": 6.0, "rural_west": 6.0, "metro_east": 0.1, "metro_south": 0.1},
        industry_affinity={"agriculture": 6.0, "ecommerce": 0.2},
    ),
    InstitutionProfile("city_bank_east", "city_bank", 0.15, region_affinity={"metro_east": 8.0}),
    InstitutionProfile(
        "coastal_credit_union",
        "small_lender",
        0.02,
        region_affinity={"coastal_city": 10.0},
        industry_affinity={"logistics": 3.0, "manufacturing": 2.0},
    ),
    InstitutionProfile(
        "inland_savings_bank",
        "small_lender",
        0.02,
        region_affinity={"inland_city": 10.0},
        industry_affinity={"retail_grocery": 2.0},
    ),
    InstitutionProfile(
        "west_farmers_coop",
        "small_lender",
        0.012,
        region_affinity={"rural_west": 12.0},
        industry_affinity={"agriculture": 4.0},
    ),
    InstitutionProfile("city_bank_south", "city_bank", 0.12, region_affinity={"metro_south": 8.0}),
    InstitutionProfile(
        "metro_microfinance",
        "small_lender",
        0.012,
        region_affinity={"metro_south": 4.0, "metro_east": 4.0},
        industry_affinity={"catering": 4.0, "services": 2.0},
    ),
)


def institution_profiles(n: int) -> tuple[InstitutionProfile, ...]:
    """The first ``n`` profiles, shares renormalized to sum to one."""
    if not 2 <= n <= len(INSTITUTION_PROFILES):
        raise ValueError(f"institutions must be between 2 and {len(INSTITUTION_PROFILES)}, got {n}")
    chosen = INSTITUTION_PROFILES[:n]
    total = sum(p.share for p in chosen)
    return tuple(
        InstitutionProfile(p.name, p.kind, p.share / total, p.region_affinity, p.industry_affinity)
        for p in chosen
    )


def _affinity(frame: pd.DataFrame, profiles: tuple[InstitutionProfile, ...]) -> np.ndarray:
    region = pd.Categorical(frame["region"], categories=list(REGIONS)).codes
    industry = pd.Categorical(frame["industry"], categories=list(INDUSTRIES)).codes
    reg = np.array([[p.region_affinity.get(r, 1.0) for r in REGIONS] for p in profiles])
    ind = np.array([[p.industry_affinity.get(i, 1.0) for i in INDUSTRIES] for p in profiles])
    return (reg[:, region] * ind[:, industry]).T  # rows x institutions


def assign_institutions(frame: pd.DataFrame, n: int, seed: int = 0) -> np.ndarray:
    """Institution index per row: region/industry skew, sizes matching the profile shares.

    Per-institution scales are fitted (iterative proportional fitting) so the
    expected share of each institution equals its target share.
    """
    profiles = institution_profiles(n)
    target = np.array([p.share for p in profiles])
    aff = _affinity(frame, profiles)
    scale = target.copy()
    for _ in range(50):
        weights = aff * scale
        probs = weights / weights.sum(axis=1, keepdims=True)
        scale *= target / probs.mean(axis=0)
    rng = rng_for(seed, "assign-institutions")
    cum = np.cumsum(probs, axis=1)
    return (rng.random(len(frame))[:, None] >= cum).sum(axis=1).clip(0, n - 1)


def dirichlet_label_assignment(labels: np.ndarray, n: int, alpha: float, seed: int = 0) -> np.ndarray:
    """Institution index per row with label proportions drawn from Dirichlet(alpha) per class."""
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if n < 2:
        raise ValueError(f"institutions must be >= 2, got {n}")
    rng = rng_for(seed, "dirichlet-label-skew")
    out = np.empty(len(labels), dtype=np.int64)
    for cls in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == cls))
        cuts = (np.cumsum(rng.dirichlet(np.full(n, alpha)))[:-1] * len(rows)).astype(int)
        for k, part in enumerate(np.split(rows, cuts)):
            out[part] = k
    return out


def split_holdout(frame: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Random (train, holdout) split; the holdout is the institution's own validation set."""
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    mask = rng_for(seed, "holdout").random(len(frame)) < fraction
    return frame[~mask], frame[mask]


def write_institution(frame: pd.DataFrame, folder: Path, holdout_fraction: float, seed: int) -> Path:
    """Write one institution's rows to ``folder`` (train + holdout CSV), as on its own machine."""
    folder.mkdir(parents=True, exist_ok=True)
    local = frame.drop(columns=[TRUE_PD_COLUMN], errors="ignore")
    train, holdout = split_holdout(local, holdout_fraction, seed)
    train.to_csv(folder / TRAIN_FILE, index=False)
    if len(holdout):
        holdout.to_csv(folder / HOLDOUT_FILE, index=False)
    return folder


def write_partition(
    frame: pd.DataFrame,
    assignment: np.ndarray,
    names: list[str],
    out_dir: Path,
    holdout_fraction: float = 0.25,
    seed: int = 0,
) -> dict[str, Path]:
    """Write each institution's rows to ``out_dir/<name>/``; returns name -> folder."""
    folders = {}
    for k, name in enumerate(names):
        folders[name] = write_institution(frame[assignment == k], out_dir / name, holdout_fraction, seed + k)
    return folders
