"""A round with fewer institutions than the run needs stops the run, naming who refused and why."""

from __future__ import annotations

import pytest
from flwr.app import Error
from flwr.server.strategy import FedAvg

from coordinator.recording import RecordingStrategy, RoundLog, RunCannotContinueError
from policies.decisions import Refusal


def _refusal(institution: str, rule: str) -> Exception:
    return Exception(Error(code=4030, reason=Refusal(institution, (rule,), ("...",)).to_reason()))


def test_too_few_institutions_stop_the_run_with_their_reasons() -> None:
    log = RoundLog()
    strategy = RecordingStrategy(
        FedAvg(), log, lambda *_: "unused", lambda r: r.institution, min_results=3, phase="training"
    )
    failures = [
        _refusal("bank_a", "forbid.purpose_not_allowed"),
        _refusal("bank_b", "forbid.too_few_local_records"),
    ]
    with pytest.raises(RunCannotContinueError) as err:
        strategy.aggregate_fit(2, [], failures)  # type: ignore[arg-type]
    assert str(err.value) == (
        "training round 2: 0 institution(s) trained, the run requires at least 3 institutions; the run stops; "
        "refused: bank_a (forbid.purpose_not_allowed); bank_b (forbid.too_few_local_records)"
    )
    assert [f["institution"] for f in log.failures] == ["bank_a", "bank_b"]


def test_a_halted_secure_round_counts_each_refusal_once() -> None:
    strategy = RecordingStrategy(
        FedAvg(), RoundLog(), lambda *_: "unused", lambda r: r.institution, min_results=2
    )
    twice = [_refusal("bank_a", "forbid.x")] * 2
    error = strategy.halted(1, "fit", twice)
    assert str(error).count("bank_a") == 1 and "secure aggregation could not complete" in str(error)


def test_a_node_error_is_one_readable_line() -> None:
    from coordinator.recording import readable

    ray = (
        "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()\x1b[39m\n"
        '  File "x.py", line 3\n\nException ClientAppException occurred. Message: too few rows: 37\n'
    )
    assert readable(ray) == "too few rows: 37"


def test_only_node_failures_fail_the_command() -> None:
    from coordinator.simulation.cli import node_failures

    report = {
        "failures": [
            {"round": 1, "institution": "a", "rules": ["forbid.purpose_not_allowed"], "reason": "purpose"},
            {"round": 1, "institution": "b", "rules": ["deny.node_data_invalid"], "reason": "too few rows"},
            {"round": 2, "institution": "b", "rules": ["deny.node_data_invalid"], "reason": "too few rows"},
            {"round": 1, "reason": "boom"},
        ]
    }
    assert node_failures(report) == ["b: too few rows", "a node: boom"]
