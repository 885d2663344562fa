from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.server.strategy import FedAvg, FedProx

from coordinator.run_settings import RunSettings
from coordinator.server_app import Coordinator, RunOutcome, weighted_mean_metrics
from federation.hyperparameters import TrainConfig
from federation.normalization import NormStats
from policies.signing import generate_keypair


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rounds": 0}, "rounds must be >= 1, got 0"),
        ({"strategy": "krum"}, "strategy must be one of ('fedavg', 'fedprox'), got 'krum'"),
        ({"min_institutions": 0}, "min_institutions must be >= 1, got 0"),
        ({"strategy": "fedprox", "proximal_mu": 0.0}, "fedprox needs proximal_mu > 0, got 0.0"),
    ],
)
def test_settings_are_checked(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as err:
        RunSettings(schema="sme", **kwargs)  # type: ignore[arg-type]
    assert str(err.value) == message


def test_train_config_is_checked() -> None:
    with pytest.raises(ValueError, match="learning_rate must be > 0, got -1"):
        TrainConfig(learning_rate=-1)


@pytest.mark.parametrize(("name", "cls"), [("fedavg", FedAvg), ("fedprox", FedProx)])
def test_strategy_choice(name: str, cls: type) -> None:
    coordinator = Coordinator(
        RunSettings(schema="sme", strategy=name, proximal_mu=0.1, demo_keys=True), RunOutcome()
    )
    k = len(coordinator.layout.numeric)
    strategy = coordinator.training_strategy(NormStats(np.zeros(k, np.float32), np.ones(k, np.float32)))
    assert type(strategy) is cls
    if name == "fedprox":
        assert strategy.proximal_mu == 0.1  # type: ignore[attr-defined]


def test_weighted_mean_metrics_skips_text_and_nan() -> None:
    results = [(100, {"auc": 0.8, "institution": "a"}), (300, {"auc": 0.6, "ks": float("nan")})]
    merged = weighted_mean_metrics(results)  # type: ignore[arg-type]
    assert merged == {"auc": pytest.approx(0.65)}


def test_the_published_demo_key_signs_only_a_run_marked_as_a_demo(tmp_path: Path) -> None:
    """Anyone can sign with the committed demo keys: a run with one must say it is a demo."""
    audit = f"sqlite:///{tmp_path / 'c.db'}"
    with pytest.raises(ValueError, match="published demo key demo_coordinator, which anyone can sign with"):
        Coordinator(RunSettings(schema="sme", audit_url=audit), RunOutcome())
    assert Coordinator(RunSettings(schema="sme", audit_url=audit, demo_keys=True), RunOutcome()).actor == (
        "coordinator [DEMO keys]"
    )
    own, _ = generate_keypair(tmp_path, "own_coordinator")
    assert Coordinator(
        RunSettings(schema="sme", audit_url=audit, coordinator_key=own), RunOutcome()
    ).actor == ("coordinator")


def test_run_ids_are_minted_unique() -> None:
    ids = {RunSettings(schema="sme").run_id for _ in range(200)}
    assert len(ids) == 200 and all(len(i) == len("20261129-000000-") + 12 for i in ids)
