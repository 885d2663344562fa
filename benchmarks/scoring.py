"""Scoring throughput: applicants per second, in process, the way `fedcredit score --out` scores them.

    python benchmarks/scoring.py [--rows 200000] [--json FILE]

Reads an SME applicants file (generated, without labels), validates it against
the schema, scores every row in batches and writes the scores to CSV, timing
each step. The model has the SME layout with its initial weights: scoring
costs the same whatever the weights.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from federation.datasets.synthetic import generate_sme
from federation.loading import load_dataset, write_table
from federation.model import FourDimensionModel
from federation.normalization import local_moments, stats_from_moments
from federation.schema import resolve_schema
from federation.scoring import score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    schema = resolve_schema("sme")
    with tempfile.TemporaryDirectory() as tmp:
        applicants = Path(tmp) / "applicants.csv"
        generate_sme(args.rows, seed=0).drop(columns=["true_pd", "default_12m"]).to_csv(
            applicants, index=False
        )
        started = time.perf_counter()
        data = load_dataset(applicants, schema, require_label=False)
        validated = time.perf_counter()
        model = FourDimensionModel(data.layout)
        model.set_normalization(stats_from_moments(local_moments(data.numeric)))
        scored_at = time.perf_counter()
        result = score(model, data)
        scored = time.perf_counter()
        write_table(result.frame(), Path(tmp) / "scores.csv")
        written = time.perf_counter()
    figures = {
        "rows": args.rows,
        "read_and_validate_seconds": round(validated - started, 3),
        "score_seconds": round(scored - scored_at, 3),
        "write_csv_seconds": round(written - scored, 3),
        "score_applicants_per_second": round(args.rows / (scored - scored_at)),
        "end_to_end_applicants_per_second": round(args.rows / (written - started - (scored_at - validated))),
    }
    for key, value in figures.items():
        print(f"{key:34s} {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
