from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from federation.datasets.partition import (
    HOLDOUT_FILE,
    TRAIN_FILE,
    assign_institutions,
    dirichlet_label_assignment,
    institution_profiles,
    write_partition,
)
from federation.datasets.synthetic import generate_sme


@pytest.fixture(scope="module")
def population() -> pd.DataFrame:
    return generate_sme(60_000, seed=9)


@pytest.mark.parametrize("seed", [0, 9])  # 9 is also the population's seed: streams must not collide
def test_sizes_follow_profiles_and_small_institutions_hold_1_to_5_percent(
    population: pd.DataFrame, seed: int
) -> None:
    profiles = institution_profiles(9)
    shares = np.bincount(assign_institutions(population, 9, seed=seed), minlength=9) / len(population)
    for profile, share in zip(profiles, shares, strict=True):
        assert share == pytest.approx(profile.share, abs=0.01)
        if profile.kind == "small_lender":
            assert 0.01 <= share <= 0.05
    assert shares[0] == shares.max()  # the national bank is the largest


def test_region_and_industry_skew(population: pd.DataFrame) -> None:
    names = [p.name for p in institution_profiles(9)]
    a = assign_institutions(population, 9, seed=0)

    def share(name: str, column: str, value: str) -> float:
        return float((population.loc[a == names.index(name), column] == value).mean())

    overall_agri = float((population["industry"] == "agriculture").mean())
    assert share("rural_cooperative", "industry", "agriculture") > 2.5 * overall_agri
    assert share("online_bank", "industry", "ecommerce") > 2.5 * float(
        (population["industry"] == "ecommerce").mean()
    )
    assert share("city_bank_east", "region", "metro_east") > 0.6
    assert share("national_bank", "industry", "agriculture") == pytest.approx(overall_agri, abs=0.03)


def test_dirichlet_label_skew() -> None:
    labels = np.r_[np.zeros(9000), np.ones(1000)]
    a = dirichlet_label_assignment(labels, 4, alpha=0.3, seed=0)
    rates = [labels[a == k].mean() for k in range(4) if (a == k).any()]
    assert max(rates) - min(rates) > 0.1
    with pytest.raises(ValueError, match="alpha must be > 0"):
        dirichlet_label_assignment(labels, 4, alpha=0)


def test_each_institution_gets_its_own_folder(population: pd.DataFrame, tmp_path: Path) -> None:
    frame = population.head(5000)
    names = [p.name for p in institution_profiles(4)]
    folders = write_partition(frame, assign_institutions(frame, 4), names, tmp_path, holdout_fraction=0.25)
    total = 0
    for name, folder in folders.items():
        assert folder == tmp_path / name
        train, holdout = pd.read_csv(folder / TRAIN_FILE), pd.read_csv(folder / HOLDOUT_FILE)
        assert "true_pd" not in train.columns  # institutions never see the truth
        assert set(train["business_id"]).isdisjoint(holdout["business_id"])
        total += len(train) + len(holdout)
    assert total == len(frame)


def test_bad_institution_count() -> None:
    with pytest.raises(ValueError, match="institutions must be between 2 and 9, got 12"):
        institution_profiles(12)
