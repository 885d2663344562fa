from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clients.client_app import CreditNodeClient, SchemaMismatchError, build_client_app
from clients.node_data import load_node_data
from federation import protocol as P
from federation.errors import DataValidationError
from federation.normalization import local_moments
from federation.partition import TRAIN_FILE


@pytest.fixture
def node_dir(sme_frame: pd.DataFrame, tmp_path: Path) -> Path:
    folder = tmp_path / "bank_a"
    folder.mkdir()
    sme_frame.drop(columns=["true_pd"]).to_csv(folder / TRAIN_FILE, index=False)
    return folder


def test_stats_phase_returns_only_aggregates(node_dir: Path) -> None:
    node = load_node_data(node_dir, "sme")
    client = CreditNodeClient(node)
    config = {P.PHASE: P.PHASE_STATS, P.SCHEMA_NAME: "sme", P.SCHEMA_VERSION: "1.0.0"}
    arrays, n, metrics = client.fit([], config)
    assert n == len(node.train)
    assert len(arrays) == 1 and arrays[0].shape == (3, len(node.train.layout.numeric))
    np.testing.assert_allclose(arrays[0], local_moments(node.train.numeric))
    assert metrics == {P.INSTITUTION: "bank_a"}


def test_node_refuses_another_schema(node_dir: Path) -> None:
    client = CreditNodeClient(load_node_data(node_dir, "sme"))
    with pytest.raises(
        SchemaMismatchError, match=r"run asks for schema uci_homo 1.0.0, node data follows sme 1.0.0"
    ):
        client.fit([], {P.PHASE: P.PHASE_STATS, P.SCHEMA_NAME: "uci_homo", P.SCHEMA_VERSION: "1.0.0"})


def test_node_data_is_read_once_per_process(node_dir: Path) -> None:
    assert load_node_data(node_dir, "sme") is load_node_data(node_dir, "sme")


def test_empty_data_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=r"no train\.csv in the node's data path"):
        load_node_data(tmp_path, "sme")


def test_client_app_builds() -> None:
    assert build_client_app() is not None
