"""Flower's SecAgg+ runs with FedCredit's secret sharing and masks, on node and coordinator alike."""

from __future__ import annotations

import importlib

from flwr.supercore.primitives.asymmetric import generate_key_pairs, private_key_to_bytes, public_key_to_bytes

import coordinator.secure_aggregation  # noqa: F401  (installs at the coordinator)
from federation import secure_masks, shamir
from federation.flower_secagg import MASK_SCHEME, install_into_flower, mask_scheme, parsed_private_key


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
