"""The node's SuperExec: each ClientApp task runs in a process forked from one already warm.

Flower's SuperNode (``--isolation subprocess``) starts a new ``flwr-clientapp`` interpreter for
every message: Python, Flower, torch and this project imported again, seconds per message on a
small machine. ``fedcredit node start`` runs the SuperNode with ``--isolation process`` and this
program beside it: Flower's own SuperExec loop (``run_superexec``), with an executor that forks
the task from this process, which has imported all of that once.

It also decides whose code touches the node's data. Flower's loader imports the ClientApp from
the app bundle (FAB) the coordinator submitted, unless the module is already loaded. Here every
module of ``clients``, ``federation`` and ``policies`` is imported from the node's own
installation before any task, so a task runs the code the institution installed and reviewed,
never code a coordinator shipped with the run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
from pathlib import Path
from typing import Any

from federation.flower_pulls import prompt_object_pulls

PACKAGES = ("clients", "federation", "policies")
POLL_INTERVAL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"  # Flower's SuperExec: how often it asks for tasks
POLL_INTERVAL_S = "0.05"


def preload() -> list[str]:
    """Import every module of the node's own packages (and torch); their names."""
    import torch

    torch.set_num_threads(1)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its first use imports torch._dynamo: seconds
    loaded = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, f"{package_name}."):
            if ".migrations" in info.name:  # Alembic runs those scripts itself, from this installation
                continue
            importlib.import_module(info.name)
            loaded.append(info.name)
    return loaded


class ForkExecutor:
    """Flower's executor interface (``flwr.supercore.superexec.executor.types.Executor``), by fork."""

    def __init__(self) -> None:
        self.children: set[int] = set()

    def get_eligible_capacity(
        self,
        supported_task_types: set[Any],
        *,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> tuple[set[Any], set[str]]:
        return supported_task_types, set()

    def wait_for_capacity(self, *_: Any, **__: Any) -> None:
        return None

    def launch(self, spec: Any) -> Any:
        from flwr.supercore.superexec.executor import LaunchResult
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        self.reconcile()
        certificates = Path(spec.root_certificates_path).read_bytes() if spec.root_certificates_path else None
        pid = os.fork()
        if pid == 0:  # the task: run it, then leave without running the parent's exit handlers
            code = 1
            try:
                run_clientapp(
                    runtime_api_address=spec.runtime_api_address,
                    token=spec.token,
                    insecure=spec.insecure,
                    certificates=certificates,
                    parent_pid=spec.parent_pid,
                    runtime_dependency_install=False,
                )
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            finally:
                os._exit(code)
        self.children.add(pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap the tasks that have ended."""
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                done, _ = os.waitpid(pid, os.WNOHANG)
                if not done:
                    continue
            self.children.discard(pid)

    def close(self) -> None:
        self.reconcile()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's runtime API, HOST:PORT")
    parser.add_argument("--parent-pid", type=int, help="stop when this process (the SuperNode) ends")
    parser.add_argument("--data-path", help="the node's data folder, read once here for every task")
    parser.add_argument("--schema", default="sme", help="its schema (a name or a TOML file)")
    parser.add_argument("--institution", default="", help="the institution's name")
    args = parser.parse_args(argv)
    os.environ.setdefault(POLL_INTERVAL_ENV, POLL_INTERVAL_S)
    preload()
    prompt_object_pulls()
    if args.data_path:  # cached per process (clients.node_data): each forked task finds it read
        from clients.node_data import load_node_data

        load_node_data(args.data_path, args.schema, args.institution)
    from flwr.supercore.superexec import run_superexec as superexec

    executor = ForkExecutor()
    superexec.get_executor = lambda *_, **__: executor  # type: ignore[attr-defined]  # no custom executor in Flower
    superexec.run_superexec(
        runtime_api_address=args.runtime_api_address,
        insecure=True,  # the runtime API listens on the node's loopback only
        parent_pid=args.parent_pid,
        runtime_dependency_install=False,
    )


if __name__ == "__main__":
    main()
