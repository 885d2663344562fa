"""Flower's SecAgg+ runs with FedCredit's secret sharing and masks, on node and coordinator alike."""

from __future__ import annotations

import importlib

import coordinator.secure_aggregation  # noqa: F401  (installs at the coordinator)
from federation import secure_masks, shamir
from federation.flower_secagg import MASK_SCHEME, install_into_flower, mask_scheme


def test_the_names_flowers_secagg_looks_up_are_fedcredits() -> None:
    node = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    workflow = importlib.import_module("flwr.server.workflow.secure_aggregation.secaggplus_workflow")
    assert node._share_keys.__globals__["create_shares"] is shamir.create_shares
    assert node._collect_masked_vectors.__globals__["pseudo_rand_gen"] is secure_masks.pseudo_rand_gen
    unmask = workflow.SecAggPlusWorkflow.unmask_stage
    assert unmask.__globals__["combine_shares"] is shamir.combine_shares
    assert unmask.__globals__["pseudo_rand_gen"] is secure_masks.pseudo_rand_gen
    assert mask_scheme() == MASK_SCHEME
    assert install_into_flower()  # a second install changes nothing and still succeeds
