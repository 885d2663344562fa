"""End to end: `fedcredit simulate` on Flower's simulation engine, then `fedcredit score`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from coordinator.cli import app
from coordinator.client_dp import client_level_epsilon
from coordinator.score_cli import EXAMPLE_APPLICANT
from federation.loading import load_dataset
from federation.normalization import combine_moments, local_moments, stats_from_moments
from federation.schema import resolve_schema
from policies.demo_keys import DEMO_KEYS, EXAMPLES
from policies.documents import ClientLevelDP
from policies.signing import generate_keypair, read_public_keys, sign_policy

EXAMPLE = EXAMPLE_APPLICANT
CONSORTIUM = EXAMPLES / "sme_consortium.toml"
runner = CliRunner()


def federation_policy(folder: Path, privacy: str, rounds: int, secure_aggregation: bool = True) -> list[str]:
    """The demo consortium's policy with ``rounds`` and ``privacy`` settings, signed by a fresh key;
    its members are the demo institutions (demo keys: the run needs --allow-demo-keys)."""
    folder.mkdir(parents=True, exist_ok=True)
    policy = folder / "federation.toml"
    text = CONSORTIUM.read_text().replace("delta = 1e-5\n", f"delta = 1e-5\n{privacy}\n")
    text = text.replace("\nrounds = 10\n", f"\nrounds = {rounds}\n")
    if not secure_aggregation:
        text = text.replace("secure_aggregation = true", "secure_aggregation = false")
    policy.write_text(text)
    key, pub = generate_keypair(folder, "consortium")
    sign_policy(policy, key)
    return ["--federation-policy", str(policy), "--trust", str(pub), "--allow-demo-keys"]


SIMULATE = [
    *("simulate", "--dataset", "sme", "--institutions", "5"),
    *("--rounds", "3", "--rows", "12000", "--seed", "1"),
]


def _simulate_in(workdir: Path, args: list[str] | None = None) -> tuple[Path, str]:
    """Run ``simulate`` in ``workdir``, the coordinator's audit log in ``workdir/var`` too."""
    old, old_var = Path.cwd(), os.environ.get("FEDCREDIT_VAR_DIR")
    os.chdir(workdir)
    os.environ["FEDCREDIT_VAR_DIR"] = str(workdir / "var")
    try:
        result = runner.invoke(app, ["simulate", *args] if args else SIMULATE)
    finally:
        os.chdir(old)
        if old_var is None:
            del os.environ["FEDCREDIT_VAR_DIR"]
        else:
            os.environ["FEDCREDIT_VAR_DIR"] = old_var
    assert result.exit_code == 0, result.output
    (run_dir,) = list((workdir / "var" / "runs").iterdir())
    return run_dir, result.output


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """Five institutions under a federation policy with 3 SecAgg+ shares, threshold 2; one refuses
    after the key exchange, i.e. drops out mid-round."""
    workdir = tmp_path_factory.mktemp("fedcredit")
    policy = federation_policy(
        workdir / "policy", "secure_aggregation_shares = 3\nreconstruction_threshold = 2", rounds=3
    )
    return _simulate_in(workdir, [*SIMULATE[1:], *policy])


def test_report_has_rounds_institutions_and_files(run: tuple[Path, str]) -> None:
    run_dir, output = run
    assert "test set: AUC" in output
    report = json.loads((run_dir / "report.json").read_text())
    assert [r["round"] for r in report["rounds"]] == [1, 2, 3]
    settings = report["settings"]
    assert settings["secure_aggregation"] is True and settings["client_dp"] is None
    assert (settings["secure_aggregation_shares"], settings["reconstruction_threshold"]) == (3, 2)
    words = " ".join(output.split())
    assert (
        "federation policy federation.sme-consortium v1: fedavg, 3 rounds, at least 3 institutions" in words
    )
    # the demo institutions' example policies and the demo coordinator key: a DEMO run, plainly
    assert report["demo"].startswith("DEMO run") and settings["demo_keys"] is True
    assert "DEMO run: signed with FedCredit's published demo keys" in words
    assert settings["members"] == [
        "national_bank",
        "online_bank",
        "rural_cooperative",
        "city_bank_east",
        "coastal_credit_union",
    ]
    aucs = [r["auc"] for r in report["rounds"]]
    assert aucs[-1] > aucs[0]
    assert report["final_test_metrics"]["auc"] == pytest.approx(aucs[-1])
    assert report["final_test_metrics"]["auc"] > 0.65
    # the coastal credit union's demo policy allows only risk monitoring: it refuses, the run goes on
    assert set(report["institutions"]) == {
        "national_bank",
        "online_bank",
        "rural_cooperative",
        "city_bank_east",
    }
    for inst in report["institutions"].values():
        assert inst["train_rows"] > 0 and inst["holdout_rows"] > 0
        assert [r["round"] for r in inst["rounds"]] == [1, 2, 3]
        assert "auc" in inst["rounds"][-1] and "train_loss" in inst["rounds"][-1]
    refusals = {f["institution"] for f in report["failures"]}
    assert refusals == {"coastal_credit_union"}
    assert all("forbid.purpose_not_allowed" in f["rules"] for f in report["failures"])


