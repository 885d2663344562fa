"""What a node holds: its institution's data, read once per process from its data path."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from federation.datasets.partition import HOLDOUT_FILE, TRAIN_FILE
from federation.errors import DataProblem, DataValidationError
from federation.fairness import group_index, protected_attributes
from federation.loading import EncodedData, encode_frame, load_dataset, read_table
from federation.schema import Schema, resolve_schema

# A simulation worker serves every virtual node in turn, so a per-node cache smaller than the
# federation misses on every message. A node's entries (its encoded rows, ~0.1 MiB at 300 rows;
# its audit engine with its compiled statements; its policy and key) cost less than reloading.
CACHED_NODES = 4096


@dataclass(frozen=True)
class NodeData:
    institution: str
    schema: Schema
    train: EncodedData
    holdout: EncodedData | None
    # each holdout row's group per protected column (federation.fairness.group_index): protected
    # columns are never model inputs, so only the groups are kept, for the fairness statistics
    holdout_groups: np.ndarray | None = None


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
    train = load_dataset(path / TRAIN_FILE, schema)
    if not holdout.is_file():
        return NodeData(institution=institution, schema=schema, train=train, holdout=None)
    frame = read_table(holdout, schema)  # read once: the encoded rows and their protected groups
    return NodeData(
        institution=institution,
        schema=schema,
        train=train,
        holdout=encode_frame(frame, schema, str(holdout), min_rows=1),
        holdout_groups=group_index(frame, protected_attributes(schema)),
    )
