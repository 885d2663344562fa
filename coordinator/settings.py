"""The coordinator's settings: one object, read from the environment (``FEDCREDIT_*``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from policies.settings import FedCreditSettings


class CoordinatorSettings(FedCreditSettings):
    """Adds where runs and Flower's state go, and how often the coordinator polls for replies."""

    poll_seconds: float = Field(default=0.01, gt=0, le=10)  # FEDCREDIT_POLL_SECONDS

    @property
    def runs_dir(self) -> Path:
        return self.var_dir / "runs"

    @property
    def flwr_home(self) -> Path:
        return self.var_dir / "flwr"


def coordinator_settings() -> CoordinatorSettings:
    """Read now: a command and a test see the environment as it is when they run."""
    return CoordinatorSettings()
