"""The institution node: a Flower ClientApp that trains on the data under its data path.

Built on Flower's ``NumPyClient`` and ``ClientApp(client_fn=...)`` because the
secure-aggregation mod (SecAgg+) works only with that API.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Message
from flwr.app.message_type import MessageType
from flwr.client import Client, ClientApp, NumPyClient
from flwr.client.mod import fixedclipping_mod
from flwr.clientapp.typing import Mod
from flwr.common import Context, NDArrays, Scalar

from clients.message_log import message_log_mod
from clients.node_data import NodeData, load_node_data
from clients.policy_guard import (
    NodeConfigResolver,
    PolicyGuard,
    instruction_config,
    node_audit_url,
    node_engine,
    node_key,
)
from clients.secure_aggregation_guard import SecureAggregationGuard
from federation import protocol as P
from federation.fairness import node_vector, protected_attributes, vector_length
from federation.hyperparameters import ModelConfig, TrainConfig
from federation.loading import EncodedData, FeatureLayout
from federation.metrics import score_metrics
from federation.model import FourDimensionModel, load_trainable_weights, trainable_weights
from federation.normalization import NormStats, local_moments
from federation.privacy import DEFAULT_MAX_GRAD_NORM, epsilon_spent, plan_dp, train_local_dp
from federation.secagg.flower import install_into_flower
from federation.training import mean_raw_contributions, predict_proba, train_local
from policies.budget import record_spend
from policies.contributions import EVALUATE
from policies.decisions import SignedRequest, TrainingRequest
from policies.identity import Attestation

install_into_flower()  # SecAgg+ at this node: federation.secagg.shamir and federation.secagg.masks


class SchemaMismatchError(RuntimeError):
    """The coordinator asked for a schema other than the one the node's data follows."""


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


