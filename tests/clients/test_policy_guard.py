"""The node's policy mod, on real Flower messages: fail closed, audited."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import FitIns, Parameters
from flwr.compat.common.recorddict_compat import fitins_to_recorddict
from sqlmodel import Session

from clients import policy_guard
from clients.policy_guard import POLICY_DENIED, PolicyGuard
from federation import protocol as P
from federation.partition import TRAIN_FILE
from policies.audit import create_audit_engine, entries
from policies.decisions import Refusal, SignedRequest

from .test_client_app import request_bytes

EXAMPLES = Path(__file__).resolve().parents[2] / "policies" / "examples"


@pytest.fixture(autouse=True)
def _stamped_messages(task_identity: None) -> None:
    """Every test here builds Flower messages."""


@pytest.fixture
def node(sme_frame: pd.DataFrame, tmp_path: Path) -> dict[str, str]:
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
    return {
        P.NODE_NAME: "national_bank",
        P.NODE_DATA_PATH: str(data),
        P.NODE_SCHEMA: "sme",
        P.NODE_POLICY: str(policy_dir / "national_bank.toml"),
        P.NODE_TRUSTED_POLICY_KEYS: str(EXAMPLES / "keys" / "demo_national_bank.pub"),
        P.NODE_AUDIT_DB: f"sqlite:///{tmp_path / 'audit.db'}",
    }


def _message(request: bytes | None) -> Message:
    config = {P.PHASE: P.PHASE_TRAIN} | ({P.TRAINING_REQUEST: request} if request is not None else {})
    content = fitins_to_recorddict(
        FitIns(Parameters(tensors=[], tensor_type="numpy.ndarray"), config), keep_input=True
    )
    return Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)


def _run(cfg: dict[str, str], request: bytes | None) -> tuple[Message, list[Message]]:
    passed: list[Message] = []

    def call_next(msg: Message, _: Context) -> Message:
        passed.append(msg)
        return Message(RecordDict(), reply_to=msg)

    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    guard = PolicyGuard(lambda _: cfg)
    msg = _message(request)
    reply = guard(msg, ctx, call_next)
    return reply, passed


def _audit(cfg: dict[str, str]) -> list[tuple[str, str, list[str]]]:
    with Session(create_audit_engine(cfg[P.NODE_AUDIT_DB])) as s:
        return [(e.action, e.decision, json.loads(e.rules)) for e in entries(s)]


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
    record_spend(
        engine,
        institution="national_bank",
        run_id="earlier",
        planned=8.0,
        spent=8.0,
        delta=1e-5,
        rounds_done=10,
    )
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
