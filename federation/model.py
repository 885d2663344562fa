"""The four-dimension credit-risk model.

One tower per non-empty dimension maps that dimension's features to a single
number; the fusion head adds them (each tower's last layer carries its own
intercept, so no separate bias is needed, which also keeps the model
DP-SGD-ready). Every logit splits exactly:
``logit = baseline + sum(contributions)``, one contribution per dimension.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from federation.errors import FedCreditError
from federation.hyperparameters import ModelConfig
from federation.loading import EncodedData, FeatureLayout
from federation.model_card import ModelCard
from federation.normalization import NormStats
from federation.schema import Dimension

# 2: one file with the weights, layout, config, the model card (JSON text) and content_sha256
MODEL_FORMAT_VERSION = 2
_ZIP_MAGIC = b"PK\x03\x04"
_PAYLOAD_KEYS = frozenset({"format_version", "layout", "config", "state_dict", "card", "content_sha256"})


class DimensionTower(nn.Module):
    """Features of one dimension -> one logit contribution."""

    numeric_idx: torch.Tensor
    imputed_idx: torch.Tensor
    cat_idx: torch.Tensor

    def __init__(
        self,
        numeric_idx: list[int],
        imputed_idx: list[int],
        cat_idx: list[int],
        cards: list[int],
        config: ModelConfig,
    ) -> None:
        super().__init__()
        self.register_buffer("numeric_idx", torch.tensor(numeric_idx, dtype=torch.long))
        self.register_buffer("imputed_idx", torch.tensor(imputed_idx, dtype=torch.long))
        self.register_buffer("cat_idx", torch.tensor(cat_idx, dtype=torch.long))
        self.embeddings = nn.ModuleList(nn.Embedding(c, config.embedding_dim) for c in cards)
        width = len(numeric_idx) + len(imputed_idx) + config.embedding_dim * len(cards)
        self.mlp = nn.Sequential(
            nn.Linear(width, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, config.hidden),
            nn.ReLU(),
            nn.Linear(config.hidden, 1),
        )

    def forward(self, z: torch.Tensor, missing: torch.Tensor, cat: torch.Tensor) -> torch.Tensor:
        parts = [z[:, self.numeric_idx], missing[:, self.imputed_idx]]
        parts += [emb(cat[:, j]) for j, emb in zip(self.cat_idx.tolist(), self.embeddings, strict=True)]
        out: torch.Tensor = self.mlp(torch.cat(parts, dim=1)).squeeze(1)
        return out


class FourDimensionModel(nn.Module):
    """Additive fusion of per-dimension towers over normalized inputs."""

    mean: torch.Tensor
    std: torch.Tensor
    reference: torch.Tensor

    def __init__(self, layout: FeatureLayout, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.layout = layout
        self.config = config or ModelConfig()
        k = len(layout.numeric)
        self.register_buffer("mean", torch.zeros(k))
        self.register_buffer("std", torch.ones(k))
        self.dimensions: tuple[Dimension, ...] = layout.dimensions
        self.towers = nn.ModuleDict()
        for dim in self.dimensions:
            num = [i for i, d in enumerate(layout.numeric_dimensions) if d is dim]
            imputed = [i for i in num if layout.numeric_imputed[i]]
            cat = [i for i, d in enumerate(layout.categorical_dimensions) if d is dim]
            cards = [layout.cardinalities[i] for i in cat]
            self.towers[dim.value] = DimensionTower(num, imputed, cat, cards, self.config)
        # Mean raw tower output over the federation's rows: contributions are reported
        # relative to it, so a positive one means "riskier than the average borrower".
        self.register_buffer("reference", torch.zeros(len(self.dimensions)))

    def set_normalization(self, stats: NormStats) -> None:
        if stats.mean.shape != (len(self.layout.numeric),):
            raise ValueError(
                f"normalization has {stats.mean.shape[0]} columns, model expects {len(self.layout.numeric)}"
            )
        self.mean.copy_(torch.as_tensor(stats.mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(stats.std, dtype=torch.float32))

    def raw_contributions(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """Per-dimension tower outputs, shape (rows, dimensions)."""
        missing = torch.isnan(numeric)
        z = torch.where(missing, torch.zeros_like(numeric), (numeric - self.mean) / self.std)
        missing_f = missing.to(z.dtype)
        outs = []
        for dim in self.dimensions:
            outs.append(self.towers[dim.value](z, missing_f, categorical))
        return torch.stack(outs, dim=1)

    def contributions(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """Per-dimension logit contributions relative to the average borrower.

        ``contributions(x).sum(1) + baseline() == forward(x)`` exactly.
        """
        return self.raw_contributions(numeric, categorical) - self.reference

    def baseline(self) -> torch.Tensor:
        """The logit of a borrower whose every dimension is at the federation's average."""
        return self.reference.sum()

    def set_reference(self, reference: np.ndarray) -> None:
        if reference.shape != (len(self.dimensions),):
            raise ValueError(f"reference has shape {reference.shape}, expected ({len(self.dimensions)},)")
        self.reference.copy_(torch.as_tensor(reference, dtype=torch.float32))

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        return self.raw_contributions(numeric, categorical).sum(dim=1)


