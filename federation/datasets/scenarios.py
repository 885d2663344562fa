"""Lay out a simulated federation on disk: one folder per institution plus a test set."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from federation.datasets.partition import (
    TRAIN_FILE,
    assign_institutions,
    dirichlet_label_assignment,
    institution_profiles,
    write_institution,
    write_partition,
)
from federation.datasets.synthetic import LABEL_COLUMN, generate_sme
from federation.errors import FedCreditError
from federation.schema import resolve_schema
from federation.seeding import rng_for

DATA_DIR_ENV = "FEDCREDIT_DATA_DIR"
UCI_HOMO_BANKS = ("guest", "host_1", "host_2")
TEST_FILE = "test.csv"


@dataclass(frozen=True)
class Federation:
    schema: str
    institutions: dict[str, Path]  # name -> data folder
    test_path: Path | None  # the coordinator's labelled test set, if it has one


def fate_data_dir(explicit: str | Path | None = None) -> Path:
    """Folder with the FATE credit files: ``explicit``, else ``$FEDCREDIT_DATA_DIR``."""
    value = explicit or os.environ.get(DATA_DIR_ENV)
    if not value:
        raise FileNotFoundError(f"no UCI data folder: pass --data-dir or set {DATA_DIR_ENV}")
    path = Path(value)
    if not (path / "default_credit_homo_test.csv").is_file():
        raise FileNotFoundError(
            f"{path}: no default_credit_homo_test.csv here; is this the FATE data folder?"
        )
    return path


def sme_federation(
    out_dir: Path,
    institutions: int,
    rows: int,
    seed: int = 0,
    test_rows: int = 20_000,
    holdout_fraction: float = 0.25,
    label_skew_alpha: float | None = None,
) -> Federation:
    """Synthetic SME borrowers split into realistic institutions (or by Dirichlet label skew)."""
    frame = generate_sme(rows, seed=seed)
    names = [p.name for p in institution_profiles(institutions)]
    if label_skew_alpha is None:
        assignment = assign_institutions(frame, institutions, seed=seed + 1)
    else:
        assignment = dirichlet_label_assignment(
            frame[LABEL_COLUMN].to_numpy(), institutions, label_skew_alpha, seed + 1
        )
    folders = write_partition(frame, assignment, names, out_dir / "institutions", holdout_fraction, seed)
    test_path = out_dir / TEST_FILE
    generate_sme(test_rows, seed=seed + 10_000).to_csv(test_path, index=False)
    return Federation("sme", folders, test_path)


def uci_federation(
    out_dir: Path,
    institutions: int = 3,
    data_dir: str | Path | None = None,
    seed: int = 0,
    holdout_fraction: float = 0.2,
    sizes: Sequence[float] | None = None,
) -> Federation:
    """The FATE homo split of the UCI Taiwan data: three banks (or the same rows re-split,
    evenly or, with ``sizes``, in those proportions)."""
    source = fate_data_dir(data_dir)
    banks = [pd.read_csv(source / f"default_credit_homo_{b}.csv") for b in UCI_HOMO_BANKS]
    root = out_dir / "institutions"
    if sizes is not None:
        shares = np.asarray(sizes, dtype=np.float64)
        if len(shares) < 2 or (shares <= 0).any():
            raise ValueError(f"sizes must be at least two positive proportions, got {list(sizes)}")
        pooled = pd.concat(banks, ignore_index=True)
        assignment = rng_for(seed, "uci-resplit").choice(
            len(shares), size=len(pooled), p=shares / shares.sum()
        )
        names = [f"bank_{k + 1}" for k in range(len(shares))]
        folders = write_partition(pooled, assignment, names, root, holdout_fraction, seed)
    elif institutions == len(UCI_HOMO_BANKS):
        folders = {
            f"bank_{b}": write_institution(frame, root / f"bank_{b}", holdout_fraction, seed + k)
            for k, (b, frame) in enumerate(zip(UCI_HOMO_BANKS, banks, strict=True))
        }
    else:
        if institutions < 2:
            raise ValueError(f"institutions must be >= 2, got {institutions}")
        pooled = pd.concat(banks, ignore_index=True)
        assignment = rng_for(seed, "uci-resplit").integers(0, institutions, len(pooled))
        names = [f"bank_{k + 1}" for k in range(institutions)]
        folders = write_partition(pooled, assignment, names, root, holdout_fraction, seed)
    return Federation("uci_homo", folders, source / "default_credit_homo_test.csv")


NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def own_federation(folders: dict[str, Path], schema: str, test: Path | None = None) -> Federation:
    """A federation on folders the user names: each must hold ``train.csv`` (``holdout.csv`` optional).

    Checks what can be checked before any node starts: names, folders, files, the schema."""
    resolved = resolve_schema(schema)  # a bad schema is one error here, not one per node
    if len(folders) < 2:
        raise FedCreditError(f"{len(folders)} institution(s): a federation needs at least 2 (--institution)")
    seen: dict[Path, str] = {}
    for name, folder in folders.items():
        if not NAME_PATTERN.fullmatch(name):
            raise FedCreditError(
                f"--institution {name!r}: a name is 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
            )
        if not folder.exists():
            raise FedCreditError(f"--institution {name}={folder}: no such folder")
        if not folder.is_dir():
            raise FedCreditError(
                f"--institution {name}={folder}: is a file; give the folder that holds {TRAIN_FILE}"
            )
        if not (folder / TRAIN_FILE).is_file():
            raise FedCreditError(f"--institution {name}={folder}: no {TRAIN_FILE} in this folder")
        real = folder.resolve()
        if real in seen:
            raise FedCreditError(f"--institution {name}={folder}: the same folder as {seen[real]}")
        seen[real] = name
    if test is not None:
        if test.is_dir():
            raise FedCreditError(f"--test {test}: is a folder; give a labelled CSV or Parquet file")
        if not test.is_file():
            raise FedCreditError(f"--test {test}: no such file")
    from_file = Path(schema).suffix == ".toml" or Path(schema).exists()
    ref = str(Path(schema).resolve()) if from_file else resolved.name
    return Federation(ref, {n: f.resolve() for n, f in folders.items()}, test.resolve() if test else None)
