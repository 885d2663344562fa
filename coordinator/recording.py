"""A strategy wrapper that records what happens in each round, for the run report."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flwr.common import EvaluateIns, EvaluateRes, FitIns, FitRes, Parameters, Scalar
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from federation import protocol as P
from federation.errors import FedCreditError
from policies.decisions import Refusal


@dataclass
class RoundLog:
    """Everything the report keeps about one federated run."""

    central: list[dict[str, Any]] = field(default_factory=list)  # per round, on the test set
    institutions: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)

    def institution(self, name: str) -> dict[str, Any]:
        return self.institutions.setdefault(name, {"train_rows": 0, "holdout_rows": 0, "rounds": []})

    def round_entry(self, name: str, server_round: int) -> dict[str, Any]:
        rounds = self.institution(name)["rounds"]
        if not rounds or rounds[-1]["round"] != server_round:
            rounds.append({"round": server_round})
        return rounds[-1]


def _clean(metrics: dict[str, Scalar]) -> dict[str, Any]:
    return {
        k: (None if isinstance(v, float) and math.isnan(v) else v)
        for k, v in metrics.items()
        if k not in (P.INSTITUTION, P.ATTESTATION, P.POLICY_SHA256) and not isinstance(v, bytes)
    }


# (node's proxy, its reply's metrics, "fit" or "evaluate", round) -> the member who sent it;
# raises when no member's key signed the reply
Identify = Callable[[ClientProxy, dict[str, Scalar], str, int], str]
# a refusal -> the member who signed it, None if no member did
AttributeRefusal = Callable[[Refusal], str | None]
# (round, its aggregated weights; or None: the round began, or its log changed) -> saved
Checkpointer = Callable[[int, Parameters | None], None]


@dataclass(frozen=True)
class Availability:
    """How long a round waits for the institutions it needs, and who is missing when they are not there."""

    timeout_s: float
    missing: Callable[[], list[str]]  # the members whose nodes are not connected now


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def readable(reason: str, limit: int = 300) -> str:
    """A node's error as one line for the report: no terminal colours, no traceback, the last word."""
    lines = [line.strip() for line in _ANSI.sub("", reason).splitlines() if line.strip()]
    said = [line for line in lines if "Message:" in line]
    line = (said or lines or [""])[-1].split("Message:", 1)[-1].strip()
    return line[:limit]


class RunCannotContinueError(FedCreditError):
    """A round ended with fewer institutions than the run needs: the run stops there."""


class UnattributedReplyError(RuntimeError):
    """A reply that no member of the federation signed: it must not be counted."""


