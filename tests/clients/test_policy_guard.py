"""The node's policy mod, on real Flower messages: fail closed, audited."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import EvaluateIns, FitIns, Parameters
from flwr.compat.common.recorddict_compat import evaluateins_to_recorddict, fitins_to_recorddict
from sqlmodel import Session

from clients import policy_guard
from clients.policy_guard import POLICY_DENIED, PolicyGuard
from federation import protocol as P
from federation.datasets.partition import TRAIN_FILE
from policies.audit import create_audit_engine, entries, verify_chain
from policies.decisions import Refusal, SignedRequest
from policies.demo_keys import EXAMPLES
from policies.signing import (
    canonical_json,
    load_private_key,
    public_key_text,
    read_public_keys,
    sign_bytes,
    sign_policy,
)

from .test_client_app import request_bytes


@pytest.fixture(autouse=True)
def _stamped_messages(task_identity: None) -> None:
    """Every test here builds Flower messages."""


@pytest.fixture
def node(sme_frame: pd.DataFrame, tmp_path: Path, db_url: str) -> Iterator[dict[str, str]]:
    data = tmp_path / "national_bank"
    data.mkdir()
    pd.concat([sme_frame] * 2, ignore_index=True).assign(
        business_id=lambda f: [f"b{i}" for i in range(len(f))]
    ).drop(columns=["true_pd"]).to_csv(data / TRAIN_FILE, index=False)
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    for f in EXAMPLES.glob("national_bank.toml*"):
        shutil.copy2(f, policy_dir / f.name)
    policy_guard._verified_policy.cache_clear()
    cfg = {
        P.NODE_NAME: "national_bank",
        P.NODE_DATA_PATH: str(data),
        P.NODE_SCHEMA: "sme",
        P.NODE_POLICY: str(policy_dir / "national_bank.toml"),
        P.NODE_TRUSTED_POLICY_KEYS: str(EXAMPLES / "keys" / "demo_national_bank.pub"),
        P.NODE_AUDIT_DB: db_url,
    }
    yield cfg
    # the node's engine is cached for the process: close its connection with the test's database
    policy_guard.node_audit(cfg)[1].dispose()
    policy_guard.node_engine.cache_clear()


def _message(request: bytes | None, phase: str = P.PHASE_TRAIN, round_: int = 1) -> Message:
    config = {P.PHASE: phase, P.ROUND: round_} | (
        {P.TRAINING_REQUEST: request} if request is not None else {}
    )
    content = fitins_to_recorddict(
        FitIns(Parameters(tensors=[], tensor_type="numpy.ndarray"), config), keep_input=True
    )
    return Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)


def _run(
    cfg: dict[str, str], request: bytes | None, phase: str = P.PHASE_TRAIN, round_: int = 1
) -> tuple[Message, list[Message]]:
    passed: list[Message] = []

    def call_next(msg: Message, _: Context) -> Message:
        passed.append(msg)
        return Message(RecordDict(), reply_to=msg)

    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    guard = PolicyGuard(lambda _: cfg)
    msg = _message(request, phase, round_)
    reply = guard(msg, ctx, call_next)
    return reply, passed


def _audit(cfg: dict[str, str]) -> list[tuple[str, str, list[str]]]:
    engine = create_audit_engine(cfg[P.NODE_AUDIT_DB])
    with Session(engine) as s:
        out = [(e.action, e.decision, json.loads(e.rules)) for e in entries(s)]
    engine.dispose()
    return out


def _refusal(reply: Message) -> Refusal:
    assert reply.has_error() and reply.error.code == POLICY_DENIED
    refusal = Refusal.from_reason(reply.error.reason or "")
    assert refusal is not None
    return refusal


def test_permitted_request_reaches_the_client(node: dict[str, str]) -> None:
    reply, passed = _run(node, request_bytes(min_institutions=3))
    assert not reply.has_error() and len(passed) == 1
    assert _audit(node) == [("train.decide", "permit", ["permit.purpose_allowed", "permit.schema_allowed"])]


def test_missing_policy_denies_and_is_audited(node: dict[str, str]) -> None:
    Path(node[P.NODE_POLICY]).unlink()
    reply, passed = _run(node, request_bytes())
    refusal = _refusal(reply)
    assert passed == []
    assert refusal.rules == ("deny.no_valid_policy",)
    assert "without a policy nothing is permitted" in refusal.reasons[0]
    assert _audit(node) == [("node.policy.load", "deny", ["deny.no_valid_policy"])]


def test_tampered_policy_denies(node: dict[str, str]) -> None:
    path = Path(node[P.NODE_POLICY])
    path.write_text(
        path.read_text().replace(
            '"credit_underwriting", "risk_monitoring"', '"credit_underwriting", "collections"'
        )
    )
    refusal = _refusal(_run(node, request_bytes())[0])
    assert "modified after signing" in refusal.reasons[0]


def test_policy_tampered_while_the_node_runs_denies_the_next_message(node: dict[str, str]) -> None:
    assert not _run(node, request_bytes(min_institutions=3))[0].has_error()
    path = Path(node[P.NODE_POLICY])
    path.write_text(path.read_text().replace('"risk_monitoring"', '"collections"'))
    reply, passed = _run(node, request_bytes(min_institutions=3))
    assert passed == [] and "modified after signing" in _refusal(reply).reasons[0]


def test_policy_signed_by_untrusted_key_denies(node: dict[str, str]) -> None:
    node[P.NODE_TRUSTED_POLICY_KEYS] = str(EXAMPLES / "keys" / "demo_online_bank.pub")
    refusal = _refusal(_run(node, request_bytes())[0])
    assert "which this node does not trust" in refusal.reasons[0]


def test_purpose_not_allowed(node: dict[str, str]) -> None:
    reply, passed = _run(node, request_bytes(purpose="collections"))
    refusal = _refusal(reply)
    assert passed == [] and refusal.rules == ("forbid.purpose_not_allowed",)
    assert refusal.institution == "national_bank" and len(refusal.policy_sha256) == 64
    assert _audit(node)[-1] == ("train.decide", "deny", ["forbid.purpose_not_allowed"])


def test_request_signed_by_unknown_coordinator(node: dict[str, str]) -> None:
    from policies.signing import public_key_text

    signed = SignedRequest.from_wire(request_bytes())
    other = Ed25519PrivateKey.generate()
    from policies.decisions import sign_request

    forged = sign_request(signed.request, other)
    assert forged.signed_by == public_key_text(other.public_key())
    refusal = _refusal(_run(node, forged.to_wire())[0])
    assert refusal.rules == ("forbid.unknown_coordinator",)


def test_too_few_institutions_and_missing_request(node: dict[str, str]) -> None:
    assert _refusal(_run(node, request_bytes(min_institutions=2))[0]).rules == (
        "forbid.too_few_institutions",
    )
    assert _refusal(_run(node, None)[0]).rules == ("deny.no_request",)


def test_exhausted_budget_refuses_training_and_says_so_in_the_audit_log(
    node: dict[str, str], tmp_path: Path
) -> None:
    """A policy with a lifetime budget of 10: earlier runs spent 8, this run asks for 3."""
    from policies.budget import record_spend
    from policies.signing import sign_policy

    policy = Path(node[P.NODE_POLICY])
    policy.write_text(
        policy.read_text().replace("# lifetime_epsilon_budget = 10.0", "lifetime_epsilon_budget = 10.0")
    )
    sign_policy(policy, EXAMPLES / "keys" / "demo_national_bank.key")
    engine = create_audit_engine(node[P.NODE_AUDIT_DB])
    for round_ in (1, 2):  # an earlier run planned 8 and spent it over two rounds
        record_spend(
            engine,
            institution="national_bank",
            run_id="earlier",
            round_=round_,
            planned=8.0,
            delta=1e-5,
            noise_multiplier=0.8,
            sample_rate=0.1,
            steps=10,
        )
    engine.dispose()
    reply, passed = _run(node, request_bytes(epsilon=3.0, run_id="now"))
    refusal = _refusal(reply)
    assert passed == [] and refusal.rules == ("forbid.lifetime_budget_exhausted",)
    log = _audit(node)
    assert log[0][0] == "privacy.spend"
    assert log[-1] == ("train.decide", "deny", ["forbid.lifetime_budget_exhausted"])
    allowed, passed = _run(node, request_bytes(epsilon=2.0, run_id="small"))
    assert not allowed.has_error() and len(passed) == 1


def test_node_check_refuses_to_start_without_a_valid_policy(node: dict[str, str]) -> None:
    from typer.testing import CliRunner

    from coordinator.cli import app

    args = [
        "node",
        "check",
        "--data-path",
        node[P.NODE_DATA_PATH],
        "--policy",
        node[P.NODE_POLICY],
        "--trust",
        node[P.NODE_TRUSTED_POLICY_KEYS],
        "--audit-db",
        node[P.NODE_AUDIT_DB],
        "--node-key",
        str(EXAMPLES / "keys" / "demo_national_bank.key"),
    ]
    ok = CliRunner().invoke(app, args)
    assert ok.exit_code == 0 and "ready: national_bank under policy.national_bank v1" in " ".join(
        ok.output.split()
    )
    Path(node[P.NODE_POLICY]).write_text(Path(node[P.NODE_POLICY]).read_text() + "\n# edited\n")
    bad = CliRunner().invoke(app, args)
    assert (
        bad.exit_code == 2
        and "refused to start" in bad.output
        and "modified after signing" in " ".join(bad.output.split())
    )
    assert [a[:2] for a in _audit(node)] == [("node.check", "permit"), ("node.check", "deny")]
    _assert_signed_by_the_node(node)


def _assert_signed_by_the_node(node: dict[str, str]) -> None:
    """The node's log verifies against the node's own key, and only that key."""
    engine = create_audit_engine(node[P.NODE_AUDIT_DB])
    with Session(engine) as session:
        assert verify_chain(session, read_public_keys(EXAMPLES / "keys" / "demo_national_bank.pub")).ok
        assert not verify_chain(session, read_public_keys(EXAMPLES / "keys" / "demo_online_bank.pub")).ok
    engine.dispose()


def test_every_decision_is_under_a_head_signed_with_the_node_key(node: dict[str, str]) -> None:
    node[P.NODE_KEY] = str(EXAMPLES / "keys" / "demo_national_bank.key")
    assert not _run(node, request_bytes(min_institutions=3), P.PHASE_STATS, 0)[0].has_error()
    assert _run(node, request_bytes(purpose="collections"))[0].has_error()
    _assert_signed_by_the_node(node)


# --- a coordinator that asks for more than its signed request announces --------------------


def test_repeated_statistics_under_new_round_labels_are_refused(node: dict[str, str]) -> None:
    """Asking for the statistics phase again as 'round 2, 3, ...' gets nothing more."""
    request = request_bytes(min_institutions=3)
    first, passed = _run(node, request, P.PHASE_STATS, 1)
    assert not first.has_error() and len(passed) == 1
    for label in (1, 2, 3):
        reply, passed = _run(node, request, P.PHASE_STATS, label)
        assert passed == [] and _refusal(reply).rules == ("deny.contribution_repeated",)
    assert _audit(node)[-1] == ("train.decide", "deny", ["deny.contribution_repeated"])


def test_rounds_beyond_the_request_or_trained_twice_are_refused(node: dict[str, str]) -> None:
    request = request_bytes(min_institutions=3, rounds=2)
    for round_ in (1, 2):
        assert not _run(node, request, P.PHASE_TRAIN, round_)[0].has_error()
    for round_, rule in (
        (3, "deny.round_beyond_request"),
        (0, "deny.round_beyond_request"),
        (2, "deny.contribution_repeated"),
    ):
        reply, passed = _run(node, request, P.PHASE_TRAIN, round_)
        assert passed == [] and _refusal(reply).rules == (rule,), round_


def test_a_finished_run_gets_nothing_more(node: dict[str, str]) -> None:
    request = request_bytes(min_institutions=3, rounds=1)
    for phase, round_ in ((P.PHASE_STATS, 0), (P.PHASE_TRAIN, 1), (P.PHASE_REFERENCE, 0)):
        assert not _run(node, request, phase, round_)[0].has_error()
    for phase, round_ in ((P.PHASE_REFERENCE, 0), (P.PHASE_TRAIN, 1), (P.PHASE_STATS, 0)):
        reply, passed = _run(node, request, phase, round_)
        assert passed == [] and _refusal(reply).rules == ("deny.run_finished",)


def test_a_stale_or_replayed_request_is_refused(node: dict[str, str]) -> None:
    """The request is signed, but two hours old; and a run id stays bound to its first request."""
    two_hours_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    reply, passed = _run(node, request_bytes(min_institutions=3, issued_at=two_hours_ago), P.PHASE_STATS, 0)
    assert passed == [] and _refusal(reply).rules == ("deny.stale_request",)
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    reply, _ = _run(node, request_bytes(min_institutions=3, issued_at=tomorrow), P.PHASE_STATS, 0)
    assert _refusal(reply).rules == ("deny.request_from_future",)
    assert not _run(node, request_bytes(min_institutions=3, run_id="r7"), P.PHASE_STATS, 0)[0].has_error()
    # the same run id with another request (here: more rounds) is a different run
    reply, passed = _run(node, request_bytes(min_institutions=3, run_id="r7", rounds=9), P.PHASE_TRAIN, 4)
    assert passed == [] and _refusal(reply).rules == ("deny.run_id_reused",)


@pytest.mark.parametrize("epsilon", [0.0, -1.0, float("nan"), float("inf")])
def test_a_signed_request_with_an_impossible_epsilon_is_refused(node: dict[str, str], epsilon: float) -> None:
    """The coordinator signs whatever it likes; the node refuses what no policy can mean."""
    good = SignedRequest.from_wire(request_bytes(min_institutions=3, epsilon=1.0))
    payload = good.request.payload() | {"epsilon": repr(epsilon)}
    key = load_private_key(EXAMPLES / "keys" / "demo_coordinator.key")
    wire = canonical_json(
        {
            "request": payload,
            "signed_by": good.signed_by,
            "signature": sign_bytes(key, canonical_json(payload)),
        }
    )
    reply, passed = _run(node, wire)
    refusal = _refusal(reply)
    assert passed == [] and refusal.rules == ("deny.no_request",)
    assert "epsilon must be a finite number > 0" in refusal.reasons[0]


def test_refusals_are_signed_by_the_node(node: dict[str, str]) -> None:
    key = Ed25519PrivateKey.generate()
    key_path = Path(node[P.NODE_POLICY]).parent / "node.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    node[P.NODE_KEY] = str(key_path)
    request = request_bytes(purpose="collections")
    refusal = _refusal(_run(node, request)[0])
    assert refusal.input_sha256 == SignedRequest.from_wire(request).digest  # the run it refuses
    members = {"national_bank": public_key_text(key.public_key())}
    assert refusal.attributed_member(members) == "national_bank"
    # the signature covers the name and the run: it cannot be moved to another member or request
    moved = replace(refusal, institution="online_bank")
    assert moved.attributed_member({"online_bank": members["national_bank"]}) is None
    assert replace(refusal, input_sha256="0" * 64).attributed_member(members) is None
    # a node without a valid policy still says which run it refuses
    Path(node[P.NODE_POLICY]).unlink()
    assert _refusal(_run(node, request)[0]).input_sha256 == SignedRequest.from_wire(request).digest


def test_opening_run_after_run_is_bounded(node: dict[str, str]) -> None:
    """Each run gets one statistics answer; new runs are capped per day, and a DP run's
    planned epsilon counts against the lifetime budget from the moment it is joined."""
    policy = Path(node[P.NODE_POLICY])
    policy.write_text(
        policy.read_text()
        .replace("# lifetime_epsilon_budget = 10.0", "lifetime_epsilon_budget = 10.0")
        .replace("min_institutions_per_round = 3\n", "min_institutions_per_round = 3\nmax_runs_per_day = 5\n")
    )
    sign_policy(policy, EXAMPLES / "keys" / "demo_national_bank.key")
    # three statistics-only runs at epsilon 3: nothing trained, yet 9 of the budget of 10 is taken
    for n in range(3):
        reply, _ = _run(
            node, request_bytes(min_institutions=3, epsilon=3.0, run_id=f"x{n}"), P.PHASE_STATS, 0
        )
        assert not reply.has_error()
    reply, passed = _run(node, request_bytes(min_institutions=3, epsilon=3.0, run_id="x3"), P.PHASE_STATS, 0)
    assert passed == [] and _refusal(reply).rules == ("forbid.lifetime_budget_exhausted",)
    assert "9 already spent" in _refusal(reply).reasons[0]
    for n in (4, 5):
        assert not _run(
            node, request_bytes(min_institutions=3, epsilon=0.2, run_id=f"x{n}"), P.PHASE_STATS, 0
        )[0].has_error()
    reply, passed = _run(node, request_bytes(min_institutions=3, epsilon=0.1, run_id="x6"), P.PHASE_STATS, 0)
    assert passed == [] and _refusal(reply).rules == ("deny.too_many_runs",)


def test_evaluation_only_after_this_nodes_update_and_rounds_are_capped(node: dict[str, str]) -> None:
    """The holdout is no oracle: no evaluation without an update of this node for that round,
    and a request announcing more rounds than the policy allows is refused."""
    request = request_bytes(min_institutions=3, rounds=2)

    def evaluate(round_: int) -> tuple[Message, list[Message]]:
        msg = _message(request, P.PHASE_TRAIN, round_)
        content = evaluateins_to_recorddict(
            EvaluateIns(
                Parameters(tensors=[], tensor_type="numpy.ndarray"),
                {P.ROUND: round_, P.TRAINING_REQUEST: request},
            ),
            keep_input=True,
        )
        msg = Message(content=content, dst_node_id=1, message_type=MessageType.EVALUATE)
        passed: list[Message] = []
        ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
        reply = PolicyGuard(lambda _: node)(
            msg, ctx, lambda m, _: passed.append(m) or Message(RecordDict(), reply_to=m)
        )
        return reply, passed

    reply, passed = evaluate(1)
    assert passed == [] and _refusal(reply).rules == ("deny.evaluation_before_training",)
    assert not _run(node, request, P.PHASE_TRAIN, 1)[0].has_error()
    assert not evaluate(1)[0].has_error()
    assert _refusal(evaluate(1)[0]).rules == ("deny.contribution_repeated",)
    reply, passed = _run(node, request_bytes(min_institutions=3, rounds=101, run_id="long"), P.PHASE_STATS, 0)
    assert passed == [] and _refusal(reply).rules == ("forbid.too_many_rounds",)


def test_a_node_whose_data_fails_its_schema_says_where_never_what(
    node: dict[str, str], sme_frame: pd.DataFrame
) -> None:
    """The refusal names the problem and the columns; no value and no row leaves the node."""
    train = Path(node[P.NODE_DATA_PATH]) / TRAIN_FILE
    bad = sme_frame.drop(columns=["true_pd"]).astype({"monthly_revenue": object})
    bad.loc[3, "monthly_revenue"] = "SECRET-VALUE"
    bad.to_csv(train, index=False)
    reply, passed = _run(node, request_bytes(min_institutions=3))
    refusal = _refusal(reply)
    assert passed == [] and refusal.rules == ("deny.node_data_invalid",)
    assert refusal.reasons == ("the node's data fails its schema: problems in column(s) monthly_revenue",)
    assert "SECRET-VALUE" not in reply.error.reason
    sme_frame.drop(columns=["true_pd"]).head(20).to_csv(train, index=False)  # a new mtime: read again
    refusal = _refusal(_run(node, request_bytes(min_institutions=3))[0])
    assert refusal.reasons == ("the node's data fails its schema: too few rows: 20, at least 50 required",)


def test_a_node_whose_file_is_ragged_says_so_without_its_rows(
    node: dict[str, str], sme_frame: pd.DataFrame
) -> None:
    """A whole-file problem that carries row numbers still reaches the coordinator, without them."""
    train = Path(node[P.NODE_DATA_PATH]) / TRAIN_FILE
    sme_frame.drop(columns=["true_pd"]).to_csv(train, index=False)
    lines = train.read_text().splitlines()
    lines[123] = lines[123].rsplit(",", 1)[0]  # row 123 loses its last field
    train.write_text("\n".join(lines) + "\n")
    refusal = _refusal(_run(node, request_bytes(min_institutions=3))[0])
    assert refusal.rules == ("deny.node_data_invalid",)
    (reason,) = refusal.reasons
    assert "different number of fields" in reason and "123" not in reason, reason