class CreditNodeClient(NumPyClient):
    """Trains the shared model on one institution's rows; only weights and aggregates leave.

    Every reply carries the institution's signature (``policies.identity``): the
    coordinator attributes it to the member whose key signed it. DP noise comes from
    the node's own secret randomness unless its own configuration sets ``dp-seed``.
    """

    def __init__(
        self,
        node: NodeData,
        key: Ed25519PrivateKey,
        node_id: int,
        audit_url: str = "",
        dp_seed: int | None = None,
        policy_sha256: str = "",
    ) -> None:
        self.node = node
        self.policy_sha256 = policy_sha256  # the policy file the policy guard checks every message against
        self.key = key
        self.node_id = node_id
        self.audit_url = audit_url
        self.dp_seed = dp_seed

    @staticmethod
    def _signed(config: Mapping[str, Scalar]) -> SignedRequest:
        raw = config.get(P.TRAINING_REQUEST)
        if not isinstance(raw, bytes):
            raise ValueError("the message carries no signed training request")
        return SignedRequest.from_wire(raw)

    def _data(self, request: TrainingRequest, holdout: bool = False) -> EncodedData | None:
        """The node's rows restricted to the features the (already permitted) request names."""
        features = [name for name, _ in request.features]
        data = self.node.holdout if holdout else self.node.train
        return None if data is None else data.select(features)

    def _check_schema(self, config: Mapping[str, Scalar]) -> None:
        name, version = config.get(P.SCHEMA_NAME), config.get(P.SCHEMA_VERSION)
        if (name, version) != (self.node.schema.name, self.node.schema.version):
            raise SchemaMismatchError(
                f"{self.node.institution}: run asks for schema {name!s} {version!s}, "
                f"node data follows {self.node.schema.name} {self.node.schema.version}"
            )

    def _model(
        self, parameters: NDArrays, config: Mapping[str, Scalar], layout: FeatureLayout
    ) -> FourDimensionModel:
        model = FourDimensionModel(
            layout,
            ModelConfig(hidden=int(config[P.HIDDEN]), embedding_dim=int(config[P.EMBEDDING_DIM])),
        )
        model.set_normalization(
            NormStats(P.decode_vector(bytes(config[P.NORM_MEAN])), P.decode_vector(bytes(config[P.NORM_STD])))  # type: ignore[arg-type]
        )
        load_trainable_weights(model, parameters)
        return model

    def _metrics(self, signed: SignedRequest, kind: str, round_: int) -> dict[str, Scalar]:
        attestation = Attestation(self.node.institution, signed.digest, kind, round_, self.node_id)
        metrics: dict[str, Scalar] = {
            P.INSTITUTION: self.node.institution,
            P.ATTESTATION: attestation.sign(self.key),
        }
        if self.policy_sha256:
            metrics[P.POLICY_SHA256] = self.policy_sha256
        return metrics

    def get_parameters(self, config: dict[str, Scalar]) -> NDArrays:
        raise RuntimeError("the coordinator provides initial parameters; nodes never originate them")

    def fit(self, parameters: NDArrays, config: dict[str, Scalar]) -> tuple[NDArrays, int, dict[str, Scalar]]:
        self._check_schema(config)
        signed = self._signed(config)
        request = signed.request
        train = self._data(request)
        assert train is not None
        phase = str(config[P.PHASE])
        if phase == P.PHASE_STATS:
            return (
                [local_moments(train.numeric).astype(np.float64)],
                len(train),
                self._metrics(signed, phase, 0),
            )
        model = self._model(parameters, config, train.layout)
        if phase == P.PHASE_REFERENCE:
            return [mean_raw_contributions(model, train)], len(train), self._metrics(signed, phase, 0)
        if phase == P.PHASE_FAIRNESS:
            vector, weight = self._fairness(model, request, float(config[P.APPROVE_BELOW_PD]))
            return [vector], weight, self._metrics(signed, phase, 0)
        settings = TrainConfig(
            epochs=int(config[P.EPOCHS]),
            batch_size=int(config[P.BATCH_SIZE]),
            learning_rate=float(config[P.LEARNING_RATE]),
            proximal_mu=float(config.get(P.PROXIMAL_MU, 0.0)),
        )
        server_round = int(config[P.ROUND])
        metrics = self._metrics(signed, P.PHASE_TRAIN, server_round)
        if request.epsilon is None:
            # no DP: the seed only orders the batches, so a run repeats bit for bit
            seed = int(config[P.SEED]) * 100_003 + server_round * 101 + _stable_hash(self.node.institution)
            metrics[P.TRAIN_LOSS] = train_local(model, train, settings, seed=seed)
        else:
            metrics[P.TRAIN_LOSS], metrics[P.EPSILON_SPENT] = self._train_dp(
                model,
                train,
                settings,
                request,
                server_round,
                float(config.get(P.MAX_GRAD_NORM, DEFAULT_MAX_GRAD_NORM)),
            )
            metrics[P.DP_NOISE] = P.DP_NOISE_SECRET if self.dp_seed is None else P.DP_NOISE_SEEDED
        # under client-level DP every institution weighs the same: the noise is calibrated to that
        weight = 1 if P.CLIENT_DP_CLIPPING_NORM in config else len(train)
        return trainable_weights(model), weight, metrics

    def _fairness(
        self, model: FourDimensionModel, request: TrainingRequest, approve_below_pd: float
    ) -> tuple[np.ndarray, int]:
        """Per protected group counts over the holdout rows, as fractions of them (federation.fairness).

        A node without holdout rows sends zeros with weight 1: it adds nothing to the sums, and
        every figure is a ratio of sums, so it does not change them (weight 0 would leave a
        federation without any holdout dividing by zero).
        """
        attributes = protected_attributes(self.node.schema)
        holdout = self._data(request, holdout=True)
        groups = self.node.holdout_groups
        if holdout is None or holdout.label is None or len(holdout) == 0 or groups is None:
            return np.zeros(vector_length(attributes)), 1
        p = predict_proba(model, holdout)
        return node_vector(p, holdout.label, groups, attributes, approve_below_pd), len(holdout)

    def _train_dp(
        self,
        model: FourDimensionModel,
        train: EncodedData,
        settings: TrainConfig,
        request: TrainingRequest,
        server_round: int,
        max_grad_norm: float,
    ) -> tuple[float, float]:
        """One DP-SGD round, entered in the privacy ledger before any gradient is computed."""
        assert request.epsilon is not None
        plan = plan_dp(
            request.epsilon,
            request.delta,
            len(train),
            settings.batch_size,
            settings.epochs,
            request.rounds,
            max_grad_norm,
        )
        spent = epsilon_spent(plan, server_round)
        if self.audit_url:
            spent = record_spend(
                node_engine(self.audit_url),
                institution=self.node.institution,
                run_id=request.run_id,
                round_=server_round,
                planned=request.epsilon,
                delta=request.delta,
                noise_multiplier=plan.noise_multiplier,
                sample_rate=plan.sample_rate,
                steps=plan.steps_per_round,
                sign_with=self.key,
            )
        # the noise generator is seeded from the node's own randomness, never from the message
        seed = (
            secrets.randbits(63)
            if self.dp_seed is None  # the same dp-seed at two nodes must not give them the same noise
            else self.dp_seed * 1_000_003 + server_round * 101 + _stable_hash(self.node.institution)
        )
        return train_local_dp(model, train, settings, plan, seed=seed), spent

    def evaluate(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[float, int, dict[str, Scalar]]:
        self._check_schema(config)
        signed = self._signed(config)
        metrics = self._metrics(signed, EVALUATE, int(config.get(P.ROUND, 0)))
        data = self._data(signed.request, holdout=True)
        if data is None or data.label is None or len(data) == 0:
            return 0.0, 0, metrics
        p = predict_proba(self._model(parameters, config, data.layout), data)
        metrics.update(score_metrics(data.label, p))
        return _log_loss(data.label, p), len(data), metrics


def _stable_hash(text: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(text)) % 10_007


def node_config(context: Context) -> Mapping[str, str]:
    """A deployed node's own configuration (``flower-supernode --node-config``)."""
    return {k: str(v) for k, v in context.node_config.items()}


def _client_fn(resolve: NodeConfigResolver, context: Context) -> Client:
    torch.set_num_threads(1)
    cfg = resolve(context)
    missing = [k for k in (P.NODE_DATA_PATH, P.NODE_SCHEMA) if not cfg.get(k)]
    if missing:
        raise ValueError(
            f"node config lacks {missing}; start the node with --node-config 'data-path=... schema=...'"
        )
    key = node_key(cfg)
    if key is None:
        raise ValueError(
            f"node config lacks {P.NODE_KEY!r}: the institution's private key, which signs what the node sends"
        )
    node = load_node_data(cfg[P.NODE_DATA_PATH], cfg[P.NODE_SCHEMA], cfg.get(P.NODE_NAME, ""))
    seed = cfg.get(P.NODE_DP_SEED)
    policy = Path(cfg.get(P.NODE_POLICY, ""))
    return CreditNodeClient(
        node,
        key,
        context.node_id,
        node_audit_url(cfg, node.institution),
        None if seed is None else int(seed),
        hashlib.sha256(policy.read_bytes()).hexdigest() if policy.is_file() else "",
    ).to_client()


class CreditClientApp(ClientApp):
    """The node's ClientApp; it pickles as the recipe it was built from.

    The simulation engine pickles the ClientApp with every message: as a recipe it
    is a few hundred bytes instead of Flower's closures.
    """

    def __init__(self, resolve: NodeConfigResolver, outer_mods: Sequence[Mod] = ()) -> None:
        self._recipe = (resolve, tuple(outer_mods))
        super().__init__(client_fn=partial(_client_fn, resolve), mods=self.mods(resolve, outer_mods))

    def mods(self, resolve: NodeConfigResolver, outer_mods: Sequence[Mod]) -> list[Mod]:
        # the policy check runs before SecAgg+: a refusal looks like a dropout to the protocol
        return [*outer_mods, PolicyGuard(resolve), SecureAggregationGuard(resolve), client_dp_clipping_mod]

    def __reduce__(self) -> tuple[type[CreditClientApp], tuple[NodeConfigResolver, tuple[Mod, ...]]]:
        return type(self), self._recipe


def build_client_app(resolve: NodeConfigResolver = node_config, outer_mods: Sequence[Mod] = ()) -> ClientApp:
    """The node's ClientApp. ``resolve`` gives the node's ``data-path`` and ``schema``.

    ``outer_mods`` run outside the policy check, e.g. to capture every reply the node sends.
    """
    return CreditClientApp(resolve, outer_mods)


def client_dp_clipping_mod(
    msg: Message, ctxt: Context, call_next: Callable[[Message, Context], Message]
) -> Message:
    """Flower's update clipping for runs under client-level DP (the last mod to touch the weights)."""
    config = instruction_config(msg) if msg.metadata.message_type == MessageType.TRAIN else None
    if config is not None and P.CLIENT_DP_CLIPPING_NORM in config:
        return fixedclipping_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


# Flower's deployment engine loads this one: one line per round in the node's log
app = build_client_app(outer_mods=[message_log_mod])