def test_refusal_is_visible_and_audited(run: tuple[Path, str]) -> None:
    run_dir, output = run
    assert "refused by coastal_credit_union (forbid.purpose_not_allowed" in " ".join(output.split())
    workdir = run_dir.parents[2]
    db = f"sqlite:///{workdir / 'var' / 'fedcredit.db'}"
    trust = str(CONSORTIUM.parent / "keys")  # the demo coordinator signed the chain heads
    verify = runner.invoke(app, ["audit", "verify", "--db", db, "--trust", trust])
    assert verify.exit_code == 0, verify.output
    assert "intact" in verify.output
    out = workdir / "audit.jsonl"
    assert runner.invoke(app, ["audit", "export", "--jsonl", str(out), "--db", db]).exit_code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    actions = [e["action"] for e in lines]
    assert actions[0] == "run.start" and "run.end" in actions
    # the run's model is registered, numbered, and (the federation's first) made the active version
    assert actions[-3:] == ["model.register", "model.version", "model.promote"]
    listed = runner.invoke(app, ["models", "list", "--db", db, "--json"])
    registered = json.loads(listed.stdout)["versions"][0]["institutions"]
    # each institution with the digest of the very policy file its node answered under
    assert registered and all(
        inst["policy_sha256"]
        == hashlib.sha256(
            (run_dir / "policies" / inst["name"] / f"{inst['name']}.toml").read_bytes()
        ).hexdigest()
        for inst in registered
    ), registered
    refused = [e for e in lines if e["action"] == "fit.refused"]
    assert refused and all("coastal_credit_union" in e["resource"] for e in refused)
    assert actions.count("round.end") == 3
    node_db = run_dir / "audit" / "node-coastal_credit_union.db"
    node = runner.invoke(app, ["audit", "export", "--jsonl", "-", "--db", f"sqlite:///{node_db}"])
    assert '"decision":"deny"' in node.output and "forbid.purpose_not_allowed" in node.output
    assert (run_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_normalization_was_computed_federatedly_and_exactly(run: tuple[Path, str]) -> None:
    run_dir, _ = run
    schema = resolve_schema("sme")
    report = json.loads((run_dir / "report.json").read_text())
    trained = sorted(report["institutions"])  # the refused institution sent nothing
    parts = [load_dataset(run_dir / "institutions" / name / "train.csv", schema) for name in trained]
    pooled = stats_from_moments(
        combine_moments([local_moments(p.numeric) for p in parts], [len(p) for p in parts])
    )
    direct = np.nanmean(np.concatenate([p.numeric for p in parts]).astype(np.float64), axis=0)
    state = torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]
    # under SecAgg+ the sum is exact up to its quantization (see STATS_CLIPPING_RANGE)
    np.testing.assert_allclose(state["mean"].numpy(), pooled.mean, rtol=1e-4, atol=5e-3)
    np.testing.assert_allclose(state["mean"].numpy(), direct, rtol=1e-4, atol=5e-3)
    np.testing.assert_allclose(state["std"].numpy(), pooled.std, rtol=1e-4, atol=5e-3)