def tensors(data: EncodedData) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(data.numeric), torch.from_numpy(data.categorical)


def trainable_weights(model: nn.Module) -> list[np.ndarray]:
    """The parameters exchanged in federated rounds (buffers stay local)."""
    return [p.detach().cpu().numpy().copy() for p in model.parameters()]


def load_trainable_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    params = list(model.parameters())
    if len(params) != len(weights):
        raise ValueError(f"expected {len(params)} weight arrays, got {len(weights)}")
    with torch.no_grad():
        for p, w in zip(params, weights, strict=True):
            if p.shape != w.shape:
                raise ValueError(f"weight shape {tuple(w.shape)} does not match parameter {tuple(p.shape)}")
            p.copy_(torch.as_tensor(w))


# ---------------------------------------------------------------------------------------------
# The model file: one torch zip archive, loadable with ``torch.load(weights_only=True)`` (only
# tensors, dicts, lists, strings, numbers, booleans and None), holding the weights, the layout,
# the config, the model card (as JSON text) and ``content_sha256``, a digest of all of them.


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return bytes(flat.view(torch.uint8).numpy().tobytes())


def content_sha256(
    card_json: str,
    layout: dict[str, Any],
    config: dict[str, Any],
    state: Mapping[str, torch.Tensor],
    format_version: int = MODEL_FORMAT_VERSION,
) -> str:
    """sha256 over a canonical serialization of everything a model file holds.

    Each part is length-prefixed: the format version, the card's JSON text, the layout and the
    config as canonical JSON, then every tensor by name in sorted order: its name, dtype, shape
    and raw (little-endian, C-order) bytes.
    """
    digest = hashlib.sha256()

    def put(part: bytes) -> None:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)

    put(b"fedcredit-model-content")
    put(str(format_version).encode())
    put(card_json.encode("utf-8"))
    put(_canonical_json(layout))
    put(_canonical_json(config))
    put(str(len(state)).encode())
    for name in sorted(state):
        tensor = state[name]
        put(name.encode("utf-8"))
        put(str(tensor.dtype).encode())
        put(_canonical_json(list(tensor.shape)))
        put(_tensor_bytes(tensor))
    return digest.hexdigest()


def _config_dict(config: ModelConfig) -> dict[str, int]:
    return {"hidden": config.hidden, "embedding_dim": config.embedding_dim}


