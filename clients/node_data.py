"""What a node holds: its institution's data, read once per process from its data path."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from federation.datasets.partition import HOLDOUT_FILE, TRAIN_FILE
from federation.errors import DataProblem, DataValidationError
from federation.loading import EncodedData, load_dataset
from federation.schema import Schema, resolve_schema

# A simulation runs many virtual nodes in one process: per-node caches hold all of them.
CACHED_NODES = 64


@dataclass(frozen=True)
class NodeData:
    institution: str
    schema: Schema
    train: EncodedData
    holdout: EncodedData | None


def load_node_data(data_path: str | Path, schema: str, institution: str = "") -> NodeData:
    """Read ``data_path/train.csv`` (and ``holdout.csv`` when present), cached per process.

    The cache key includes the files' modification times, so new data is picked up.
    """
    folder = Path(data_path)
    train = folder / TRAIN_FILE
    if not train.is_file():
        raise DataValidationError(str(folder), [DataProblem("", f"no {TRAIN_FILE} in the node's data path")])
    holdout = folder / HOLDOUT_FILE
    stamp = (train.stat().st_mtime_ns, holdout.stat().st_mtime_ns if holdout.is_file() else 0)
    return _load(str(folder.resolve()), schema, institution or folder.name, stamp)


@lru_cache(maxsize=CACHED_NODES)
def _load(folder: str, schema_ref: str, institution: str, _stamp: tuple[int, int]) -> NodeData:
    schema = resolve_schema(schema_ref)
    path = Path(folder)
    holdout = path / HOLDOUT_FILE
    return NodeData(
        institution=institution,
        schema=schema,
        train=load_dataset(path / TRAIN_FILE, schema),
        holdout=load_dataset(holdout, schema, min_rows=1) if holdout.is_file() else None,
    )