def test_score_the_grocery_couple_with_the_run_model(run: tuple[Path, str]) -> None:
    run_dir, _ = run
    result = runner.invoke(app, ["score", str(EXAMPLE), "--model", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)["scores"]
    assert row["id"] == "grocery-couple"
    assert set(row["contributions"]) == {"operations", "credit", "behaviour", "scenario"}
    assert sum(row["contributions"].values()) + row["baseline"] == pytest.approx(row["logit"], abs=1e-6)
    assert 0 < row["probability_of_default"] < 0.5
    table = runner.invoke(app, ["score", str(EXAMPLE), "--model", str(run_dir / "model.pt")])
    assert "probability of default" in table.output and "credit" in table.output


def test_score_refuses_a_missing_model(tmp_path: Path) -> None:
    result = runner.invoke(app, ["score", str(EXAMPLE), "--model", str(tmp_path / "none.pt")])
    assert result.exit_code == 2
    assert "no model at" in result.output


def test_validate_reports_bad_data(tmp_path: Path) -> None:
    frame = pd.read_csv(EXAMPLE).assign(default_12m=7)
    frame = pd.concat([frame] * 60, ignore_index=True)
    frame["business_id"] = [f"b{i}" for i in range(60)]
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    result = runner.invoke(app, ["data", "validate", str(path), "--schema", "sme"])
    assert result.exit_code == 2
    assert "label must be 0 or 1" in result.output


@pytest.mark.parametrize(
    "command", [[], ["simulate"], ["score"], ["demo"], ["data", "generate"], ["schema", "show"]]
)
def test_help_reads(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_generate_then_partition(tmp_path: Path) -> None:
    data = tmp_path / "sme.csv"
    assert runner.invoke(app, ["data", "generate", str(data), "--rows", "3000", "--seed", "2"]).exit_code == 0
    out = tmp_path / "out"
    result = runner.invoke(app, ["data", "partition", str(data), str(out), "--institutions", "4"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "city_bank_east",
        "national_bank",
        "online_bank",
        "rural_cooperative",
    ]
    bad = tmp_path / "bad.csv"
    pd.read_csv(data).drop(columns=["region"]).to_csv(bad, index=False)
    result = runner.invoke(app, ["data", "partition", str(bad), str(tmp_path / "out2")])
    assert result.exit_code == 2
    assert "column 'region': missing column" in result.output
    assert not (tmp_path / "out2").exists()


# one round without SecAgg+, so both runs are deterministic: the run that repeats is also the
# plain run the client-level DP run is compared with
PLAIN = [
    *("--institutions", "3", "--rows", "6000", "--rounds", "1"),
    *("--no-secure-aggregation", "--seed", "2"),
]


@pytest.fixture(scope="module")
def plain_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same sandbox run twice, under the same seed, each in a folder of its own."""
    first, second = (_simulate_in(tmp_path_factory.mktemp(name), PLAIN)[0] for name in ("a", "b"))
    return first, second


def test_a_whole_run_repeats_exactly_under_the_same_seed(plain_runs: tuple[Path, Path]) -> None:
    """Bit for bit without secure aggregation (Flower's SecAgg+ rounds stochastically,
    so under it a rerun agrees only to within the quantization step)."""
    runs = plain_runs
    first, second = (torch.load(r / "model.pt", weights_only=True)["state_dict"] for r in runs)
    # no federation policy, no --coordinator-key: the operator's own sandbox, no demo key anywhere
    report = json.loads((runs[0] / "report.json").read_text())
    assert report["demo"] is None and report["settings"]["demo_keys"] is False
    assert report["settings"]["members"] == ["national_bank", "online_bank", "rural_cooperative"]
    assert (runs[0].parents[1] / "keys" / "sandbox_coordinator.key").is_file()
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_client_level_dp_noises_the_aggregate_as_the_policy_says(
    plain_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    """One round without SecAgg+ (so both runs are deterministic): client-level DP changes the
    aggregate by clipping, equal weights and noise of std noise_multiplier * clipping_norm / 3."""
    plain_dir = plain_runs[0]
    policy = federation_policy(
        tmp_path / "policy",
        "[privacy.client_dp]\nnoise_multiplier = 1.5\nclipping_norm = 1.0",
        rounds=1,
        secure_aggregation=False,
    )
    (tmp_path / "dp").mkdir()
    dp_dir, output = _simulate_in(tmp_path / "dp", [*PLAIN, *policy])
    client_dp = json.loads((dp_dir / "report.json").read_text())["settings"]["client_dp"]
    assert client_dp["noise_multiplier"] == 1.5 and client_dp["clipping_norm"] == 1.0
    assert client_dp["epsilon"] == pytest.approx(client_level_epsilon(ClientLevelDP(1.5, 1.0), 1, 1e-5))
    assert "client-level DP (noise x1.5)" in output
    plain, noisy = (torch.load(r / "model.pt", weights_only=True)["state_dict"] for r in (plain_dir, dp_dir))
    towers = [k for k in plain if k.startswith("towers.") and plain[k].is_floating_point()]
    diff = torch.cat([(noisy[k] - plain[k]).flatten() for k in towers])
    sigma = 1.5 * 1.0 / 3
    assert 0.8 * sigma < float(diff.std()) < 1.2 * sigma


@pytest.fixture(scope="module")
def own_keys_dp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    """A consortium with keys of its own (coordinator, consortium, institutions) whose run asks for
    record-level DP at epsilon 8: no --allow-demo-keys; its 2 rounds come from its policy.
    Returns the run folder, the terminal output and the folder of the consortium's keys."""
    tmp_path = tmp_path_factory.mktemp("own_keys")
    keys = tmp_path / "keys"
    text = CONSORTIUM.read_text()
    for name in (
        "coordinator",
        "national_bank",
        "online_bank",
        "rural_cooperative",
        "city_bank_east",
        "coastal_credit_union",
    ):
        _, pub = generate_keypair(keys, name)
        text = text.replace(read_public_keys(DEMO_KEYS / f"demo_{name}.pub")[0], read_public_keys(pub)[0])
    policy = tmp_path / "federation.toml"
    policy.write_text(text.replace("\nrounds = 10\n", "\nrounds = 2\n"))
    consortium, consortium_pub = generate_keypair(tmp_path, "consortium")
    sign_policy(policy, consortium)
    run_dir, output = _simulate_in(
        tmp_path,
        [
            *("--institutions", "3", "--rows", "9000", "--epsilon", "8"),
            *("--federation-policy", str(policy), "--trust", str(consortium_pub)),
            *("--coordinator-key", str(keys / "coordinator.key"), "--node-keys", str(keys)),
        ],
    )
    return run_dir, output, keys


def test_differentially_private_run_spends_and_records_its_budget(
    own_keys_dp_run: tuple[Path, str, Path],
) -> None:
    run_dir, output, keys = own_keys_dp_run
    report = json.loads((run_dir / "report.json").read_text())
    assert report["settings"]["epsilon"] == 8.0
    assert "epsilon spent" in output  # the terminal shows each institution's spend too
    for inst in report["institutions"].values():
        spent = [r["epsilon_spent"] for r in inst["rounds"]]
        assert spent[0] < spent[1] <= 8.0 and spent[1] == pytest.approx(8.0, abs=0.1)
        assert [r["dp_noise"] for r in inst["rounds"]] == ["secret", "secret"]
    node_db = f"sqlite:///{run_dir / 'audit' / 'node-national_bank.db'}"
    export = runner.invoke(app, ["audit", "export", "--jsonl", "-", "--db", node_db])
    assert export.output.count('"action":"privacy.spend"') == 2
    assert "round-2/epsilon-spent=" in export.output
    # the node's log is signed with the node's own key: it verifies against that key alone
    node_pub = keys / "national_bank.pub"
    verified = runner.invoke(app, ["audit", "verify", "--db", node_db, "--trust", str(node_pub)])
    assert verified.exit_code == 0 and "intact" in verified.output


def test_a_consortium_with_keys_of_its_own_runs_without_any_demo_key(
    own_keys_dp_run: tuple[Path, str, Path],
) -> None:
    """Its own coordinator, consortium and institution keys: no --allow-demo-keys, nothing DEMO,
    the institutions named by their own keys, the whole log verified against the consortium's keys."""
    run_dir, output, keys = own_keys_dp_run
    report = json.loads((run_dir / "report.json").read_text())
    assert report["demo"] is None and "DEMO" not in output
    assert sorted(report["institutions"]) == ["national_bank", "online_bank", "rural_cooperative"]
    db = f"sqlite:///{run_dir.parents[1] / 'fedcredit.db'}"
    verified = runner.invoke(app, ["audit", "verify", "--db", db, "--trust", str(keys / "coordinator.pub")])
    assert verified.exit_code == 0 and "intact" in verified.output and "DEMO" not in verified.output


def test_a_run_that_cannot_go_on_stops_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """3,000 borrowers over five banks: only the national bank has the 1,000 records its policy needs.
    SecAgg+ cannot complete the first round; the run stops there, says who refused and why (each
    institution once), writes no model."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FEDCREDIT_VAR_DIR", str(tmp_path / "var"))
    result = runner.invoke(app, ["demo", "--rows", "3000"])
    assert result.exit_code == 2
    (line,) = [x for x in result.output.splitlines() if x.startswith("error:")]
    assert line.startswith(
        "error: normalization-stats round 1: secure aggregation could not complete the round"
    )
    assert "online_bank (forbid.too_few_local_records)" in line and line.count("online_bank") == 1
    assert "coastal_credit_union (forbid.purpose_not_allowed, forbid.too_few_local_records)" in line
    assert "national_bank" not in line
    (run_dir,) = (tmp_path / "var" / "runs").iterdir()
    assert not (run_dir / "model.pt").exists() and not (run_dir / "report.json").exists()
    export = runner.invoke(app, ["audit", "export", "--jsonl", "-"])
    entries = [json.loads(x) for x in export.stdout.splitlines()]
    assert entries[-1]["action"] == "run.end" and entries[-1]["decision"] == "failed"
    assert {e["action"] for e in entries} >= {"run.start", "fit.refused"}
    assert "round.end" not in {e["action"] for e in entries}  # no round was ever counted as done
