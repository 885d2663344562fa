"""Each message to a simulation worker carries the node configs compressed, decoded once per worker."""

from __future__ import annotations

import pickle
from pathlib import Path

import cloudpickle
from flwr.common import Context, RecordDict

from coordinator.simulation.node_configs import SimulatedNodeConfigs
from coordinator.simulation.nodes import SimulatedNode
from federation import protocol as P

NODES = 1000


def configs(tmp_path: Path) -> SimulatedNodeConfigs:
    nodes = [
        SimulatedNode(
            f"inst_{k:04d}",
            tmp_path / "institutions" / f"inst_{k:04d}",
            "sme",
            node_key=tmp_path / f"{k}.key",
        )
        for k in range(NODES)
    ]
    return SimulatedNodeConfigs(nodes)


def context(partition: int) -> Context:
    return Context(
        run_id=1,
        node_id=partition + 100,
        node_config={"partition-id": partition},
        state=RecordDict(),
        run_config={},
    )


def test_a_pickled_mapping_gives_every_node_its_own_config(tmp_path: Path) -> None:
    restored = pickle.loads(pickle.dumps(configs(tmp_path)))
    assert restored(context(417))[P.NODE_NAME] == "inst_0417"
    assert restored(context(417))[P.NODE_DATA_PATH] == str(tmp_path / "institutions" / "inst_0417")
    assert restored(context(NODES - 1))[P.NODE_KEY] == str(tmp_path / f"{NODES - 1}.key")
    assert restored.configs == configs(tmp_path).configs


def test_a_message_carries_a_small_packing_decoded_once_per_worker(tmp_path: Path) -> None:
    app_configs = configs(tmp_path)
    whole = len(cloudpickle.dumps(app_configs.configs))
    sent = [cloudpickle.dumps(app_configs) for _ in range(3)]
    assert max(len(s) for s in sent) * 50 < whole  # under a fiftieth of the configs themselves
    first, second = (pickle.loads(s) for s in sent[:2])
    assert first.configs is second.configs  # the worker's second message reuses the first's decoding
    assert second(context(0))[P.NODE_NAME] == "inst_0000"
