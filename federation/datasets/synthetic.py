"""Synthetic small-business borrowers with a known probability of default.

Each business has a latent *health* that drives its observed operations, credit
and behaviour features; its industry cycle and regional economy set the
context. The true probability of default (``true_pd``) is a fixed function of
the observed features, the context and a share of the latent health the data
does not reveal, so the AUC of ``true_pd`` itself (the *oracle AUC*) is the best
any model can reach on this data. Everything is vectorized and seeded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from federation.seeding import rng_for

INDUSTRIES = (
    "retail_grocery",
    "catering",
    "wholesale",
    "manufacturing",
    "agriculture",
    "logistics",
    "services",
    "ecommerce",
)
REGIONS = ("metro_east", "metro_south", "coastal_city", "inland_city", "rural_north", "rural_west")
SUPPLY_CHAIN_POSITIONS = ("upstream", "midstream", "downstream", "end_consumer")
GENDERS = ("female", "male")
MARITAL_STATUSES = ("single", "married", "other")

ID_COLUMN = "business_id"
LABEL_COLUMN = "default_12m"
TRUE_PD_COLUMN = "true_pd"


@dataclass(frozen=True)
class IndustryProfile:
    share: float  # share of all businesses
    log_revenue: float  # mean log monthly revenue
    cycle: float  # current industry cycle index (negative = downturn)
    cycle_sensitivity: float  # how much the cycle moves default risk
    online_share: float  # probability the business sells on a platform
    avg_ticket: float  # average transaction value
    chain: tuple[float, float, float, float]  # supply-chain position probabilities


INDUSTRY_PROFILES: dict[str, IndustryProfile] = {
    "retail_grocery": IndustryProfile(0.22, 10.6, 0.2, 0.4, 0.25, 25.0, (0.0, 0.05, 0.35, 0.60)),
    "catering": IndustryProfile(0.15, 10.4, -0.6, 1.0, 0.55, 18.0, (0.0, 0.0, 0.2, 0.8)),
    "wholesale": IndustryProfile(0.10, 11.8, -0.2, 0.7, 0.20, 400.0, (0.1, 0.7, 0.2, 0.0)),
    "manufacturing": IndustryProfile(0.10, 12.0, -0.9, 1.1, 0.10, 900.0, (0.5, 0.45, 0.05, 0.0)),
    "agriculture": IndustryProfile(0.12, 10.2, 0.4, 0.9, 0.05, 150.0, (0.8, 0.15, 0.05, 0.0)),
    "logistics": IndustryProfile(0.08, 11.2, 0.1, 0.6, 0.15, 300.0, (0.0, 0.8, 0.2, 0.0)),
    "services": IndustryProfile(0.13, 10.5, 0.5, 0.5, 0.30, 60.0, (0.0, 0.1, 0.3, 0.6)),
    "ecommerce": IndustryProfile(0.10, 10.9, 0.8, 0.8, 1.00, 35.0, (0.0, 0.1, 0.3, 0.6)),
}

# Region: (population share, economic index, industry tilt applied to INDUSTRIES' shares)
REGION_PROFILES: dict[str, tuple[float, float, tuple[float, ...]]] = {
    "metro_east": (0.26, 0.9, (1.0, 1.3, 1.2, 0.7, 0.1, 1.1, 1.4, 1.8)),
    "metro_south": (0.20, 0.6, (1.0, 1.2, 1.3, 0.9, 0.1, 1.2, 1.2, 1.5)),
    "coastal_city": (0.16, 0.3, (1.0, 1.1, 1.1, 1.4, 0.4, 1.4, 1.0, 0.9)),
    "inland_city": (0.16, -0.2, (1.1, 1.0, 1.0, 1.3, 0.8, 1.0, 0.9, 0.6)),
    "rural_north": (0.12, -0.7, (1.1, 0.7, 0.6, 0.6, 4.5, 0.7, 0.5, 0.3)),
    "rural_west": (0.10, -1.0, (1.1, 0.6, 0.5, 0.5, 5.0, 0.6, 0.5, 0.3)),
}

TARGET_DEFAULT_RATE = 0.04
# Scales the log-odds so the oracle AUC sits near 0.86, a realistic ceiling for SME credit.
LOGIT_SCALE = 0.5
# Features share one latent health factor only partly, so each carries its own information.
HEALTH_LOADING = 0.5


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def _sample_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of ``probs`` (rows need not be normalized)."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random(len(probs)) * cum[:, -1]
    return (u[:, None] >= cum).sum(axis=1)


def true_logit(df: pd.DataFrame, latent_health: np.ndarray) -> np.ndarray:
    """The data-generating log-odds of default, before the intercept.

    Additive over the four dimensions (plus the undisclosed latent term), so the
    four-tower model can represent the observable part exactly.
    """
    sens = df["industry"].map({k: v.cycle_sensitivity for k, v in INDUSTRY_PROFILES.items()})
    growth = df["revenue_growth"].to_numpy()
    volatility = np.log(df["cashflow_volatility"].to_numpy() / 0.35)
    young = df["months_in_business"].to_numpy() < 24
    delinquencies = df["bureau_delinquencies_24m"].to_numpy()
    operations = (
        (1.0 + 0.8 * young) * volatility  # volatile cash flow hurts young businesses most
        - 0.35 * np.log1p(df["months_in_business"].to_numpy() / 12.0)
        - 2.0 * growth
        + 6.0 * np.maximum(growth - 0.2, 0.0) ** 2  # overheated growth is risky too
        + 0.5 * np.log(df["requested_amount"].to_numpy() / df["monthly_revenue"].to_numpy())
    )
    credit = (
        0.6 * (delinquencies >= 1)
        + 0.3 * np.minimum(delinquencies, 6)
        + 0.8 * (df["tax_compliance_rate"].to_numpy() < 0.6)
        - 0.6 * _logit(df["tax_compliance_rate"].to_numpy())
        + 1.2 * df["credit_utilization"].to_numpy()
        - 0.3 * _logit(df["contract_fulfilment_rate"].to_numpy())
    )
    behaviour = -0.6 * _logit(df["utility_ontime_rate"].to_numpy()) - 0.4 * _logit(
        df["settlement_regularity"].to_numpy()
    )
    scenario = (
        -0.6 * sens.to_numpy() * df["industry_cycle_index"].to_numpy()
        - 0.5 * df["regional_economy_index"].to_numpy()
    )
    return LOGIT_SCALE * np.asarray(operations + credit + behaviour + scenario - 0.3 * latent_health)


def _intercept_for_rate(logit: np.ndarray, rate: float) -> float:
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _sigmoid(logit + mid).mean() > rate:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def generate_sme(n_rows: int, seed: int = 0, default_rate: float = TARGET_DEFAULT_RATE) -> pd.DataFrame:
    """Generate ``n_rows`` SME borrowers, with label and ``true_pd``.

    Parameters
    ----------
    n_rows:
        Number of businesses, at least 100.
    seed:
        Seed of the random generator; the same seed gives the same frame.
    default_rate:
        Target share of defaults, between 0.01 and 0.2.
    """
    if n_rows < 100:
        raise ValueError(f"n_rows must be at least 100, got {n_rows}")
    if not 0.01 <= default_rate <= 0.2:
        raise ValueError(f"default_rate must be within [0.01, 0.2], got {default_rate}")
    rng = rng_for(seed, "sme-borrowers")
    n = n_rows
    ind_prof = [INDUSTRY_PROFILES[i] for i in INDUSTRIES]
    reg_prof = [REGION_PROFILES[r] for r in REGIONS]

    region = _sample_rows(rng, np.tile([p[0] for p in reg_prof], (n, 1)))
    base_share = np.array([p.share for p in ind_prof])
    tilt = np.array([p[2] for p in reg_prof])  # regions x industries
    industry = _sample_rows(rng, base_share[None, :] * tilt[region])
    chain = _sample_rows(rng, np.array([p.chain for p in ind_prof])[industry])

    cycle = np.array([p.cycle for p in ind_prof])[industry] + rng.normal(0, 0.3, n)
    regional = np.array([p[1] for p in reg_prof])[region] + rng.normal(0, 0.2, n)
    months = np.clip(np.exp(rng.normal(np.log(48), 0.8, n)), 3, 480).round()
    health = rng.normal(0, 1, n) + 0.15 * np.log(months / 48) + 0.1 * regional
    h = HEALTH_LOADING * health  # how strongly each observed feature reflects it

    revenue = np.exp(np.array([p.log_revenue for p in ind_prof])[industry] + 0.35 * h + rng.normal(0, 0.7, n))
    growth = np.clip(0.03 + 0.06 * h + 0.04 * cycle + rng.normal(0, 0.08, n), -0.9, 3.0)
    volatility = np.clip(np.exp(-1.0 - 0.35 * h + rng.normal(0, 0.35, n)), 0.01, 5.0)
    transactions = rng.poisson(revenue / np.array([p.avg_ticket for p in ind_prof])[industry])
    online = rng.random(n) < np.array([p.online_share for p in ind_prof])[industry]
    orders = np.where(online, rng.poisson(transactions * rng.uniform(0.1, 0.9, n)), np.nan)

    frame = pd.DataFrame(
        {
            ID_COLUMN: [f"B{seed:04d}-{i:07d}" for i in range(n)],
            "monthly_revenue": revenue.round(2),
            "revenue_growth": growth.round(4),
            "cashflow_volatility": volatility.round(4),
            "months_in_business": months,
            "monthly_transactions": transactions.astype(float),
            "platform_orders": orders,
            "requested_amount": np.maximum(
                1000, (revenue * np.exp(rng.normal(np.log(2.0), 0.5, n))).round(-3)
            ),
            "bureau_delinquencies_24m": rng.poisson(np.exp(-1.3 - 0.8 * h)).astype(float),
            "open_loans": rng.poisson(1.0 + 0.5 * np.abs(rng.normal(0, 1, n))).astype(float),
            "credit_utilization": np.clip(
                1.1 * _sigmoid(-0.4 - 0.7 * h + rng.normal(0, 0.6, n)), 0, 1.5
            ).round(4),
            "tax_compliance_rate": _sigmoid(2.0 + 1.0 * h + rng.normal(0, 0.8, n)).round(4),
            "contract_fulfilment_rate": _sigmoid(2.5 + 0.8 * h + rng.normal(0, 0.8, n)).round(4),
            "has_collateral": (rng.random(n) < _sigmoid(-0.8 + 0.5 * np.log(revenue / 40000))).astype(float),
            "settlement_regularity": _sigmoid(1.2 + 0.8 * h + rng.normal(0, 0.6, n)).round(4),
            "utility_ontime_rate": _sigmoid(2.5 + 0.9 * h + rng.normal(0, 0.7, n)).round(4),
            "utility_history_months": np.minimum(months, 120.0),
            "consumption_volatility": np.clip(
                np.exp(-1.2 - 0.2 * h + rng.normal(0, 0.4, n)), 0.01, 5.0
            ).round(4),
            "owner_age": rng.integers(22, 76, n).astype(float),
            "owner_gender": np.array(GENDERS)[rng.integers(0, 2, n)],
            "owner_marital_status": np.array(MARITAL_STATUSES)[
                _sample_rows(rng, np.tile([0.3, 0.6, 0.1], (n, 1)))
            ],
            "industry": np.array(INDUSTRIES)[industry],
            "industry_cycle_index": cycle.round(4),
            "region": np.array(REGIONS)[region],
            "regional_economy_index": regional.round(4),
            "supply_chain_position": np.array(SUPPLY_CHAIN_POSITIONS)[chain],
        }
    )
    logit = true_logit(frame, health)
    pd_true = _sigmoid(logit + _intercept_for_rate(logit, default_rate))
    frame[LABEL_COLUMN] = (rng.random(n) < pd_true).astype(int)
    frame[TRUE_PD_COLUMN] = pd_true
    return frame
