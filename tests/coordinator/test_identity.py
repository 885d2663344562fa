"""The coordinator attributes a reply to the member whose key signed it, never to the name it carries."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.common import Code, FitRes, Parameters, Status
from flwr.server.strategy import FedAvg

from clients.client_app import CreditNodeClient
from clients.node_data import load_node_data
from coordinator.recording import RecordingStrategy, RoundLog, UnattributedReplyError
from coordinator.run_settings import RunSettings
from coordinator.server_app import Coordinator, RunOutcome
from federation import protocol as P
from federation.datasets.partition import TRAIN_FILE
from policies.audit import entries
from policies.decisions import Refusal
from policies.demo_keys import EXAMPLES
from policies.signing import load_private_key, read_public_keys
from tests.audit_db import session_on

KEYS = EXAMPLES / "keys"
NATIONAL_BANK = read_public_keys(KEYS / "demo_national_bank.pub")[0]


@pytest.fixture
def coordinator(tmp_path: Path) -> Coordinator:
    settings = RunSettings(
        schema="sme",
        members=(("national_bank", NATIONAL_BANK),),
        demo_keys=True,
        audit_url=f"sqlite:///{tmp_path / 'coordinator.db'}",
    )
    return Coordinator(settings, RunOutcome())


def _stats_reply(
    coordinator: Coordinator,
    tmp_path: Path,
    frame: pd.DataFrame,
    name: str,
    key: Ed25519PrivateKey,
    node_id: int,
) -> FitRes:
    """What a real node sends for the statistics phase, under its configured name and key."""
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    frame.drop(columns=["true_pd"]).to_csv(folder / TRAIN_FILE, index=False)
    client = CreditNodeClient(load_node_data(folder, "sme", name), key, node_id)
    config = {
        P.PHASE: P.PHASE_STATS,
        P.SCHEMA_NAME: "sme",
        P.SCHEMA_VERSION: "1.0.0",
        P.TRAINING_REQUEST: coordinator.request.to_wire(),
    }
    _, n, metrics = client.fit([], config)  # type: ignore[arg-type]
    return FitRes(Status(Code.OK, ""), Parameters([], "numpy.ndarray"), n, metrics)


def _strategy(coordinator: Coordinator, log: RoundLog) -> RecordingStrategy:
    return RecordingStrategy(
        FedAvg(), log, coordinator._identify(P.PHASE_STATS), coordinator._attribute_refusal
    )


def test_a_member_is_named_by_its_key(
    coordinator: Coordinator, tmp_path: Path, sme_frame: pd.DataFrame
) -> None:
    reply = _stats_reply(
        coordinator,
        tmp_path,
        sme_frame,
        "national_bank",
        load_private_key(KEYS / "demo_national_bank.key"),
        4,
    )
    log = RoundLog()
    strategy = _strategy(coordinator, log)
    assert strategy._attributed(1, "fit", [(SimpleNamespace(cid="4"), reply)])[0][0] == "national_bank"  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("name", "key_file", "node_id", "sender"),
    [
        ("national_bank", None, 4, "4"),  # an impostor's own key, a member's name
        ("online_bank", "demo_national_bank.key", 4, "4"),  # a member's key, another name
        ("national_bank", "demo_national_bank.key", 4, "5"),  # a member's reply, relayed by another node
    ],
)
def test_a_reply_no_member_signed_stops_the_run_and_is_audited(
    coordinator: Coordinator,
    tmp_path: Path,
    sme_frame: pd.DataFrame,
    name: str,
    key_file: str | None,
    node_id: int,
    sender: str,
) -> None:
    key = Ed25519PrivateKey.generate() if key_file is None else load_private_key(KEYS / key_file)
    reply = _stats_reply(coordinator, tmp_path, sme_frame, name, key, node_id)
    with pytest.raises(UnattributedReplyError, match=f"node {sender} says it is {name}"):
        _strategy(coordinator, RoundLog())._attributed(1, "fit", [(SimpleNamespace(cid=sender), reply)])  # type: ignore[list-item]
    with session_on(coordinator.settings.audit_url) as session:
        last = list(entries(session))[-1]
    assert (last.action, last.decision, json.loads(last.rules)) == (
        "fit.unattributed",
        "deny",
        ["deny.unattributed_reply"],
    )


def test_one_member_cannot_answer_twice(
    coordinator: Coordinator, tmp_path: Path, sme_frame: pd.DataFrame
) -> None:
    key = load_private_key(KEYS / "demo_national_bank.key")
    replies = [
        (SimpleNamespace(cid=str(n)), _stats_reply(coordinator, tmp_path, sme_frame, "national_bank", key, n))
        for n in (4, 5)
    ]
    with pytest.raises(UnattributedReplyError, match=r"\['national_bank'\] answered more than once"):
        _strategy(coordinator, RoundLog())._attributed(1, "fit", replies)  # type: ignore[arg-type]


def test_a_refusal_counts_only_for_the_run_it_refused(coordinator: Coordinator) -> None:
    """A member's signed refusal of an earlier run, replayed by anyone, is not this run's refusal."""
    key = load_private_key(KEYS / "demo_national_bank.key")
    now = Refusal(
        "national_bank", ("forbid.purpose_not_allowed",), ("...",), "p" * 64, coordinator.request.digest
    )
    assert coordinator._attribute_refusal(now.signed(key)) == "national_bank"
    assert coordinator._attribute_refusal(replace(now, input_sha256="e" * 64).signed(key)) is None
    assert coordinator._attribute_refusal(now.signed(Ed25519PrivateKey.generate())) is None
