"""`fedcredit score` and `data generate`: every score written whole, nothing overwritten unasked."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from coordinator.cli import app
from coordinator.score_cli import SHOWN_APPLICANTS
from federation.datasets.synthetic import generate_sme
from federation.loading import load_dataset
from federation.model import save_model
from federation.schema import Schema

from ..federation.model_helpers import card_for_tests
from ..federation.test_scoring import untrained_model

runner = CliRunner()


@pytest.fixture
def model_and_applicants(tmp_path: Path, sme_schema: Schema) -> tuple[Path, Path]:
    applicants = tmp_path / "applicants.csv"
    generate_sme(400, seed=5).drop(columns=["true_pd", "default_12m"]).to_csv(applicants, index=False)
    model = tmp_path / "model.pt"
    save_model(
        untrained_model(load_dataset(applicants, sme_schema, require_label=False)), model, card_for_tests()
    )
    return model, applicants


def _score(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["score", *args])
    return result.exit_code, " ".join(result.output.split())


def test_many_applicants_are_summarised_and_written_whole(
    model_and_applicants: tuple[Path, Path], tmp_path: Path
) -> None:
    model, applicants = model_and_applicants
    code, out = _score(str(applicants), "--model", str(model))
    assert (
        code == 0
        and out.startswith("scored 400 applicants")
        and "every score with --out FILE or --json" in out
    )
    assert out.count("applicant ") == 0 and SHOWN_APPLICANTS < 400
    target = tmp_path / "scores.csv"
    assert _score(str(applicants), "--model", str(model), "--out", str(target)) == (
        0,
        f"wrote 400 scores to {target}",
    )
    scores = pd.read_csv(target)
    assert len(scores) == 400 and {"id", "probability_of_default", "points", "contribution_credit"} <= set(
        scores
    )
    # never over an existing file unless asked; nothing half-written either way
    code, out = _score(str(applicants), "--model", str(model), "--out", str(target))
    assert code == 2 and "exists; pass --force to replace it" in out
    assert _score(str(applicants), "--model", str(model), "--out", str(target), "--force")[0] == 0
    assert len(pd.read_csv(target)) == 400 and [p.name for p in tmp_path.glob(".*tmp")] == []
    parquet = tmp_path / "scores.parquet"
    assert _score(str(applicants), "--model", str(model), "--out", str(parquet))[0] == 0
    assert len(pd.read_parquet(parquet)) == 400
    code, out = _score(str(applicants), "--model", str(model), "--out", str(tmp_path))
    assert code == 2 and "is a folder" in out


def test_json_holds_every_applicant(model_and_applicants: tuple[Path, Path]) -> None:
    model, applicants = model_and_applicants
    result = runner.invoke(app, ["score", str(applicants), "--model", str(model), "--json"])
    assert result.exit_code == 0
    scores = json.loads(result.stdout)["scores"]
    assert len(scores) == 400
    assert sum(scores[0]["contributions"].values()) + scores[0]["baseline"] == pytest.approx(
        scores[0]["logit"]
    )


def test_data_generate_does_not_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "sme.csv"
    assert runner.invoke(app, ["data", "generate", str(out), "--rows", "200"]).exit_code == 0
    before = out.read_bytes()
    again = runner.invoke(app, ["data", "generate", str(out), "--rows", "300", "--seed", "1"])
    assert again.exit_code == 2 and "exists; pass --force" in again.output and out.read_bytes() == before
    assert runner.invoke(app, ["data", "generate", str(out), "--rows", "300", "--force"]).exit_code == 0
    assert len(pd.read_csv(out)) == 300


def test_schema_show_writes_ranges_in_words() -> None:
    from federation.cli import value_range

    assert [
        value_range(0.0, 1e6),
        value_range(-1.0, 10.0),
        value_range(0.0, None),
        value_range(None, 0.5),
    ] == [
        "0 to 1,000,000",
        "-1 to 10",
        "at least 0",
        "at most 0.5",
    ]
    result = runner.invoke(app, ["schema", "show", "sme"])
    assert result.exit_code == 0 and "None" not in result.output and "[0.0" not in result.output


def test_data_partition_does_not_write_into_a_folder_in_use(tmp_path: Path) -> None:
    data = tmp_path / "sme.csv"
    assert runner.invoke(app, ["data", "generate", str(data), "--rows", "3000"]).exit_code == 0
    out = tmp_path / "institutions"
    out.mkdir()
    (out / "notes.txt").write_text("the bank's own notes")
    refused = runner.invoke(app, ["data", "partition", str(data), str(out)])
    assert refused.exit_code == 2 and "is not empty; pass --force" in refused.output
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert runner.invoke(app, ["data", "partition", str(data), str(out), "--force"]).exit_code == 0
    assert (out / "notes.txt").read_text() == "the bank's own notes" and len(list(out.iterdir())) > 1
    on_a_file = runner.invoke(app, ["data", "partition", str(data), str(data)])
    assert on_a_file.exit_code == 2 and "is a file; give a folder" in on_a_file.output


def test_argument_help_is_shown() -> None:
    result = runner.invoke(app, ["score", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0
    assert "CSV or Parquet file of applicants" in result.output
    result = runner.invoke(app, ["data", "validate", "--help"], env={"COLUMNS": "120"})
    assert "CSV or Parquet file." in result.output
    result = runner.invoke(app, ["simulate", "--help"], env={"COLUMNS": "200"})
    assert "Aggregation strategy [default: fedavg, or the federation policy's]" in result.output
