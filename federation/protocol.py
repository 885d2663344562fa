"""Keys of the messages exchanged between coordinator and nodes, in one place."""

from __future__ import annotations

from typing import Final

import numpy as np

# fit/evaluate config keys sent by the coordinator
PHASE: Final = "phase"
PHASE_STATS: Final = "normalization-stats"
PHASE_TRAIN: Final = "train"
PHASE_REFERENCE: Final = "contribution-reference"
PHASE_FAIRNESS: Final = "fairness"  # per protected group statistics on the holdout (federation.fairness)
SCHEMA_NAME: Final = "schema-name"
SCHEMA_VERSION: Final = "schema-version"
ROUND: Final = "round"
SEED: Final = "seed"
EPOCHS: Final = "local-epochs"
BATCH_SIZE: Final = "batch-size"
LEARNING_RATE: Final = "learning-rate"
PROXIMAL_MU: Final = "proximal_mu"  # the key Flower's FedProx strategy sends
HIDDEN: Final = "model-hidden"
EMBEDDING_DIM: Final = "model-embedding-dim"
NORM_MEAN: Final = "norm-mean"
NORM_STD: Final = "norm-std"
MAX_GRAD_NORM: Final = "dp-max-grad-norm"
CLIENT_DP_CLIPPING_NORM: Final = "clipping_norm"  # the key Flower's client-level DP wrapper sends
SECAGG_MASKS: Final = "secagg-masks"  # how SecAgg+ masks are expanded (federation.secagg.flower)
TRAINING_REQUEST: Final = "training-request"  # the coordinator-signed request, canonical JSON bytes
APPROVE_BELOW_PD: Final = (
    "approve-below-pd"  # fairness phase: approved when the probability of default is below
)

# metrics keys returned by nodes
INSTITUTION: Final = "institution"
TRAIN_LOSS: Final = "train-loss"
EPSILON_SPENT: Final = "epsilon-spent"  # DP budget spent by the node in this run so far
POLICY_SHA256: Final = "policy-sha256"  # the sha256 of the institution policy the node answers under
ATTESTATION: Final = "attestation"  # the node's signature over policies.identity.Attestation
DP_NOISE: Final = "dp-noise"  # where the node's DP noise came from: DP_NOISE_SECRET or DP_NOISE_SEEDED
DP_NOISE_SECRET: Final = "secret"
DP_NOISE_SEEDED: Final = "reproducible (node config dp-seed)"

# node config keys (flower-supernode --node-config)
NODE_DATA_PATH: Final = "data-path"
NODE_SCHEMA: Final = "schema"
NODE_NAME: Final = "institution"
NODE_POLICY: Final = "policy"  # the institution policy TOML, signed beside it
NODE_TRUSTED_POLICY_KEYS: Final = "trusted-policy-keys"  # .pub file or folder
NODE_AUDIT_DB: Final = "audit-db"  # database URL of the node's audit log
NODE_KEY: Final = "node-key"  # the institution's Ed25519 private key: signs replies and audit heads
NODE_DP_SEED: Final = "dp-seed"  # only for reproducible DP experiments: seeds the node's DP noise

NODE_DATA_INVALID = (
    "deny.node_data_invalid"  # a node whose data fails its schema: a node failure, not a refusal
)


def encode_vector(values: np.ndarray) -> bytes:
    return np.ascontiguousarray(values, dtype="<f4").tobytes()


def decode_vector(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<f4").copy()
