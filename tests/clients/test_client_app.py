from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from clients.client_app import CreditClientApp, CreditNodeClient, SchemaMismatchError, build_client_app
from clients.node_data import NodeData, load_node_data
from coordinator.simulation.node_configs import SimulatedNodeConfigs
from coordinator.simulation.nodes import SimulatedNode
from federation import protocol as P
from federation.datasets.partition import TRAIN_FILE
from federation.errors import DataValidationError
from federation.loading import FeatureLayout
from federation.model import FourDimensionModel, trainable_weights
from federation.normalization import local_moments
from federation.schema import resolve_schema
from policies.decisions import SignedRequest, TrainingRequest, sign_request
from policies.demo_keys import EXAMPLES
from policies.identity import Attestation, attributed_member
from policies.signing import load_private_key, public_key_text

KEYS = EXAMPLES / "keys"


def request_bytes(features: tuple[tuple[str, str], ...] | None = None, **changes: object) -> bytes:
    layout = FeatureLayout.from_schema(resolve_schema("sme"))
    fields: dict[str, object] = dict(
        run_id="r1",
        purpose="credit_underwriting",
        schema="sme",
        schema_version="1.0.0",
        features=features or layout.features(),
        strategy="fedavg",
        rounds=3,
        min_institutions=3,
        secure_aggregation=False,
    )
    fields.update(changes)
    return sign_request(TrainingRequest(**fields), load_private_key(KEYS / "demo_coordinator.key")).to_wire()  # type: ignore[arg-type]


def config(phase: str = P.PHASE_STATS, request: bytes | None = None) -> dict[str, object]:
    return {
        P.PHASE: phase,
        P.SCHEMA_NAME: "sme",
        P.SCHEMA_VERSION: "1.0.0",
        P.TRAINING_REQUEST: request or request_bytes(),
    }


@pytest.fixture
def node_dir(sme_frame: pd.DataFrame, tmp_path: Path) -> Path:
    folder = tmp_path / "bank_a"
    folder.mkdir()
    sme_frame.drop(columns=["true_pd"]).to_csv(folder / TRAIN_FILE, index=False)
    return folder


NODE_KEY = Ed25519PrivateKey.generate()


def _client(node: NodeData, **kwargs: object) -> CreditNodeClient:
    return CreditNodeClient(node, NODE_KEY, 7, **kwargs)  # type: ignore[arg-type]


def test_stats_phase_returns_only_aggregates(node_dir: Path) -> None:
    node = load_node_data(node_dir, "sme")
    client = _client(node)
    arrays, n, metrics = client.fit([], config())  # type: ignore[arg-type]
    assert n == len(node.train)
    assert len(arrays) == 1 and arrays[0].shape == (3, len(node.train.layout.numeric))
    np.testing.assert_allclose(arrays[0], local_moments(node.train.numeric))
    assert set(metrics) == {P.INSTITUTION, P.ATTESTATION} and metrics[P.INSTITUTION] == "bank_a"


def test_every_reply_is_signed_with_the_institutions_key(node_dir: Path) -> None:
    """The coordinator attributes a reply to the key that signed it, not to the name it carries."""
    # one request for both: it carries its issue time to the second, so two would differ across a tick
    request = request_bytes()
    _, _, metrics = _client(load_node_data(node_dir, "sme")).fit([], config(request=request))  # type: ignore[arg-type]
    digest = SignedRequest.from_wire(request).digest
    said = Attestation("bank_a", digest, P.PHASE_STATS, 0, 7)
    members = {"bank_a": public_key_text(NODE_KEY.public_key())}
    assert attributed_member(said, str(metrics[P.ATTESTATION]), members) == "bank_a"
    # the same signature does not vouch for another phase, round, node or request
    for other in (
        Attestation("bank_a", digest, P.PHASE_TRAIN, 1, 7),
        Attestation("bank_a", digest, P.PHASE_STATS, 0, 8),
        Attestation("bank_a", "0" * 64, P.PHASE_STATS, 0, 7),
    ):
        assert attributed_member(other, str(metrics[P.ATTESTATION]), members) is None
    # a key that is not the member's: not attributed, whatever name the reply carries
    impostor = {"bank_a": public_key_text(Ed25519PrivateKey.generate().public_key())}
    assert attributed_member(said, str(metrics[P.ATTESTATION]), impostor) is None


def _train_config(node: NodeData, request: bytes) -> tuple[list[np.ndarray], dict[str, object]]:
    model = FourDimensionModel(node.train.layout)
    moments = local_moments(node.train.numeric)
    from federation.normalization import stats_from_moments

    stats = stats_from_moments(moments)
    model.set_normalization(stats)
    cfg = {
        **config(P.PHASE_TRAIN, request),
        P.ROUND: 1,
        P.SEED: 0,
        P.EPOCHS: 1,
        P.BATCH_SIZE: 256,
        P.LEARNING_RATE: 3e-3,
        P.HIDDEN: model.config.hidden,
        P.EMBEDDING_DIM: model.config.embedding_dim,
        P.NORM_MEAN: P.encode_vector(stats.mean),
        P.NORM_STD: P.encode_vector(stats.std),
    }
    return trainable_weights(model), cfg


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Small batches through a small model: a second intra-op thread only waits for the first,
    and on a busy machine it makes training several times slower (same results)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_torch_thread")
