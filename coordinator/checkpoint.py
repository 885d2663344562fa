"""The global model after every completed training round, so that a run stopped by a fault resumes.

A checkpoint folder holds ``weights-round-K.npz`` (the aggregated trainable weights after round
K) and ``checkpoint.json``: the round, the sha256 of that weights file, the pooled normalization
statistics, the round log so far, and what the run was asked (run id, federation policy digest,
schema, rounds, and the signed training request itself). ``checkpoint.json`` is renamed into place
last, so it never names a weights file that is not complete; a weights file whose sha256 differs
is refused at load.

A node answers each round of a run once and binds the run id to its first signed request
(``policies.contributions``), so a resumed run sends that same request and goes on with the
first round no node can have answered yet: the one after the last round that began. A fault
in the middle of a round therefore costs that round (the report's rounds show the gap).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.common import EvaluateIns, EvaluateRes, FitIns, FitRes, Parameters, Scalar
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from coordinator.recording import RoundLog
from coordinator.run_settings import RunSettings
from federation.atomic_files import write_files
from federation.errors import FedCreditError
from federation.normalization import NormStats
from policies.decisions import SignedRequest, TrainingRequest
from policies.signing import public_key_text

CHECKPOINT_FILE = "checkpoint.json"
FORMAT = 1


class CheckpointError(FedCreditError):
    """No usable checkpoint: missing, unreadable, or not the run it claims to be."""


@dataclass(frozen=True)
class Checkpoint:
    run_id: str
    federation_policy_sha256: str | None
    schema: str
    rounds: int  # the run's planned training rounds
    completed_round: int
    started_round: int  # the last round whose messages may have gone out (>= completed_round)
    request: str  # the signed training request every node checked (SignedRequest.to_wire)
    stats: NormStats
    weights: list[np.ndarray]
    log: RoundLog


def _weights_bytes(weights: list[np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, *weights)
    return buffer.getvalue()


def save_checkpoint(folder: Path, checkpoint: Checkpoint) -> None:
    """Write the weights of ``checkpoint.completed_round`` and then the file that names them."""
    data = _weights_bytes(checkpoint.weights)
    weights_file = f"weights-round-{checkpoint.completed_round}.npz"
    document = {
        "format": FORMAT,
        "run_id": checkpoint.run_id,
        "federation_policy_sha256": checkpoint.federation_policy_sha256,
        "schema": checkpoint.schema,
        "rounds": checkpoint.rounds,
        "completed_round": checkpoint.completed_round,
        "started_round": checkpoint.started_round,
        "request": checkpoint.request,
        "weights": {"file": weights_file, "sha256": hashlib.sha256(data).hexdigest()},
        "normalization": {"mean": checkpoint.stats.mean.tolist(), "std": checkpoint.stats.std.tolist()},
        "log": {
            "central": checkpoint.log.central,
            "institutions": checkpoint.log.institutions,
            "failures": checkpoint.log.failures,
        },
    }
    text = json.dumps(document, indent=1, sort_keys=True, default=float).encode()
    write_files([(folder / weights_file, data, 0o644), (folder / CHECKPOINT_FILE, text, 0o644)])
    for old in folder.glob("weights-round-*.npz"):  # only the newest is named by checkpoint.json
        if old.name != weights_file:
            old.unlink(missing_ok=True)


def load_checkpoint(folder: Path) -> Checkpoint:
    """The checkpoint in ``folder``; CheckpointError when there is none or it does not check out."""
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint (the run completed no training round)")
    try:
        document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        if document.get("format") != FORMAT:
            raise CheckpointError(f"{path}: checkpoint format {document.get('format')!r}, expected {FORMAT}")
        weights_path = folder / document["weights"]["file"]
        data = weights_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != document["weights"]["sha256"]:
            raise CheckpointError(f"{weights_path}: sha256 differs from {path}; refused")
        with np.load(io.BytesIO(data)) as arrays:
            weights = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
        log = document["log"]
        return Checkpoint(
            run_id=str(document["run_id"]),
            federation_policy_sha256=document["federation_policy_sha256"],
            schema=str(document["schema"]),
            rounds=int(document["rounds"]),
            completed_round=int(document["completed_round"]),
            started_round=int(document["started_round"]),
            request=str(document["request"]),
            stats=NormStats(
                np.asarray(document["normalization"]["mean"], dtype=np.float64),
                np.asarray(document["normalization"]["std"], dtype=np.float64),
            ),
            weights=weights,
            log=RoundLog(list(log["central"]), dict(log["institutions"]), list(log["failures"])),
        )
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None


class ResumedRounds(Strategy):
    """Presents Flower's rounds 1, 2, ... of a resumed run to ``inner`` as rounds K+1, K+2, ...

    Everything downstream (the round log, the audit entries, each node's round in its signed
    attestations and privacy ledger) then numbers rounds as the run does, not as this attempt does.
    """

    def __init__(self, inner: Strategy, completed: int) -> None:
        super().__init__()
        self.inner = inner
        self.completed = completed

    def __repr__(self) -> str:
        return f"ResumedRounds({self.inner!r}, after round {self.completed})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        return self.inner.configure_fit(server_round + self.completed, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        return self.inner.aggregate_fit(server_round + self.completed, results, failures)

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return self.inner.configure_evaluate(server_round + self.completed, parameters, client_manager)

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return self.inner.aggregate_evaluate(server_round + self.completed, results, failures)

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        # round 0 is the initial model's evaluation, which a resumed run has already had
        return None if server_round == 0 else self.inner.evaluate(server_round + self.completed, parameters)


def next_round(checkpoint: Checkpoint) -> int:
    """The first training round a resumed run asks for."""
    return max(checkpoint.completed_round, checkpoint.started_round) + 1


def check_resumable(checkpoint: Checkpoint, settings: RunSettings) -> None:
    """Refuse to continue ``checkpoint`` as anything but the run it was saved from."""
    where = f"checkpoint of run {checkpoint.run_id}"
    if checkpoint.run_id != settings.run_id:
        raise CheckpointError(f"{where}: asked to resume it as run {settings.run_id}")
    if checkpoint.federation_policy_sha256 != settings.federation_policy_sha256:
        raise CheckpointError(
            f"{where}: it ran under federation policy {checkpoint.federation_policy_sha256}, "
            f"this one is {settings.federation_policy_sha256}; a changed policy needs a new run"
        )
    if (checkpoint.schema, checkpoint.rounds) != (settings.schema, settings.rounds):
        raise CheckpointError(
            f"{where}: schema {checkpoint.schema}, {checkpoint.rounds} rounds; "
            f"the run now asks schema {settings.schema}, {settings.rounds} rounds"
        )
    if settings.client_dp is not None:
        raise CheckpointError(
            f"{where}: client-level DP runs cannot resume (the coordinator's noise accountant "
            "is not in the checkpoint); start a new run"
        )


def resumed_request(checkpoint: Checkpoint, asked: TrainingRequest, key: Ed25519PrivateKey) -> SignedRequest:
    """The signed request the run began with, provided this coordinator signed it and the run still asks the same."""
    where = f"checkpoint of run {checkpoint.run_id}"
    try:
        signed = SignedRequest.from_wire(checkpoint.request.encode())
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    if signed.signed_by != public_key_text(key.public_key()) or not signed.signature_valid():
        raise CheckpointError(f"{where}: its training request is not signed by this coordinator's key")
    if replace(asked, issued_at=signed.request.issued_at) != signed.request:
        raise CheckpointError(f"{where}: the run now asks something other than its signed training request")
    return signed
