"""Each virtual node's node config, handed to the simulation's workers compressed.

Flower's simulation engine only numbers its virtual nodes (``partition-id``);
``SimulatedNodeConfigs`` maps that number to the node config a real SuperNode
would be started with, so the client code reads ``data-path`` exactly as in
deployment.

Flower's Ray backend pickles the ClientApp, and with it this mapping, into every
message it hands a worker: with every node's config inside as Python objects, a
message round of n nodes pickled n x n configs (183 KB per message at 1,000
institutions). The mapping therefore pickles as the configs' JSON, compressed
once (under a fiftieth of the configs' pickle at 1,000 institutions, as
``tests/coordinator/simulation/test_node_configs.py`` checks: the configs differ
only in names and paths), and each worker process decodes a given packing once. Unlike a reference
into Ray's object store, the packing needs nothing of Ray: a worker never waits
on an object that Ray has lost track of.
"""

from __future__ import annotations

import functools
import json
import lzma
from collections.abc import Mapping, Sequence
from typing import Any

from flwr.common import Context

from coordinator.simulation.nodes import SimulatedNode


def _partition(context: Context) -> int:
    return int(context.node_config["partition-id"])


class SimulatedNodeConfigs:
    """Gives each virtual node its own node config."""

    def __init__(self, nodes: Sequence[SimulatedNode]) -> None:
        self.configs: list[dict[str, str]] = [n.node_config() for n in nodes]
        self._packed: bytes | None = None  # the configs as pickled, compressed on first pickling

    def __call__(self, context: Context) -> Mapping[str, str]:
        return self.configs[_partition(context)]

    def __reduce__(self) -> tuple[Any, ...]:
        if self._packed is None:
            self._packed = lzma.compress(json.dumps(self.configs, separators=(",", ":")).encode())
        return (_unpack, (self._packed,))


@functools.lru_cache(maxsize=4)
def _configs_in(packed: bytes) -> list[dict[str, str]]:
    configs: list[dict[str, str]] = json.loads(lzma.decompress(packed))
    return configs


def _unpack(packed: bytes) -> SimulatedNodeConfigs:
    restored = SimulatedNodeConfigs([])
    restored.configs = _configs_in(packed)
    restored._packed = packed
    return restored