def test_the_coordinator_cannot_choose_or_know_the_dp_noise(node_dir: Path, tmp_path: Path) -> None:
    """Same weights, same message, same seed from the coordinator: the DP update differs each time.

    A coordinator that could reproduce the noise could subtract it. Only the node's own
    configuration (``dp-seed``) makes DP runs repeat, and the reply says so.
    """
    node = load_node_data(node_dir, "sme")
    weights, cfg = _train_config(node, request_bytes(epsilon=3.0))

    def update(client: CreditNodeClient) -> tuple[np.ndarray, dict[str, object]]:
        arrays, _, metrics = client.fit([w.copy() for w in weights], cfg)  # type: ignore[arg-type]
        return np.concatenate([a.ravel() for a in arrays]), metrics

    first, metrics = update(_client(node))
    second, _ = update(_client(node))
    assert not np.allclose(first, second)
    assert metrics[P.DP_NOISE] == P.DP_NOISE_SECRET
    seeded_a, seeded_metrics = update(_client(node, dp_seed=5))
    seeded_b, _ = update(_client(node, dp_seed=5))
    np.testing.assert_array_equal(seeded_a, seeded_b)
    assert seeded_metrics[P.DP_NOISE] == P.DP_NOISE_SEEDED


def test_columns_outside_the_request_never_reach_the_model(node_dir: Path) -> None:
    """The data has `industry` and `region`; a request without them gives a narrower model."""
    node = load_node_data(node_dir, "sme")
    full = FeatureLayout.from_schema(resolve_schema("sme"))
    narrow = tuple(f for f in full.features() if f[0] not in ("industry", "region"))
    client = _client(node)
    data = client._data(client._signed(config(request=request_bytes(narrow))).request)  # type: ignore[arg-type]
    assert data is not None
    assert data.layout.width == full.width - 2
    assert (
        "industry" not in data.layout.categorical and data.categorical.shape[1] == len(full.categorical) - 2
    )
    assert "industry" in pd.read_csv(node_dir / TRAIN_FILE).columns

    def input_width(layout: FeatureLayout) -> int:
        return sum(t.mlp[0].in_features for t in FourDimensionModel(layout).towers.values())  # type: ignore[index]

    embedding = FourDimensionModel(full).config.embedding_dim
    assert input_width(data.layout) == input_width(full) - 2 * embedding


def test_protected_column_cannot_be_requested(node_dir: Path) -> None:
    client = _client(load_node_data(node_dir, "sme"))
    features = (*FeatureLayout.from_schema(resolve_schema("sme")).features(), ("owner_gender", "behaviour"))
    with pytest.raises(ValueError, match=r"\['owner_gender'\] are not model inputs here"):
        client._data(client._signed(config(request=request_bytes(features))).request)  # type: ignore[arg-type]


def test_node_refuses_another_schema(node_dir: Path) -> None:
    client = _client(load_node_data(node_dir, "sme"))
    bad = {**config(), P.SCHEMA_NAME: "uci_homo"}
    with pytest.raises(
        SchemaMismatchError, match=r"run asks for schema uci_homo 1\.0\.0, node data follows sme 1\.0\.0"
    ):
        client.fit([], bad)  # type: ignore[arg-type]


def test_node_data_is_read_once_per_process(node_dir: Path) -> None:
    assert load_node_data(node_dir, "sme") is load_node_data(node_dir, "sme")


def test_empty_data_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=r"no train\.csv in the node's data path"):
        load_node_data(tmp_path, "sme")


def test_the_client_app_pickles_as_its_recipe() -> None:
    """The simulation engine pickles the ClientApp with every message: it must stay small."""
    nodes = [SimulatedNode(f"bank_{i}", Path(f"institutions/bank_{i}"), "uci_homo") for i in range(10)]
    app = build_client_app(SimulatedNodeConfigs(nodes))
    wire = cloudpickle.dumps(lambda: app)
    assert len(wire) < 2_000  # Flower's closures: over 4 kB
    copy = cloudpickle.loads(wire)()
    assert isinstance(copy, CreditClientApp) and copy is not app
    resolve, outer_mods = copy._recipe
    assert resolve.configs == app._recipe[0].configs and outer_mods == ()
    assert [type(m).__name__ for m in copy._mods] == [
        "PolicyGuard",
        "SecureAggregationGuard",
        "function",
    ]


def test_a_node_process_loads_no_dp_or_metrics_library_it_does_not_use() -> None:
    """A deployed SuperNode starts a process per message: it must not pay for Opacus (DP runs
    only) or scikit-learn (metrics only) on every start."""
    import subprocess
    import sys

    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, clients.client_app; print(sorted({m.split('.')[0] for m in sys.modules} & {'opacus', 'sklearn'}))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert loaded == "[]"
