"""Flower's SecAgg+ runs with FedCredit's secret sharing and masks, on node and coordinator alike."""

from __future__ import annotations

import importlib

import flwr
import pytest
from flwr.supercore.primitives.asymmetric import generate_key_pairs, private_key_to_bytes, public_key_to_bytes

import coordinator.secure_aggregation  # noqa: F401  (installs at the coordinator)
from federation.secagg import masks as secure_masks
from federation.secagg import shamir
from federation.secagg.flower import (
    _PATCHES,
    FLOWER_MASK_SCHEME,
    MASK_SCHEME,
    _original,
    install_into_flower,
    mask_scheme,
    parsed_private_key,
)


def test_the_names_flowers_secagg_looks_up_are_fedcredits() -> None:
    node = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    workflow = importlib.import_module("flwr.server.workflow.secure_aggregation.secaggplus_workflow")
    assert node._share_keys.__globals__["create_shares"] is shamir.create_shares
    assert node._collect_masked_vectors.__globals__["pseudo_rand_gen"] is secure_masks.pseudo_rand_gen
    assert node._collect_masked_vectors.__globals__["bytes_to_private_key"] is parsed_private_key
    unmask = workflow.SecAggPlusWorkflow.unmask_stage
    assert unmask.__globals__["combine_shares"] is shamir.combine_shares
    assert unmask.__globals__["pseudo_rand_gen"] is secure_masks.pseudo_rand_gen
    assert mask_scheme() == MASK_SCHEME
    assert install_into_flower()  # a second install changes nothing and still succeeds


def test_a_private_key_is_parsed_once_and_is_the_same_key() -> None:
    key = generate_key_pairs()[0]
    pem = private_key_to_bytes(key)
    parsed_private_key.cache_clear()
    first, again = parsed_private_key(pem), parsed_private_key(pem)
    assert first is again and parsed_private_key.cache_info().hits == 1
    assert public_key_to_bytes(first.public_key()) == public_key_to_bytes(key.public_key())


def _unpatched(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's modules as Flower ships them (monkeypatch restores FedCredit's names afterwards)."""
    for module, name, original, _ in _PATCHES:
        monkeypatch.setattr(importlib.import_module(module), name, _original(original))


def test_another_flower_version_is_not_patched_and_secagg_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _unpatched(monkeypatch)
    monkeypatch.setattr(flwr, "__version__", "1.43.0")
    assert not install_into_flower()
    assert mask_scheme() == FLOWER_MASK_SCHEME  # the coordinator refuses SecAgg+ runs, nodes their masks
    node = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    assert node.create_shares is not shamir.create_shares


def test_a_name_flower_no_longer_has_as_expected_is_not_patched(monkeypatch: pytest.MonkeyPatch) -> None:
    _unpatched(monkeypatch)
    workflow = importlib.import_module("flwr.server.workflow.secure_aggregation.secaggplus_workflow")

    def foreign(*_: object) -> None:  # what a changed Flower might hold under the same name
        return None

    monkeypatch.setattr(workflow, "combine_shares", foreign)
    assert not install_into_flower()  # all names or none
    node = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    assert node.create_shares is not shamir.create_shares
    assert mask_scheme() == FLOWER_MASK_SCHEME
