"""The model's shape and one local training pass's settings: plain values, no torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    hidden: int = 32
    embedding_dim: int = 4


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one local training pass."""

    epochs: int = 1
    batch_size: int = 256
    learning_rate: float = 3e-3
    weight_decay: float = 1e-5
    proximal_mu: float = 0.0  # FedProx: > 0 pulls local weights towards the global ones

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.proximal_mu < 0:
            raise ValueError(f"proximal_mu must be >= 0, got {self.proximal_mu}")
