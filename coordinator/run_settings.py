"""What the coordinator asks of the federation for one run: plain values, checked; no Flower, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from federation.hyperparameters import ModelConfig, TrainConfig
from policies.audit import database_url
from policies.decisions import new_run_id
from policies.demo_keys import DEMO_COORDINATOR_KEY
from policies.documents import STRATEGIES, ClientLevelDP


@dataclass(frozen=True)
class RunSettings:
    """What the coordinator asks of the federation for one run."""

    schema: str
    rounds: int = 12
    strategy: str = "fedavg"
    proximal_mu: float = 0.01
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    seed: int = 0
    min_institutions: int = 2
    test_path: Path | None = None
    evaluate_on_nodes: bool = True  # each node scores the global model on its holdout rows
    approve_below_pd: float = 0.05  # fairness statistics: an applicant is approved below this PD
    run_id: str = field(default_factory=new_run_id)
    purpose: str = "credit_underwriting"
    coordinator_key: Path = DEMO_COORDINATOR_KEY  # signs the training request every node checks
    audit_url: str = field(default_factory=database_url)
    epsilon: float | None = None  # record-level DP target per institution for the whole run; None = off
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    secure_aggregation: bool = True  # SecAgg+: the coordinator sees only the sum of the updates
    secure_aggregation_shares: int | None = None  # None: every institution in the round
    reconstruction_threshold: int | None = None  # None: a majority of the shares
    client_dp: ClientLevelDP | None = None  # client-level DP noise added by the coordinator
    # (institution, Ed25519 public key): the only nodes whose contributions count; a reply
    # is attributed to the institution whose key signed it, never to the name it reports
    members: tuple[tuple[str, str], ...] = ()
    demo_keys: bool = False  # signed with FedCredit's published demo keys: report and audit say DEMO
    federation_policy_sha256: str | None = None  # the signed federation policy the run follows, if any
    federation_id: str = "local"  # the federation policy's id: the model registry files versions under it
    join_timeout_s: float = 600.0  # how long a round waits for min_institutions nodes before the run fails
    checkpoint_dir: Path | None = None  # the global model after every round goes here (None: nowhere)

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.min_institutions < 1:
            raise ValueError(f"min_institutions must be >= 1, got {self.min_institutions}")
        if self.strategy == "fedprox" and self.proximal_mu <= 0:
            raise ValueError(f"fedprox needs proximal_mu > 0, got {self.proximal_mu}")
        if self.epsilon is not None and not 0 < self.epsilon < float("inf"):
            raise ValueError(f"epsilon must be finite and > 0 (or None for no DP), got {self.epsilon}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if not 0 < self.join_timeout_s < float("inf"):
            raise ValueError(f"join_timeout_s must be finite and > 0, got {self.join_timeout_s}")
        if not 0 < self.approve_below_pd < 1:
            raise ValueError(f"approve_below_pd must be in (0, 1), got {self.approve_below_pd}")
