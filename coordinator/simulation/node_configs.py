"""Each virtual node's node config, handed to the simulation's workers once.

Flower's simulation engine only numbers its virtual nodes (``partition-id``);
``SimulatedNodeConfigs`` maps that number to the node config a real SuperNode
would be started with, so the client code reads ``data-path`` exactly as in
deployment.

Flower's Ray backend pickles the ClientApp, and with it this mapping, into every
message it hands a worker: with every node's config inside, a message round of n
nodes pickled n x n configs (183 KB per message at 1,000 institutions; taking
them out cut the coordinator's CPU there from 31.3 to 23.2 s per round in
``benchmarks/scale.py``). Under Ray the configs go once into Ray's object store
and each message carries a reference; a worker fetches them on first use and
keeps them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flwr.common import Context

from coordinator.simulation.nodes import SimulatedNode

_fetched: dict[str, list[dict[str, str]]] = {}  # object id -> configs, in each worker


def _partition(context: Context) -> int:
    return int(context.node_config["partition-id"])


class SimulatedNodeConfigs:
    """Gives each virtual node its own node config."""

    def __init__(self, nodes: Sequence[SimulatedNode]) -> None:
        self.configs = [n.node_config() for n in nodes]
        self._shared: Any = None  # the configs' reference in Ray's object store, once put there

    def __call__(self, context: Context) -> Mapping[str, str]:
        return self.configs[_partition(context)]

    def __reduce__(self) -> tuple[Any, ...]:
        import ray

        if not ray.is_initialized():
            return (_restore, (self.configs,))
        if self._shared is None:
            self._shared = ray.put(self.configs)
        return (SharedNodeConfigs, (self._shared,))


def _restore(configs: list[dict[str, str]]) -> SimulatedNodeConfigs:
    restored = SimulatedNodeConfigs([])
    restored.configs = configs
    return restored


class SharedNodeConfigs:
    """The node configs as a worker receives them: a reference into Ray's object store."""

    def __init__(self, shared: Any) -> None:
        self.shared = shared

    def __call__(self, context: Context) -> Mapping[str, str]:
        key = self.shared.hex()
        if key not in _fetched:
            import ray

            _fetched[key] = ray.get(self.shared)
        return _fetched[key][_partition(context)]
