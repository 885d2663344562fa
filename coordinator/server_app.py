"""The coordinator: a Flower ServerApp that runs one federated training.

Two phases, both on Flower's legacy workflow (the one SecAgg+ plugs into):

1. *normalization*: one round in which every node sends its per-column moments;
   their row-weighted average gives the pooled mean and standard deviation;
2. *training*: FedAvg or FedProx rounds, the global model evaluated on the
   coordinator's test set (when it has one) and on each node's holdout rows.

Then two one-round phases with the trained model: *fairness* (per protected group
statistics on the nodes' holdout rows, ``federation.fairness``; only when the schema
has protected columns and nodes evaluate on their holdout) and the *contribution
reference*, which comes last because it ends the run at every node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import numpy as np
import torch
from flwr.common import (
    Context,
    NDArrays,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg, FedProx, Strategy
from flwr.server.workflow import DefaultWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
from flwr.serverapp import Grid
from sqlmodel import Session

from coordinator.checkpoint import (
    Checkpoint,
    ResumedRounds,
    check_resumable,
    next_round,
    resumed_request,
    save_checkpoint,
)
from coordinator.client_dp import ClientLevelDPStrategy
from coordinator.prompt_grid import PromptGrid
from coordinator.recording import (
    Availability,
    Identify,
    RecordingStrategy,
    RoundLog,
    UnattributedReplyError,
)
from coordinator.run_settings import RunSettings
from coordinator.secure_aggregation import STATS_CLIPPING_RANGE, WEIGHT_CLIPPING_RANGE, secagg_workflow
from coordinator.settings import coordinator_settings
from federation import protocol as P
from federation.fairness import fairness_report, protected_attributes, vector_length
from federation.loading import EncodedData, FeatureLayout, load_dataset
from federation.metrics import score_metrics
from federation.model import FourDimensionModel, load_trainable_weights, trainable_weights
from federation.normalization import NormStats, stats_from_moments
from federation.schema import Schema, resolve_schema
from federation.secagg.flower import mask_scheme
from federation.training import predict_proba
from policies.audit import append, create_audit_engine, record, sign_head
from policies.contributions import EVALUATE
from policies.decisions import Refusal, TrainingRequest, sign_request
from policies.demo_keys import demo_key_name
from policies.identity import Attestation, attributed_member
from policies.signing import load_private_key, public_key_text

RoundCallback = Callable[[int, dict[str, float]], None]


def training_request(settings: RunSettings, schema: Schema) -> TrainingRequest:
    """What every node is asked for this run, before the coordinator signs it."""
    return TrainingRequest(
        run_id=settings.run_id,
        purpose=settings.purpose,
        schema=schema.name,
        schema_version=schema.version,
        features=FeatureLayout.from_schema(schema).features(),
        strategy=settings.strategy,
        rounds=settings.rounds,
        min_institutions=settings.min_institutions,
        secure_aggregation=settings.secure_aggregation,
        epsilon=settings.epsilon,
        delta=settings.delta,
    )


def coordinator_actor(settings: RunSettings) -> str:
    """The coordinator's name in the audit log; a run under the published demo keys says so."""
    return "coordinator [DEMO keys]" if settings.demo_keys else "coordinator"


@dataclass
class RunOutcome:
    """Filled in by the ServerApp as the run proceeds."""

    log: RoundLog = field(default_factory=RoundLog)
    request_digest: str = ""  # sha256 of the signed training request every node checked
    model: FourDimensionModel | None = None
    test_scores: np.ndarray | None = None  # final model on the test set
    test_labels: np.ndarray | None = None
    # per protected group figures on the nodes' pooled holdout rows (federation.fairness.fairness_report);
    # None when the schema has no protected columns, nodes do not evaluate, or none has holdout rows
    fairness: dict[str, Any] | None = None


