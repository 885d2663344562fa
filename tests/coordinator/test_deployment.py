"""The ServerApp's run config: a careless or dishonest operator gets a refusal before any node is asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.deployment import settings_from_run_config
from federation.errors import FedCreditError
from policies.demo_keys import EXAMPLES
from policies.documents import PolicyError
from policies.signing import SignatureError, generate_keypair

CONSORTIUM = EXAMPLES / "sme_consortium.toml"
DEMO_TRUST = EXAMPLES / "keys" / "demo_consortium.pub"
DEMO_COORDINATOR = EXAMPLES / "keys" / "demo_coordinator.key"


def config(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "federation-policy": str(CONSORTIUM),
        "federation-trust": str(DEMO_TRUST),
        "coordinator-key": str(DEMO_COORDINATOR),
        "allow-demo-keys": True,
    }
    return {**base, **overrides}


def test_the_federation_policy_decides_the_run() -> None:
    settings = settings_from_run_config(config())  # type: ignore[arg-type]
    assert (settings.strategy, settings.rounds, settings.min_institutions) == ("fedavg", 10, 3)
    assert settings.secure_aggregation and settings.demo_keys
    assert {name for name, _ in settings.members} == {
        "national_bank",
        "online_bank",
        "rural_cooperative",
        "city_bank_east",
        "coastal_credit_union",
    }
    assert settings.federation_policy_sha256 is not None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"federation-policy": ""}, "federation-policy: required"),
        ({"coordinator-key": "keys/coordinator.key"}, "is relative"),
        ({"federation-trust": 7}, "must be a string"),
        ({"allow-demo-keys": False}, "published demo keys"),
        ({"epsilon": "a lot"}, "epsilon: must be a number"),
    ],
)
def test_a_bad_run_config_is_refused_with_the_key_named(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(FedCreditError, match=message):
        settings_from_run_config(config(**overrides))  # type: ignore[arg-type]


def test_a_tampered_policy_or_a_stranger_coordinator_is_refused(tmp_path: Path) -> None:
    tampered = tmp_path / CONSORTIUM.name
    for source in EXAMPLES.glob(f"{CONSORTIUM.name}*"):
        (tmp_path / source.name).write_bytes(source.read_bytes())
    tampered.write_text(tampered.read_text(encoding="utf-8").replace("rounds = 10", "rounds = 40"), "utf-8")
    with pytest.raises(SignatureError, match="modified after signing"):
        settings_from_run_config(config(**{"federation-policy": str(tampered)}))  # type: ignore[arg-type]
    generate_keypair(tmp_path / "keys", "stranger")
    with pytest.raises(PolicyError, match="not one of its coordinators"):
        settings_from_run_config(config(**{"coordinator-key": str(tmp_path / "keys" / "stranger.key")}))  # type: ignore[arg-type]


def test_an_epsilon_asked_for_is_the_runs_when_the_policy_sets_none() -> None:
    # the demo consortium sets no epsilon: any asked-for epsilon is the run's; a negative one is not
    settings = settings_from_run_config(config(epsilon=2.0))  # type: ignore[arg-type]
    assert settings.epsilon == 2.0
