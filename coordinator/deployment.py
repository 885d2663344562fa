"""The coordinator under Flower's deployment engine: ``flwr run`` against a SuperLink.

Everything a run needs comes from its ``run_config`` (``[tool.flwr.app.config]`` in
``pyproject.toml``, overridden with ``flwr run --run-config``). The members, strategy,
rounds and privacy come from a signed federation policy, never from the run config alone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from flwr.common import Context
from flwr.serverapp import Grid

from coordinator.checkpoint import CHECKPOINT_FILE, load_checkpoint
from coordinator.federation_policy import Asked, apply_federation_policy, verify_federation_policy
from coordinator.prompt_grid import PromptGrid
from coordinator.report import write_report
from coordinator.run_settings import RunSettings
from coordinator.server_app import Coordinator, RunOutcome
from coordinator.settings import coordinator_settings
from federation.atomic_files import write_files
from federation.errors import FedCreditError
from federation.flower_pulls import prompt_object_pulls
from federation.hyperparameters import TrainConfig
from policies.decisions import new_run_id
from policies.demo_keys import demo_key_name
from policies.signing import load_private_key, public_key_text

Scalar = bool | int | float | str


def _text(config: Mapping[str, Scalar], key: str, required: bool = False) -> str:
    value = config.get(key, "")
    if not isinstance(value, str):
        raise FedCreditError(f"run config {key}: must be a string, got {value!r}")
    if required and not value.strip():
        raise FedCreditError(f"run config {key}: required (pass --run-config '{key}=\"...\"' to flwr run)")
    return value.strip()


def _path(config: Mapping[str, Scalar], key: str, required: bool = False) -> Path | None:
    value = _text(config, key, required)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_absolute():
        raise FedCreditError(f"run config {key}: {value} is relative; the coordinator needs an absolute path")
    return path


def _number(config: Mapping[str, Scalar], key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FedCreditError(f"run config {key}: must be a number, got {value!r}")
    return float(value)


def settings_from_run_config(config: Mapping[str, Scalar]) -> RunSettings:
    """The run the signed federation policy and ``config`` describe; refuses what they do not allow."""
    policy_path = _path(config, "federation-policy", required=True)
    trust = _path(config, "federation-trust", required=True)
    key = _path(config, "coordinator-key", required=True)
    assert policy_path is not None and trust is not None and key is not None
    policy, signer = verify_federation_policy(policy_path, trust)
    coordinator = public_key_text(load_private_key(key).public_key())
    demo = [
        what for what, k in (("coordinator key", coordinator), ("policy signer", signer)) if demo_key_name(k)
    ]
    allow_demo = config.get("allow-demo-keys", False)
    if demo and allow_demo is not True:
        raise FedCreditError(
            f"the {' and '.join(demo)} is one of FedCredit's published demo keys, which anyone can sign with; "
            "set allow-demo-keys = true only for a demo"
        )
    evaluate_on_nodes = config.get("evaluate-on-nodes", True)
    if not isinstance(evaluate_on_nodes, bool):
        raise FedCreditError(
            f"run config evaluate-on-nodes: must be true or false, got {evaluate_on_nodes!r}"
        )
    epsilon = _number(config, "epsilon", 0.0)
    asked = Asked(epsilon=epsilon if epsilon > 0 else None)
    join_timeout = _number(config, "join-timeout", RunSettings.join_timeout_s)
    if not 0 < join_timeout < float("inf"):
        raise FedCreditError(f"run config join-timeout: must be a number of seconds > 0, got {join_timeout}")
    settings = RunSettings(
        schema=policy.schema,
        run_id=_text(config, "resume-run") or new_run_id(),
        join_timeout_s=join_timeout,
        coordinator_key=key,
        test_path=_path(config, "test-path"),
        train=TrainConfig(epochs=int(_number(config, "local-epochs", 1))),
        seed=int(_number(config, "seed", 0)),
        audit_url=_text(config, "audit-db") or coordinator_settings().audit_url,
        demo_keys=bool(demo),
        evaluate_on_nodes=evaluate_on_nodes,
    )
    return apply_federation_policy(settings, policy, asked, coordinator_key=coordinator)


def run_deployed(grid: Grid, context: Context) -> Path:
    """Run one federated training on the nodes the SuperLink offers; returns the run folder.

    The global model is saved after every round in the run folder's ``checkpoint/``; with
    ``resume-run`` in the run config the run of that id continues from there. A run that fails
    leaves ``status.json`` in its folder with the reason."""
    started = time.perf_counter()
    prompt_object_pulls()  # the nodes' replies are fetched as soon as they are there
    settings = settings_from_run_config(context.run_config)
    runs = _path(context.run_config, "runs-dir") or coordinator_settings().runs_dir
    run_dir = runs / settings.run_id
    settings = replace(settings, checkpoint_dir=run_dir / "checkpoint")
    resuming = bool(_text(context.run_config, "resume-run"))
    outcome = RunOutcome()
    grid = PromptGrid(grid, coordinator_settings().poll_seconds)
    try:
        resume = load_checkpoint(run_dir / "checkpoint") if resuming else None
        write_status(run_dir, "running", "resumed" if resuming else "started", context.run_id)
        Coordinator(settings, outcome, resume=resume)(grid, context)
    except Exception as exc:
        write_status(run_dir, "failed", str(exc) or type(exc).__name__, context.run_id)
        raise
    write_report(
        run_dir,
        settings.run_id,
        settings,
        outcome,
        {"seconds": round(time.perf_counter() - started, 2), "engine": "deployment"},
    )
    write_status(run_dir, "completed", f"report {run_dir / 'report.json'}", context.run_id)
    print(f"fedcredit run {settings.run_id}: report {run_dir / 'report.json'}", flush=True)
    return run_dir


STATUS_FILE = "status.json"


def write_status(run_dir: Path, status: str, detail: str, flower_run: int) -> None:
    """The run's outcome as the coordinator's operator reads it (``fedcredit run status``)."""
    checkpoint = run_dir / "checkpoint" / CHECKPOINT_FILE
    completed = (
        json.loads(checkpoint.read_text(encoding="utf-8"))["completed_round"] if checkpoint.is_file() else 0
    )
    document = {
        "status": status,
        "detail": detail,
        "last_completed_round": completed,
        "flwr_run": str(flower_run),
    }
    write_files([(run_dir / STATUS_FILE, json.dumps(document, indent=1).encode(), 0o644)])


def read_status(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / STATUS_FILE
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None