def save_model(model: FourDimensionModel, path: str | Path, card: ModelCard) -> str:
    """Write the model, its layout, config and card to one file, atomically; returns its sha256."""
    if not isinstance(card, ModelCard):
        raise TypeError(f"card must be a ModelCard, got {type(card).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = OrderedDict((name, t.detach().cpu()) for name, t in model.state_dict().items())
    layout, config, card_json = model.layout.to_dict(), _config_dict(model.config), card.to_json()
    payload = {
        "format_version": MODEL_FORMAT_VERSION,
        "layout": layout,
        "config": config,
        "state_dict": state,
        "card": card_json,
        "content_sha256": content_sha256(card_json, layout, config, state),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return hashlib.sha256(data).hexdigest()


def _read_model_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise FedCreditError(f"{path}: is a folder, not a model file")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FedCreditError(f"{path}: no such model file") from None
    except OSError as exc:
        raise FedCreditError(f"{path}: cannot read the model file ({exc.strerror or exc})") from None


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (hex), as the audit log and the report record a model file."""
    return hashlib.sha256(_read_model_bytes(Path(path))).hexdigest()


def _unpickle(path: Path, data: bytes) -> Any:
    """The payload, loaded weights-only from ``data``; nothing else is ever unpickled."""
    if not data:
        raise FedCreditError(f"{path}: empty file, not a FedCredit model file")
    if not data.startswith(_ZIP_MAGIC):  # a model file is a torch zip archive; no legacy pickles
        raise FedCreditError(f"{path}: not a FedCredit model file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise FedCreditError(f"{path}: not a FedCredit model file (UnpicklingError)") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise FedCreditError(
            f"{path}: holds Python objects{what} that only an unrestricted load would open; "
            "refused, never unpickled: not a FedCredit model file"
        ) from None
    except Exception as exc:  # torch raises many unrelated types for a damaged archive
        raise FedCreditError(f"{path}: not a FedCredit model file ({type(exc).__name__})") from None


def _check_payload(path: Path, payload: Any) -> None:
    """The payload's format version, keys and types, or one line naming what is wrong."""
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise FedCreditError(f"{path}: not a FedCredit model file")
    version = payload["format_version"]
    if not isinstance(version, int) or isinstance(version, bool):
        raise FedCreditError(f"{path}: not a FedCredit model file (format version {version!r})")
    if version < MODEL_FORMAT_VERSION:
        raise FedCreditError(
            f"{path}: made by an older FedCredit (model format {version}, this one reads "
            f"{MODEL_FORMAT_VERSION}); retrain"
        )
    if version > MODEL_FORMAT_VERSION:
        raise FedCreditError(
            f"{path}: made by a newer FedCredit (model format {version}, this one reads "
            f"{MODEL_FORMAT_VERSION}); upgrade FedCredit"
        )
    missing = sorted(_PAYLOAD_KEYS - set(payload))
    unknown = sorted(str(k) for k in set(payload) - _PAYLOAD_KEYS)
    if missing or unknown:
        said = [f"missing {', '.join(missing)}"] if missing else []
        said += [f"unknown {', '.join(unknown)}"] if unknown else []
        raise FedCreditError(f"{path}: malformed model file: {'; '.join(said)}")
    if not isinstance(payload["layout"], dict):
        raise FedCreditError(f"{path}: malformed model file: the layout is not a mapping")
    config = payload["config"]
    if (
        not isinstance(config, dict)
        or set(config) != {"hidden", "embedding_dim"}
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in config.values())
    ):
        raise FedCreditError(f"{path}: malformed model file: config {config!r} is not hidden/embedding_dim")
    state = payload["state_dict"]
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) and v.layout == torch.strided
        for k, v in state.items()
    ):
        raise FedCreditError(f"{path}: malformed model file: the weights are not named dense tensors")
    if not isinstance(payload["content_sha256"], str):
        raise FedCreditError(f"{path}: malformed model file: content_sha256 is not text")


def load_model(path: str | Path, expected_sha256: str | None = None) -> tuple[FourDimensionModel, ModelCard]:
    """Load a model file and its card; every failure is one ``FedCreditError`` line naming the file.

    With ``expected_sha256`` (the sha256 the audit log or report registered) the file's bytes
    must have that digest; the bytes checked are the bytes loaded. The file's recorded content
    digest is always recomputed, so a file edited in place is refused. Loading is weights-only:
    a file holding arbitrary Python objects is refused and never unpickled.
    """
    path = Path(path)
    data = _read_model_bytes(path)
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        expected = expected_sha256.strip().lower()
        if actual != expected:
            raise FedCreditError(
                f"{path}: sha256 is {actual}, expected {expected}; not the registered model file"
            )
    payload = _unpickle(path, data)
    _check_payload(path, payload)
    try:
        actual_content = content_sha256(
            payload["card"], payload["layout"], payload["config"], payload["state_dict"]
        )
    except FedCreditError:
        raise
    except Exception as exc:  # a layout or card that does not serialize canonically
        raise FedCreditError(
            f"{path}: malformed model file ({type(exc).__name__}: {_one_line(str(exc))})"
        ) from None
    if actual_content != payload["content_sha256"]:
        raise FedCreditError(
            f"{path}: content sha256 is {actual_content}, the file records {payload['content_sha256']}: "
            "it was changed after it was saved; refused"
        )
    card = ModelCard.from_json(payload["card"], str(path))
    try:
        layout = FeatureLayout.from_dict(payload["layout"])
        model = FourDimensionModel(layout, ModelConfig(**payload["config"]))
        model.load_state_dict(payload["state_dict"])
    except Exception as exc:
        raise FedCreditError(
            f"{path}: the weights do not fit the model's layout ({type(exc).__name__}: {_one_line(str(exc))})"
        ) from None
    model.eval()
    return model, card