def weighted_mean_metrics(results: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
    """Row-weighted mean of every numeric metric the nodes report (NaN-free ones only)."""
    sums: dict[str, float] = {}
    weights: dict[str, int] = {}
    for n, metrics in results:
        for key, value in metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
                sums[key] = sums.get(key, 0.0) + n * float(value)
                weights[key] = weights.get(key, 0) + n
    return {k: sums[k] / weights[k] for k in sums if weights[k] > 0}


def _global_weights(context: Context) -> NDArrays:
    return context.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()


class Coordinator:
    """Runs the two phases against whatever nodes the grid offers."""

    def __init__(
        self,
        settings: RunSettings,
        outcome: RunOutcome,
        on_round: RoundCallback | None = None,
        resume: Checkpoint | None = None,
    ) -> None:
        self.settings = settings
        self.outcome = outcome
        self.resume = resume
        if resume is not None:
            check_resumable(resume, settings)
            outcome.log = resume.log
        self._stats: NormStats | None = None
        self._weights: NDArrays = []
        # node id -> the name its key was registered under (None: registered without a name)
        self._registered: dict[int, str | None] = {}
        self._grid: Grid | None = None
        self._completed = self._started = 0 if resume is None else resume.completed_round
        self.on_round = on_round
        self.schema: Schema = resolve_schema(settings.schema)
        self.layout = FeatureLayout.from_schema(self.schema)
        self.test: EncodedData | None = (
            load_dataset(settings.test_path, self.schema) if settings.test_path else None
        )
        self.key = load_private_key(settings.coordinator_key)
        demo = demo_key_name(public_key_text(self.key.public_key()))
        if demo is not None and not settings.demo_keys:
            raise ValueError(
                f"{settings.coordinator_key} is FedCredit's published demo key {demo}, which anyone can "
                "sign with: refused unless the run is marked as a demo (RunSettings.demo_keys)"
            )
        asked = training_request(settings, self.schema)
        self.request = (
            sign_request(asked, self.key) if resume is None else resumed_request(resume, asked, self.key)
        )
        outcome.request_digest = self.request.digest
        self.audit = create_audit_engine(settings.audit_url)
        self.members = dict(settings.members)

    def _workflow(self, grid: Grid, clipping_range: float, equal_weights: bool = False) -> DefaultWorkflow:
        """Flower's legacy workflow, with SecAgg+ as its fit step when the run asks for it."""
        if not self.settings.secure_aggregation:
            return DefaultWorkflow()
        workflow = secagg_workflow(
            len(list(grid.get_node_ids())),
            clipping_range,
            shares=self.settings.secure_aggregation_shares,
            threshold=self.settings.reconstruction_threshold,
            **({"max_weight": 1.0} if equal_weights else {}),
        )
        return DefaultWorkflow(fit_workflow=workflow)

    def _base_config(self) -> dict[str, Scalar]:
        return {
            P.SCHEMA_NAME: self.schema.name,
            P.SCHEMA_VERSION: self.schema.version,
            P.SEED: self.settings.seed,
            P.TRAINING_REQUEST: self.request.to_wire(),
            **({P.SECAGG_MASKS: mask_scheme()} if self.settings.secure_aggregation else {}),
        }

    @property
    def actor(self) -> str:
        return coordinator_actor(self.settings)

    def _audit(self, action: str, resource: str, **fields: Any) -> None:
        record(self.audit, actor=self.actor, action=action, resource=resource, **fields)

    def _attribute_refusal(self, refusal: Refusal) -> str | None:
        """The member that refused this run, if its key signed the refusal of this run's request."""
        if refusal.input_sha256 != self.request.digest:
            return None
        return refusal.attributed_member(self.members)

    def _identify(self, phase: str) -> Identify:
        """Attribute each reply of ``phase`` to the member whose key signed it, or stop the run."""

        def identify(proxy: ClientProxy, metrics: dict[str, Scalar], stage: str, server_round: int) -> str:
            kind = EVALUATE if stage == "evaluate" else phase
            round_ = server_round if kind in (P.PHASE_TRAIN, EVALUATE) else 0
            claimed, signature = metrics.get(P.INSTITUTION), metrics.get(P.ATTESTATION)
            attestation = Attestation(str(claimed), self.request.digest, kind, round_, int(proxy.cid))
            member = (
                attributed_member(attestation, signature, self.members)
                if isinstance(signature, str)
                else None
            )
            registered = self._registered_name(int(proxy.cid))
            if member is None:
                self._refuse_reply(
                    stage,
                    kind,
                    server_round,
                    f"node-{proxy.cid}",
                    "unattributed",
                    f"node {proxy.cid} says it is {claimed!s}, but no member of the federation signed its reply",
                )
            if registered is not None and registered != member:
                self._refuse_reply(
                    stage,
                    kind,
                    server_round,
                    registered,
                    "misattributed",
                    f"the node registered as {registered} sent a reply signed by {member}'s key",
                )
            return member

        return identify

    def _refuse_reply(
        self, stage: str, kind: str, server_round: int, who: str, what: str, why: str
    ) -> NoReturn:
        """Record a reply that cannot be counted for the member it claims, and stop the run."""
        rule = "deny.unattributed_reply" if what == "unattributed" else "deny.reply_signed_by_another_member"
        self._audit(
            f"{stage}.{what}",
            f"{self.settings.run_id}/{who}/{kind}-{server_round}",
            decision="deny",
            rules=[rule],
            input_sha256=self.request.digest,
        )
        raise UnattributedReplyError(
            f"{kind} round {server_round}: {why}; the run stops rather than count it"
        )

    def _registered_name(self, node_id: int) -> str | None:
        """The name the node's authentication key was registered under at the SuperLink, if any."""
        if node_id not in self._registered and self._grid is not None:
            self._registered.update({n.node_id: n.name or None for n in self._grid.get_nodes()})
        return self._registered.get(node_id)

    def _missing(self) -> list[str]:
        """Data holders with no node connected, by registered name; empty when nodes carry no names."""
        if self._grid is None:
            return []
        connected = {n.node_id: n.name for n in self._grid.get_nodes()}
        if not any(connected.values()):
            return []
        self._registered.update({k: v or None for k, v in connected.items()})
        return sorted(set(self.members) - set(connected.values()))

    def _checkpoint(self, server_round: int, parameters: Parameters | None) -> None:
        """The global model after ``server_round`` and the round log so far, where the run keeps them.

        Without ``parameters``: the round's log changed or, for a round past the last aggregated
        one, the round began (its messages may reach nodes, which answer a round only once)."""
        if parameters is not None:
            self._weights = parameters_to_ndarrays(parameters)
            self._completed = server_round
        self._started = max(self._started, server_round)
        if self.settings.checkpoint_dir is None or self._stats is None or not self._weights:
            return
        save_checkpoint(
            self.settings.checkpoint_dir,
            Checkpoint(
                run_id=self.settings.run_id,
                federation_policy_sha256=self.settings.federation_policy_sha256,
                schema=self.settings.schema,
                rounds=self.settings.rounds,
                completed_round=self._completed,
                started_round=self._started,
                request=self.request.to_wire().decode(),
                stats=self._stats,
                weights=self._weights,
                log=self.outcome.log,
            ),
        )

    def _on_refusal(self, phase: str, server_round: int, stage: str, refusal: Refusal) -> None:
        member = self._attribute_refusal(refusal) or f"unverified-{refusal.institution}"
        self._audit(
            f"{stage}.refused",
            f"{self.settings.run_id}/{member}/{phase}-{server_round}",
            decision="deny",
            rules=refusal.rules,
            policy_sha256=refusal.policy_sha256,
            input_sha256=refusal.input_sha256 or self.request.digest,
        )

    def _signed_audit(self, action: str, resource: str, **fields: Any) -> None:
        """An audit entry and a head signed by the coordinator's key, in one transaction."""
        with Session(self.audit) as session:
            append(
                session,
                actor=self.actor,
                action=action,
                resource=resource,
                input_sha256=self.request.digest,
                **fields,
            )
            sign_head(session, self.key)
            session.commit()

    def _on_round_end(self, server_round: int) -> None:
        self._signed_audit("round.end", f"{self.settings.run_id}/round-{server_round}")

    def _recording(self, inner: Strategy, log: RoundLog, phase: str) -> RecordingStrategy:
        return RecordingStrategy(
            inner,
            log,
            identify=self._identify(phase),
            attribute_refusal=self._attribute_refusal,
            min_results=self.settings.min_institutions,
            on_refusal=lambda r, stage, refusal: self._on_refusal(phase, r, stage, refusal),
            on_round_end=self._on_round_end if phase == P.PHASE_TRAIN else None,
            phase="training" if phase == P.PHASE_TRAIN else phase,
            checkpoint=self._checkpoint if phase == P.PHASE_TRAIN else None,
            availability=Availability(self.settings.join_timeout_s, self._missing),
            min_evaluate=(
                self.settings.min_institutions
                if phase == P.PHASE_TRAIN and self.settings.evaluate_on_nodes
                else 0
            ),
        )

    def _model_config(self, stats: NormStats) -> dict[str, Scalar]:
        return {
            **self._base_config(),
            P.PHASE: P.PHASE_TRAIN,
            P.HIDDEN: self.settings.model.hidden,
            P.EMBEDDING_DIM: self.settings.model.embedding_dim,
            P.NORM_MEAN: P.encode_vector(stats.mean),
            P.NORM_STD: P.encode_vector(stats.std),
        }

    def new_model(self, stats: NormStats) -> FourDimensionModel:
        torch.manual_seed(self.settings.seed)
        model = FourDimensionModel(self.layout, self.settings.model)
        model.set_normalization(stats)
        return model

    def _one_round_average(
        self,
        grid: Grid,
        context: Context,
        config: dict[str, Scalar],
        initial: NDArrays,
        shape: tuple[int, ...],
        on_weights: Callable[[list[int]], None] | None = None,
    ) -> np.ndarray:
        """One round in which every node returns one array; their row-weighted average.

        Under secure aggregation the coordinator only ever sees this average (and each
        node's weight, which Flower's SecAgg+ leaves in the clear); ``on_weights`` gets the weights.
        """
        n = self.settings.min_institutions

        def weights_seen(results: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
            if on_weights is not None:
                on_weights([rows for rows, _ in results])
            return {}

        strategy = FedAvg(
            fraction_fit=1.0,
            fraction_evaluate=0.0,
            min_fit_clients=n,
            min_available_clients=n,
            on_fit_config_fn=lambda _: config,
            initial_parameters=ndarrays_to_parameters(initial),
            fit_metrics_aggregation_fn=weights_seen,
        )
        ordered = self._recording(strategy, RoundLog(), str(config[P.PHASE]))
        self._workflow(
            grid,
            clipping_range=STATS_CLIPPING_RANGE
            if config[P.PHASE] == P.PHASE_STATS
            else WEIGHT_CLIPPING_RANGE,
        )(grid, LegacyContext(context, ServerConfig(num_rounds=1), ordered))
        result = _global_weights(context)[0]
        if result.shape != shape:
            raise RuntimeError(f"nodes returned an array of shape {result.shape}, expected {shape}")
        return result

    def normalization_phase(self, grid: Grid, context: Context) -> NormStats:
        """Pooled mean and std of every numeric input, from per-node moments."""
        shape = (3, len(self.layout.numeric))
        config = {**self._base_config(), P.PHASE: P.PHASE_STATS}
        return stats_from_moments(self._one_round_average(grid, context, config, [np.zeros(shape)], shape))

    def reference_phase(
        self, grid: Grid, context: Context, model: FourDimensionModel, stats: NormStats
    ) -> np.ndarray:
        """Federated mean of each tower's output: the zero point of the contributions."""
        config = {**self._model_config(stats), P.PHASE: P.PHASE_REFERENCE}
        shape = (len(model.dimensions),)
        return self._one_round_average(grid, context, config, trainable_weights(model), shape)

    def fairness_phase(
        self, grid: Grid, context: Context, model: FourDimensionModel, stats: NormStats
    ) -> dict[str, Any] | None:
        """Per protected group figures of ``model`` on the nodes' holdout rows, from their securely summed counts.

        None when the schema marks no column protected, the run does not score on the
        nodes' holdout rows, or no node has any.
        """
        attributes = protected_attributes(self.schema)
        if not attributes or not self.settings.evaluate_on_nodes:
            return None
        cutoff = self.settings.approve_below_pd
        config = {**self._model_config(stats), P.PHASE: P.PHASE_FAIRNESS, P.APPROVE_BELOW_PD: cutoff}
        weights: list[int] = []
        average = self._one_round_average(
            grid, context, config, trainable_weights(model), (vector_length(attributes),), weights.extend
        )
        return fairness_report(average, attributes, float(sum(weights)), cutoff)

    def training_strategy(self, stats: NormStats, initial: NDArrays | None = None) -> Strategy:
        train = self.settings.train
        fit_config = {
            **self._model_config(stats),
            P.EPOCHS: train.epochs,
            P.BATCH_SIZE: train.batch_size,
            P.LEARNING_RATE: train.learning_rate,
            P.MAX_GRAD_NORM: self.settings.max_grad_norm,
        }
        eval_config = self._model_config(stats)
        common: dict[str, Any] = {
            "fraction_fit": 1.0,
            "fraction_evaluate": 1.0 if self.settings.evaluate_on_nodes else 0.0,
            "min_fit_clients": self.settings.min_institutions,
            "min_evaluate_clients": self.settings.min_institutions if self.settings.evaluate_on_nodes else 0,
            "min_available_clients": self.settings.min_institutions,
            "on_fit_config_fn": lambda server_round: {**fit_config, P.ROUND: server_round},
            "on_evaluate_config_fn": lambda server_round: {**eval_config, P.ROUND: server_round},
            "initial_parameters": ndarrays_to_parameters(
                initial if initial is not None else trainable_weights(self.new_model(stats))
            ),
            "evaluate_fn": self._evaluate_fn(stats) if self.test is not None else None,
            "fit_metrics_aggregation_fn": weighted_mean_metrics,
            "evaluate_metrics_aggregation_fn": weighted_mean_metrics,
        }
        strategy: Strategy = (
            FedProx(proximal_mu=self.settings.proximal_mu, **common)
            if self.settings.strategy == "fedprox"
            else FedAvg(**common)
        )
        if self.settings.client_dp is None:
            return strategy
        return ClientLevelDPStrategy(strategy, self.settings.client_dp, self.settings.min_institutions)

    def _evaluate_fn(
        self, stats: NormStats
    ) -> Callable[[int, NDArrays, dict[str, Scalar]], tuple[float, dict[str, Scalar]] | None]:
        model = self.new_model(stats)
        test = self.test
        assert test is not None and test.label is not None
        label = test.label

        def evaluate(
            server_round: int, weights: NDArrays, _: dict[str, Scalar]
        ) -> tuple[float, dict[str, Scalar]]:
            load_trainable_weights(model, weights)
            p = predict_proba(model, test)
            metrics = score_metrics(label, p)
            if server_round > 0 and self.on_round is not None:
                self.on_round(server_round, metrics)
            clipped = np.clip(p, 1e-7, 1 - 1e-7)
            loss = float(-np.mean(label * np.log(clipped) + (1 - label) * np.log(1 - clipped)))
            return loss, dict(metrics)

        return evaluate

    def __call__(self, grid: Grid, context: Context) -> None:
        self._grid = grid
        if self.resume is None:
            self._signed_audit("run.start", self.settings.run_id)
        else:
            self._signed_audit(
                "run.resume", self.settings.run_id, rules=[f"after_round_{self.resume.completed_round}"]
            )
        try:
            if not self.members:
                raise ValueError("the run names no member institutions; no reply could be attributed")
            self._run(grid, context)
        except Exception:
            self._signed_audit("run.end", self.settings.run_id, decision="failed")
            raise
        self._signed_audit("run.end", self.settings.run_id, decision="completed")

    def _run(self, grid: Grid, context: Context) -> None:
        resume = self.resume
        stats = self.normalization_phase(grid, context) if resume is None else resume.stats
        self._stats = stats
        done = 0 if resume is None else next_round(resume) - 1  # a round that began is not asked again
        weights = None if resume is None else resume.weights
        if done < self.settings.rounds:
            strategy: Strategy = self._recording(
                self.training_strategy(stats, weights), self.outcome.log, P.PHASE_TRAIN
            )
            if done:
                strategy = ResumedRounds(strategy, done)
            self._workflow(grid, WEIGHT_CLIPPING_RANGE, equal_weights=self.settings.client_dp is not None)(
                grid,
                LegacyContext(context, ServerConfig(num_rounds=self.settings.rounds - done), strategy),
            )
            weights = _global_weights(context)
        assert weights is not None
        model = self.new_model(stats)
        load_trainable_weights(model, weights)
        # before the reference: a node's reference ends the run there
        self.outcome.fairness = self.fairness_phase(grid, context, model, stats)
        model.set_reference(self.reference_phase(grid, context, model, stats))
        self.outcome.model = model
        if self.test is not None:
            self.outcome.test_scores = predict_proba(model, self.test)
            self.outcome.test_labels = self.test.label


def build_server_app(
    settings: RunSettings,
    outcome: RunOutcome,
    on_round: RoundCallback | None = None,
    resume: Checkpoint | None = None,
) -> ServerApp:
    """A ServerApp that runs ``settings`` (from ``resume``'s round when given) and fills ``outcome``."""
    app = ServerApp()
    coordinator = Coordinator(settings, outcome, on_round, resume)

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        coordinator(PromptGrid(grid, coordinator_settings().poll_seconds), context)

    return app


# Flower's deployment engine loads this (``[tool.flwr.app.components]``): the run comes from run_config.
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    from coordinator.deployment import run_deployed  # it builds on this module

    run_deployed(grid, context)
