"""Each message to a simulation worker carries a reference to the node configs, not the configs."""

from __future__ import annotations

import pickle
from pathlib import Path

import cloudpickle
import pytest
import ray
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


def test_without_ray_the_configs_travel_whole(tmp_path: Path) -> None:
    restored = pickle.loads(pickle.dumps(configs(tmp_path)))
    assert restored(context(417))[P.NODE_NAME] == "inst_0417"
    assert restored(context(417))[P.NODE_DATA_PATH] == str(tmp_path / "institutions" / "inst_0417")


def test_under_ray_a_message_carries_a_reference_and_the_worker_finds_its_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    whole = len(cloudpickle.dumps(configs(tmp_path).configs))
    ray.init(num_cpus=1, num_gpus=0, include_dashboard=False, log_to_driver=False)
    try:
        shared = configs(tmp_path)
        sent = [cloudpickle.dumps(shared) for _ in range(3)]
        assert max(len(s) for s in sent) * 100 < whole  # a reference: 131 bytes against 183 KB

        @ray.remote
        def config_of(app_configs: SimulatedNodeConfigs, partition: int) -> dict[str, str]:
            return dict(app_configs(context(partition)))

        got = ray.get([config_of.remote(shared, p) for p in (0, 417, NODES - 1)])
        assert [g[P.NODE_NAME] for g in got] == ["inst_0000", "inst_0417", f"inst_{NODES - 1:04d}"]
        assert got[1][P.NODE_KEY] == str(tmp_path / "417.key")
    finally:
        ray.shutdown()