class RecordingStrategy(Strategy):
    """Delegates every decision to ``inner``; writes fit/evaluate outcomes to ``log``.

    Results reach ``inner`` sorted by institution, not in arrival order, so the
    floating-point sums of the aggregation, and hence a whole run, repeat exactly
    under the same seed.
    """

    def __init__(
        self,
        inner: Strategy,
        log: RoundLog,
        identify: Identify,
        attribute_refusal: AttributeRefusal,
        min_results: int = 1,
        on_refusal: Callable[[int, str, Refusal], None] | None = None,
        on_round_end: Callable[[int], None] | None = None,
        phase: str = "training",
        checkpoint: Checkpointer | None = None,
        availability: Availability | None = None,
        min_evaluate: int = 0,
    ) -> None:
        super().__init__()
        self.phase = phase
        self.inner = inner
        self.log = log
        self.identify = identify
        self.attribute_refusal = attribute_refusal
        self.min_results = min_results
        self.on_refusal = on_refusal
        self.on_round_end = on_round_end
        self.checkpoint = checkpoint
        self.availability = availability
        self.min_evaluate = min_evaluate
        self._fit_started = 0.0

    def _attributed(
        self, server_round: int, stage: str, results: list[tuple[ClientProxy, Any]]
    ) -> list[tuple[str, tuple[ClientProxy, Any]]]:
        """Each result with the member that signed it, sorted by member (a fixed aggregation order)."""
        named = [
            (self.identify(proxy, res.metrics, stage, server_round), (proxy, res)) for proxy, res in results
        ]
        names = [name for name, _ in named]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise UnattributedReplyError(
                f"round {server_round}: {twice} answered more than once in one {stage}"
            )
        return sorted(named, key=lambda item: item[0])

    def _failures(self, server_round: int, stage: str, failures: Sequence[object]) -> None:
        """Log each failure; a node's policy refusal is parsed and handed to ``on_refusal``."""
        for failure in failures:
            if isinstance(failure, BaseException):
                error = failure.args[0] if failure.args else failure
                reason = getattr(error, "reason", None) or repr(failure)
            else:
                reason = f"status {failure[1].status.message}"  # type: ignore[index]
            entry: dict[str, Any] = {"round": server_round, "stage": stage, "reason": readable(reason)}
            refusal = Refusal.from_reason(reason)
            if refusal is not None:
                member = self.attribute_refusal(refusal)
                entry.update(
                    institution=member or f"unverified node (claims {refusal.institution!r})",
                    rules=list(refusal.rules),
                    reason="; ".join(refusal.reasons),
                )
                if self.on_refusal is not None:
                    self.on_refusal(server_round, stage, refusal)
            self.log.failures.append(entry)

    def _cannot_continue(self, server_round: int, what: str) -> RunCannotContinueError:
        failed = [f for f in self.log.failures if f["round"] == server_round]
        refused = [f"{f['institution']} ({', '.join(f['rules'])})" for f in failed if "rules" in f]
        silent = sorted({f["reason"] for f in failed if "rules" not in f})
        silent_count = sum(1 for f in failed if "rules" not in f)
        missing = self.availability.missing() if self.availability is not None else []
        return RunCannotContinueError(
            f"{self.phase} round {server_round}: {what}, the run requires at least {self.min_results} "
            "institutions; the run stops"
            + (f"; refused: {'; '.join(refused)}" if refused else "")
            + (f"; {silent_count} node(s) did not answer ({'; '.join(silent)})" if silent else "")
            + (f"; not connected: {', '.join(missing)}" if missing else "")
        )

    def halted(self, server_round: int, stage: str, failures: Sequence[object]) -> RunCannotContinueError:
        """A round secure aggregation could not complete: its refusals recorded, the error to raise."""
        # Flower's SecAgg+ lists each failed node twice (once per pass over the replies)
        unique = list({str(f): f for f in failures}.values())
        self._failures(server_round, stage, unique)
        return self._cannot_continue(server_round, "secure aggregation could not complete the round")

    def __repr__(self) -> str:
        return f"RecordingStrategy({self.inner!r})"

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.inner.initialize_parameters(client_manager)

    def _await(self, server_round: int, needed: int, client_manager: ClientManager) -> None:
        """Wait until ``needed`` nodes are connected; the run stops, naming who is missing, if they are not."""
        if self.availability is None or needed <= 0 or client_manager.num_available() >= needed:
            return
        if client_manager.wait_for(needed, timeout=max(1, math.ceil(self.availability.timeout_s))):
            return
        missing = self.availability.missing()
        raise RunCannotContinueError(
            f"{self.phase} round {server_round}: {client_manager.num_available()} institution(s) connected "
            f"after waiting {self.availability.timeout_s:g} s, the run requires at least {needed}"
            + (f"; not connected: {', '.join(missing)}" if missing else "")
            + "; the run stops (fedcredit run resume continues it from its last completed round)"
        )

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self._await(server_round, self.min_results, client_manager)
        if self.checkpoint is not None:  # before any message leaves: the round has begun
            self.checkpoint(server_round, None)
        self._fit_started = time.perf_counter()
        return self.inner.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        named = self._attributed(server_round, "fit", results)
        results = [result for _, result in named]
        for name, (_, res) in named:
            self.log.institution(name)["train_rows"] = res.num_examples
            if isinstance(res.metrics.get(P.POLICY_SHA256), str):
                self.log.institution(name)["policy_sha256"] = str(res.metrics[P.POLICY_SHA256])
            entry = self.log.round_entry(name, server_round)
            if P.TRAIN_LOSS in res.metrics:
                entry["train_loss"] = float(res.metrics[P.TRAIN_LOSS])
            if P.EPSILON_SPENT in res.metrics:
                entry["epsilon_spent"] = float(res.metrics[P.EPSILON_SPENT])
            if P.DP_NOISE in res.metrics:
                entry["dp_noise"] = str(res.metrics[P.DP_NOISE])
        self._failures(server_round, "fit", failures)
        if len(results) < self.min_results:
            raise self._cannot_continue(server_round, f"{len(results)} institution(s) trained")
        parameters, metrics = self.inner.aggregate_fit(server_round, results, failures)
        if self.on_round_end is not None:
            self.on_round_end(server_round)
        if self.log.central and self.log.central[-1]["round"] == server_round:
            self.log.central[-1]["fit_seconds"] = time.perf_counter() - self._fit_started
        else:
            self.log.central.append(
                {"round": server_round, "fit_seconds": time.perf_counter() - self._fit_started}
            )
        self._round_so_far(server_round)
        if self.checkpoint is not None and parameters is not None:
            self.checkpoint(server_round, parameters)
        return parameters, metrics

    def _round_so_far(self, server_round: int) -> None:
        """``round_seconds``: from the round's fit configuration to its latest aggregation step."""
        if self.log.central and self.log.central[-1]["round"] == server_round and self._fit_started:
            self.log.central[-1]["round_seconds"] = time.perf_counter() - self._fit_started

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        self._await(server_round, self.min_evaluate, client_manager)
        return self.inner.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        named = self._attributed(server_round, "evaluate", results)
        results = [result for _, result in named]
        for name, (_, res) in named:
            self.log.institution(name)["holdout_rows"] = res.num_examples
            if res.num_examples:
                self.log.round_entry(name, server_round).update(_clean(res.metrics), loss=res.loss)
        self._failures(server_round, "evaluate", failures)
        self._round_so_far(server_round)
        if self.checkpoint is not None:
            self.checkpoint(server_round, None)
        return self.inner.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        result = self.inner.evaluate(server_round, parameters)
        if result is not None and server_round > 0:
            loss, metrics = result
            entry = {"round": server_round, "loss": loss, **_clean(metrics)}
            if self.log.central and self.log.central[-1]["round"] == server_round:
                self.log.central[-1].update(entry)
            else:
                self.log.central.append(entry)
            self._round_so_far(server_round)
            if self.checkpoint is not None:
                self.checkpoint(server_round, None)
        return result
