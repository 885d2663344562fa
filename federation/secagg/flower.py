"""FedCredit's secret sharing and mask generator inside Flower's SecAgg+.

Flower's node mod and coordinator workflow look these functions up by name
when they run; this points those names at ``federation.secagg.shamir`` (faster, same
shares) and ``federation.secagg.masks`` (masks from the whole seed), and makes
the node parse its private key once per stage rather than once per
neighbour. Node and coordinator both call ``install_into_flower`` when their
module is imported. Only the Flower version the project pins is patched; with
any other version nothing is patched, ``mask_scheme()`` says so, and the
coordinator refuses to run SecAgg+ and the nodes refuse its masks.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import flwr
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.supercore.primitives.asymmetric import bytes_to_private_key

from federation.secagg import masks as secure_masks
from federation.secagg import shamir

FLOWER_VERSION = "1.42.0"
MASK_SCHEME = "chacha20-sha256-v1"  # the only scheme coordinator and nodes run SecAgg+ with
FLOWER_MASK_SCHEME = "flower-mt19937-32bit"
_log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def parsed_private_key(private_key_bytes: bytes) -> ec.EllipticCurvePrivateKey:
    """Flower's ``bytes_to_private_key``, remembered: a node used to parse its key for every neighbour.

    SecAgg+ draws new keys every round; four entries hold one round's two keys of two nodes.
    """
    return bytes_to_private_key(private_key_bytes)


# (module, name, Flower's original as "module:name", replacement)
_PATCHES: list[tuple[str, str, str, Callable[..., Any]]] = [
    (
        "flwr.client.mod.secure_aggregation.secaggplus_mod",
        "create_shares",
        "flwr.common.secure_aggregation.crypto.shamir:create_shares",
        shamir.create_shares,
    ),
    (
        "flwr.client.mod.secure_aggregation.secaggplus_mod",
        "pseudo_rand_gen",
        "flwr.common.secure_aggregation.secaggplus_utils:pseudo_rand_gen",
        secure_masks.pseudo_rand_gen,
    ),
    (
        "flwr.client.mod.secure_aggregation.secaggplus_mod",
        "bytes_to_private_key",
        "flwr.supercore.primitives.asymmetric:bytes_to_private_key",
        parsed_private_key,
    ),
    (
        "flwr.server.workflow.secure_aggregation.secaggplus_workflow",
        "combine_shares",
        "flwr.common.secure_aggregation.crypto.shamir:combine_shares",
        shamir.combine_shares,
    ),
    (
        "flwr.server.workflow.secure_aggregation.secaggplus_workflow",
        "pseudo_rand_gen",
        "flwr.common.secure_aggregation.secaggplus_utils:pseudo_rand_gen",
        secure_masks.pseudo_rand_gen,
    ),
]


def _original(reference: str) -> Any:
    module, name = reference.split(":")
    return getattr(importlib.import_module(module), name)


def install_into_flower() -> bool:
    """Patch Flower's SecAgg+ (all names or none); returns whether it is patched."""
    if flwr.__version__ != FLOWER_VERSION:
        _log.warning("Flower %s: SecAgg+ keeps Flower's own secret sharing and masks", flwr.__version__)
        return False
    targets = [
        (importlib.import_module(module), name, original, new) for module, name, original, new in _PATCHES
    ]
    if any(
        getattr(mod, name, None) not in (_original(original), new) for mod, name, original, new in targets
    ):
        _log.warning("Flower's SecAgg+ modules are not as expected: they keep their own functions")
        return False
    for mod, name, _, new in targets:
        setattr(mod, name, new)
    return True


def mask_scheme() -> str:
    """How this process's SecAgg+ expands mask seeds; coordinator and nodes must agree."""
    installed = all(
        getattr(importlib.import_module(module), name, None) is new for module, name, _, new in _PATCHES
    )
    return MASK_SCHEME if installed else FLOWER_MASK_SCHEME
