"""A corpus of bad command-line inputs: each gives one line ``error: ...``, exit code 2, no traceback.

The house rule for an expected failure: exactly one line ``error: <what and where>`` on stderr,
exit code 2, never a traceback, never local variables, never a secret; nothing existing is
overwritten without ``--force`` and no half-written output is left behind. Click's own usage
errors (a bad option value) are accepted when they exit 2 without a traceback.

Every case runs in-process on ``coordinator.cli.app``; an expected error the command leaves to the
console script (``coordinator.cli.main``) is finished as ``main`` finishes it. A handful also run
as a real ``fedcredit`` process. No case reaches training: ``simulate``'s federation run is
replaced by one that fails the test.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from coordinator.cli import EXPECTED_ERRORS, app
from coordinator.score_cli import EXAMPLE_APPLICANT
from federation.loading import load_dataset
from federation.model import save_model
from federation.schema import resolve_schema
from policies.cli_errors import error_line
from policies.demo_keys import EXAMPLES

from .federation.model_helpers import card_for_tests
from .federation.test_scoring import untrained_model

REPO = Path(__file__).resolve().parents[1]
KEYS = EXAMPLES / "keys"
APPLICANTS = EXAMPLE_APPLICANT
BAD_PG = "postgresql://nouser@127.0.0.1:1/x"
SECRET_PASSWORD = "s3cretPassw0rd"
GARBAGE_KEY = b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n-----END PRIVATE KEY-----\n"

runner = CliRunner()


# --------------------------------------------------------------------------- running and judging


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    via_main: bool = False  # the command left an expected error to the console script


def invoke(args: list[str]) -> Outcome:
    """``fedcredit ARGS`` in-process; an expected error escaping the app is reported as ``main`` does."""
    result = runner.invoke(app, args)
    exc = result.exception
    stderr = result.stderr
    code = result.exit_code
    via_main = False
    if exc is not None and not isinstance(exc, SystemExit):
        if isinstance(exc, EXPECTED_ERRORS):  # the console script's own handling
            stderr += f"error: {error_line(exc)}\n"
            code = 2
            via_main = True
        else:
            stderr += "".join(traceback.format_exception(exc))
    return Outcome(code, result.stdout, stderr, via_main)


def run_process(args: list[str], cwd: Path) -> Outcome:
    """The real console script, as a process."""
    code = "import sys; from coordinator.cli import main; sys.argv[0] = 'fedcredit'; main()"
    env = {**os.environ, "COLUMNS": "200", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def rule_problems(outcome: Outcome, secrets: tuple[str, ...] = ()) -> list[str]:
    """What breaks the house rule for an expected failure (empty: the rule holds)."""
    text = outcome.stdout + outcome.stderr
    problems = []
    if "Traceback" in text:
        problems.append("traceback: " + text.strip().splitlines()[-1])
    if "locals" in text.lower() and "╭─" in text:
        problems.append("local variables printed")
    if outcome.code != 2:
        problems.append(f"exit code {outcome.code}")
    usage_error = outcome.code == 2 and "Usage:" in outcome.stderr
    if not usage_error:
        err = [line for line in outcome.stderr.splitlines() if line.strip()]
        out = [line for line in outcome.stdout.splitlines() if line.strip()]
        if len(err) != 1 or not err[0].startswith("error: "):
            where = " (error on stdout)" if any(line.startswith("error:") for line in out) else ""
            problems.append(f"stderr is {len(err)} line(s), not one 'error: ...' line{where}: {err[:2]}")
        if out:
            problems.append(f"stdout not empty: {out[:2]}")
    for secret in secrets:
        if secret and secret in text:
            problems.append(f"secret printed: {secret[:12]}...")
    return problems


# SQLite's WAL files, which a reader of a WAL database may leave (reported apart, not a bad input)
SQLITE_SIDECARS = ("-wal", "-shm")


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root``: a file's bytes, None for a folder."""
    return {
        str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
        if not p.is_symlink() and not p.name.endswith(SQLITE_SIDECARS)
    }


# --------------------------------------------------------------------------- shared bad inputs


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only inputs shared by the cases: good data, bad data, bad schemas, policies, keys, a model."""
    ws = tmp_path_factory.mktemp("bad_inputs")
    data = ws / "data.csv"
    assert invoke(["data", "generate", str(data), "--rows", "200"]).code == 0
    assert invoke(["data", "partition", str(data), str(ws / "parts"), "--institutions", "2"]).code == 0
    banks = sorted(p for p in (ws / "parts").iterdir() if (p / "train.csv").is_file())
    assert len(banks) == 2
    for n, bank in enumerate(banks):
        shutil.copytree(bank, ws / f"bank{n}")
    (ws / "adir").mkdir()
    (ws / "adir" / "keep.txt").write_text("not a table\n")
    (ws / "empty.csv").write_bytes(b"")
    (ws / "header_only.csv").write_text(data.read_text().splitlines()[0] + "\n")
    (ws / "binary.csv").write_bytes(bytes(range(256)) * 8)
    (ws / "wrong_columns.csv").write_text("a,b,c\n1,2,3\n4,5,6\n")
    shutil.copy(data, ws / "data.txt")
    (ws / "corrupt.parquet").write_bytes(b"PAR1" + b"\x00garbage" * 50 + b"PAR1")
    shutil.copy(data, ws / "csv_named.parquet")
    # schemas
    (ws / "not_toml.txt").write_text("just some words, not a schema\n")
    (ws / "invalid.toml").write_text("[[columns]\nname = = 'x'\n")
    (ws / "not_schema.toml").write_text("x = 1\n")
    # policies
    (ws / "unsigned").mkdir()
    shutil.copy(EXAMPLES / "national_bank.toml", ws / "unsigned" / "national_bank.toml")
    (ws / "tampered").mkdir()
    for suffix in ("", ".manifest.json", ".manifest.sig"):
        shutil.copy(EXAMPLES / f"national_bank.toml{suffix}", ws / "tampered" / f"national_bank.toml{suffix}")
    policy = ws / "tampered" / "national_bank.toml"
    policy.write_text(policy.read_text().replace("min_local_records = 1000", "min_local_records = 1"))
    (ws / "garbage_policy.toml").write_bytes(b"\x00\x01 this is {{ not a policy\n")
    (ws / "not_policy.toml").write_text("x = 1\n")
    # keys
    (ws / "garbage.key").write_bytes(GARBAGE_KEY)
    (ws / "garbage.pub").write_text("ed25519:not-base64-at-all!!\n")
    (ws / "empty_trust").mkdir()
    # a signed training request, and a bad one
    request = ["policy", "request", str(ws / "request.json"), "--key", str(KEYS / "demo_coordinator.key")]
    assert invoke(request).code == 0
    (ws / "garbage_request.json").write_text("{not json")
    # a model, a folder without one, a garbage one, a text file named model.pt
    sme = resolve_schema("sme")
    save_model(
        untrained_model(load_dataset(data, sme, require_label=False)), ws / "model.pt", card_for_tests()
    )
    (ws / "no_model").mkdir()
    (ws / "garbage.pt").write_bytes(os.urandom(4096))
    (ws / "text_model").mkdir()
    (ws / "text_model" / "model.pt").write_text("this is not a model\n")
    # audit databases: an empty file, a SQLite file with other tables, an empty audit log
    (ws / "empty.db").write_bytes(b"")
    with sqlite3.connect(ws / "other.db") as conn:
        conn.execute("CREATE TABLE unrelated (x INTEGER)")
    conn.close()
    assert invoke(["db", "upgrade", "--db", f"sqlite:///{ws / 'audit.db'}"]).code == 0
    return ws


@pytest.fixture(autouse=True)
def _no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad input must fail before any federation runs."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("training would start: the bad input was silently accepted")

    monkeypatch.setattr("coordinator.simulation.cli._run_federation", refuse)


# --------------------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    pre: tuple[tuple[str, bytes | str | None], ...] = ()  # in tmp: bytes, a file to copy, None a folder
    secrets: tuple[str, ...] = ()


def case(
    id: str,
    *args: str,
    pre: dict[str, bytes | str | None] | None = None,
    secrets: tuple[str, ...] = (),
) -> object:
    return pytest.param(Case(args, tuple((pre or {}).items()), secrets), id=id)


EXISTING = b"precious existing content\n"
KEY_BODY = (KEYS / "demo_coordinator.key").read_text().splitlines()[1]
NB = str(EXAMPLES / "national_bank.toml")
CONSORTIUM = str(EXAMPLES / "sme_consortium.toml")
COORD_KEY = str(KEYS / "demo_coordinator.key")
COORD_PUB = str(KEYS / "demo_coordinator.pub")
OWN = ("--institution", "a={ws}/bank0", "--institution", "b={ws}/bank1")
MODEL = ("--model", "{ws}/model.pt")
TRUST = ("--trust", str(KEYS))
AUDIT_DB = ("--db", "sqlite:///{ws}/audit.db")

CASES = [
    # ---- data validate: CSV and Parquet files
    case("validate-missing-file", "data", "validate", "{tmp}/nope.csv"),
    case("validate-folder", "data", "validate", "{ws}/adir"),
    case("validate-empty-csv", "data", "validate", "{ws}/empty.csv"),
    case("validate-header-only-csv", "data", "validate", "{ws}/header_only.csv"),
    case("validate-binary-csv", "data", "validate", "{ws}/binary.csv"),
    case("validate-wrong-columns", "data", "validate", "{ws}/wrong_columns.csv"),
    case("validate-wrong-extension", "data", "validate", "{ws}/data.txt"),
    case("validate-corrupt-parquet", "data", "validate", "{ws}/corrupt.parquet"),
    case("validate-csv-named-parquet", "data", "validate", "{ws}/csv_named.parquet"),
    # ---- schema arguments
    case("validate-schema-unknown", "data", "validate", "{ws}/data.csv", "--schema", "nosuch"),
    case("validate-schema-folder", "data", "validate", "{ws}/data.csv", "--schema", "{ws}/adir"),
    case("validate-schema-not-toml", "data", "validate", "{ws}/data.csv", "--schema", "{ws}/not_toml.txt"),
    case(
        "validate-schema-invalid-toml", "data", "validate", "{ws}/data.csv", "--schema", "{ws}/invalid.toml"
    ),
    case(
        "validate-schema-not-a-schema",
        "data",
        "validate",
        "{ws}/data.csv",
        "--schema",
        "{ws}/not_schema.toml",
    ),
    case("validate-schema-missing-toml", "data", "validate", "{ws}/data.csv", "--schema", "{tmp}/nope.toml"),
    case("schema-show-unknown", "schema", "show", "nosuch"),
    case("schema-show-invalid-toml", "schema", "show", "{ws}/invalid.toml"),
    case("schema-show-missing-toml", "schema", "show", "{tmp}/nope.toml"),
    case("schema-dump-folder", "schema", "dump", "{ws}/adir"),
    case("schema-dump-not-toml", "schema", "dump", "{ws}/not_toml.txt"),
    case("schema-dump-not-a-schema", "schema", "dump", "{ws}/not_schema.toml"),
    # ---- data generate: arguments and output paths
    case("generate-rows-negative", "data", "generate", "{tmp}/g.csv", "--rows", "-5"),
    case("generate-rows-zero", "data", "generate", "{tmp}/g.csv", "--rows", "0"),
    case("generate-rows-not-a-number", "data", "generate", "{tmp}/g.csv", "--rows", "many"),
    case(
        "generate-existing-no-force",
        "data",
        "generate",
        "{tmp}/g.csv",
        "--rows",
        "100",
        pre={"g.csv": EXISTING},
    ),
    case(
        "generate-out-folder-force",
        "data",
        "generate",
        "{tmp}/d",
        "--rows",
        "100",
        "--force",
        pre={"d": None},
    ),
    case("generate-out-folder", "data", "generate", "{tmp}/d", "--rows", "100", pre={"d": None}),
    case(
        "generate-out-parent-is-file",
        "data",
        "generate",
        "{tmp}/f/g.csv",
        "--rows",
        "100",
        pre={"f": EXISTING},
    ),
    case("generate-out-dev-full", "data", "generate", "/dev/full", "--rows", "100"),
    case("generate-out-proc", "data", "generate", "/proc/fedcredit_x.csv", "--rows", "100"),
    case("generate-out-wrong-extension", "data", "generate", "{tmp}/g.txt", "--rows", "100"),
    # ---- data partition: inputs, arguments and output paths
    case("partition-missing-input", "data", "partition", "{tmp}/nope.csv", "{tmp}/out"),
    case("partition-empty-csv", "data", "partition", "{ws}/empty.csv", "{tmp}/out"),
    case("partition-binary-csv", "data", "partition", "{ws}/binary.csv", "{tmp}/out"),
    case("partition-wrong-columns", "data", "partition", "{ws}/wrong_columns.csv", "{tmp}/out"),
    case("partition-corrupt-parquet", "data", "partition", "{ws}/corrupt.parquet", "{tmp}/out"),
    case(
        "partition-institutions-1", "data", "partition", "{ws}/data.csv", "{tmp}/out", "--institutions", "1"
    ),
    case(
        "partition-holdout-above-1",
        "data",
        "partition",
        "{ws}/data.csv",
        "{tmp}/out",
        "--holdout",
        "1.5",
    ),
    case(
        "partition-holdout-negative",
        "data",
        "partition",
        "{ws}/data.csv",
        "{tmp}/out",
        "--holdout",
        "-0.1",
    ),
    case(
        "partition-holdout-nan",
        "data",
        "partition",
        "{ws}/data.csv",
        "{tmp}/out",
        "--holdout",
        "nan",
    ),
    case("partition-out-is-file", "data", "partition", "{ws}/data.csv", "{tmp}/out", pre={"out": EXISTING}),
    case(
        "partition-out-not-empty-no-force",
        "data",
        "partition",
        "{ws}/data.csv",
        "{tmp}/out",
        pre={"out": None, "out/keep.txt": EXISTING},
    ),
    case(
        "partition-out-parent-is-file",
        "data",
        "partition",
        "{ws}/data.csv",
        "{tmp}/f/out",
        pre={"f": EXISTING},
    ),
    case("partition-out-proc", "data", "partition", "{ws}/data.csv", "/proc/fedcredit_x"),
    # ---- score: applicants, models, schemas, --out
    case("score-missing-applicants", "score", "{tmp}/nope.csv", *MODEL),
    case("score-applicants-folder", "score", "{ws}/adir", *MODEL),
    case("score-empty-csv", "score", "{ws}/empty.csv", *MODEL),
    case("score-binary-csv", "score", "{ws}/binary.csv", *MODEL),
    case("score-wrong-columns", "score", "{ws}/wrong_columns.csv", *MODEL),
    case("score-corrupt-parquet", "score", "{ws}/corrupt.parquet", *MODEL),
    case("score-csv-named-parquet", "score", "{ws}/csv_named.parquet", *MODEL),
    case("score-model-folder-without-model", "score", str(APPLICANTS), "--model", "{ws}/no_model"),
    case("score-model-garbage-file", "score", str(APPLICANTS), "--model", "{ws}/garbage.pt"),
    case("score-model-text-named-model-pt", "score", str(APPLICANTS), "--model", "{ws}/text_model/model.pt"),
    case("score-model-unknown-run", "score", str(APPLICANTS), "--model", "no-such-run-id"),
    case("score-schema-unknown", "score", str(APPLICANTS), *MODEL, "--schema", "nosuch"),
    case("score-schema-invalid-toml", "score", str(APPLICANTS), *MODEL, "--schema", "{ws}/invalid.toml"),
    case("score-schema-other", "score", str(APPLICANTS), *MODEL, "--schema", "uci_homo"),
    case(
        "score-out-existing-no-force",
        "score",
        str(APPLICANTS),
        *MODEL,
        "--out",
        "{tmp}/s.csv",
        pre={"s.csv": EXISTING},
    ),
    case(
        "score-out-folder-force",
        "score",
        str(APPLICANTS),
        *MODEL,
        "--out",
        "{tmp}/d",
        "--force",
        pre={"d": None},
    ),
    case("score-out-folder", "score", str(APPLICANTS), *MODEL, "--out", "{tmp}/d", pre={"d": None}),
    case(
        "score-out-parent-is-file",
        "score",
        str(APPLICANTS),
        *MODEL,
        "--out",
        "{tmp}/f/s.csv",
        pre={"f": EXISTING},
    ),
    case("score-out-dev-full", "score", str(APPLICANTS), *MODEL, "--out", "/dev/full"),
    case("score-out-proc", "score", str(APPLICANTS), *MODEL, "--out", "/proc/fedcredit_x.csv"),
    case("score-out-wrong-extension", "score", str(APPLICANTS), *MODEL, "--out", "{tmp}/s.txt"),
    # ---- policy verify / show / diff
    case("verify-unsigned", "policy", "verify", "{ws}/unsigned/national_bank.toml", *TRUST),
    case("verify-tampered", "policy", "verify", "{ws}/tampered/national_bank.toml", *TRUST),
    case("verify-garbage", "policy", "verify", "{ws}/garbage_policy.toml", *TRUST),
    case("verify-missing", "policy", "verify", "{tmp}/nope.toml", *TRUST),
    case("verify-folder", "policy", "verify", "{ws}/adir", *TRUST),
    case("verify-trust-garbage", "policy", "verify", NB, "--trust", "{ws}/garbage.pub"),
    case("verify-trust-missing", "policy", "verify", NB, "--trust", "{tmp}/nope.pub"),
    case("verify-trust-empty-folder", "policy", "verify", NB, "--trust", "{ws}/empty_trust"),
    case("verify-trust-private-key", "policy", "verify", NB, "--trust", COORD_KEY, secrets=(KEY_BODY,)),
    case("verify-untrusted-signer", "policy", "verify", NB, "--trust", COORD_PUB),
    case("show-garbage", "policy", "show", "{ws}/garbage_policy.toml"),
    case("show-not-a-policy", "policy", "show", "{ws}/not_policy.toml"),
    case("show-missing", "policy", "show", "{tmp}/nope.toml"),
    case("show-folder", "policy", "show", "{ws}/adir"),
    case("diff-garbage", "policy", "diff", NB, "{ws}/garbage_policy.toml"),
    case("diff-missing", "policy", "diff", "{tmp}/nope.toml", NB),
    case(
        "diff-different-kinds",
        "policy",
        "diff",
        NB,
        CONSORTIUM,
    ),
    # ---- policy sign: keys and policies (the policy is a copy in tmp: nothing may be written next to it)
    case(
        "sign-key-garbage", "policy", "sign", "{tmp}/p.toml", "--key", "{ws}/garbage.key", pre={"p.toml": NB}
    ),
    case("sign-key-is-public", "policy", "sign", "{tmp}/p.toml", "--key", COORD_PUB, pre={"p.toml": NB}),
    case("sign-key-missing", "policy", "sign", "{tmp}/p.toml", "--key", "{tmp}/nope.key", pre={"p.toml": NB}),
    case("sign-key-folder", "policy", "sign", "{tmp}/p.toml", "--key", str(KEYS), pre={"p.toml": NB}),
    case(
        "sign-garbage-policy",
        "policy",
        "sign",
        "{tmp}/p.toml",
        "--key",
        COORD_KEY,
        pre={"p.toml": b"\x00{{ nope\n"},
        secrets=(KEY_BODY,),
    ),
    case(
        "sign-not-a-policy",
        "policy",
        "sign",
        "{tmp}/p.toml",
        "--key",
        COORD_KEY,
        pre={"p.toml": b"x = 1\n"},
        secrets=(KEY_BODY,),
    ),
    case("sign-missing-policy", "policy", "sign", "{tmp}/nope.toml", "--key", COORD_KEY),
    # ---- policy request: keys, arguments and output paths
    case(
        "request-existing-out",
        "policy",
        "request",
        "{tmp}/r.json",
        "--key",
        COORD_KEY,
        pre={"r.json": EXISTING},
    ),
    case("request-out-folder", "policy", "request", "{tmp}/d", "--key", COORD_KEY, pre={"d": None}),
    case(
        "request-out-parent-is-file",
        "policy",
        "request",
        "{tmp}/f/r.json",
        "--key",
        COORD_KEY,
        pre={"f": EXISTING},
    ),
    case("request-out-proc", "policy", "request", "/proc/fedcredit_x.json", "--key", COORD_KEY),
    case("request-out-dev-full", "policy", "request", "/dev/full", "--key", COORD_KEY),
    case(
        "request-key-garbage",
        "policy",
        "request",
        "{tmp}/r.json",
        "--key",
        "{ws}/garbage.key",
        secrets=("bm90IGEga2V5",),
    ),
    case("request-key-is-public", "policy", "request", "{tmp}/r.json", "--key", COORD_PUB),
    case("request-key-missing", "policy", "request", "{tmp}/r.json", "--key", "{tmp}/nope.key"),
    case(
        "request-epsilon-negative",
        "policy",
        "request",
        "{tmp}/r.json",
        "--key",
        COORD_KEY,
        "--epsilon",
        "-1",
    ),
    case(
        "request-epsilon-nan",
        "policy",
        "request",
        "{tmp}/r.json",
        "--key",
        COORD_KEY,
        "--epsilon",
        "nan",
    ),
    case(
        "request-epsilon-inf",
        "policy",
        "request",
        "{tmp}/r.json",
        "--key",
        COORD_KEY,
        "--epsilon",
        "inf",
    ),
    case(
        "request-min-institutions-0",
        "policy",
        "request",
        "{tmp}/r.json",
        "--key",
        COORD_KEY,
        "--min-institutions",
        "0",
    ),
    case(
        "request-feature-without-colon",
        "policy",
        "request",
        "{tmp}/r.json",
        "--key",
        COORD_KEY,
        "--feature",
        "monthly_revenue",
    ),
    case(
        "request-schema-unknown",
        "policy",
        "request",
        "{tmp}/r.json",
        "--key",
        COORD_KEY,
        "--schema",
        "nosuch",
    ),
    # ---- policy explain: unsigned, tampered, wrong kind, expired, bad request
    case(
        "explain-unsigned",
        "policy",
        "explain",
        "{ws}/unsigned/national_bank.toml",
        "--request",
        "{ws}/request.json",
        *TRUST,
    ),
    case(
        "explain-tampered",
        "policy",
        "explain",
        "{ws}/tampered/national_bank.toml",
        "--request",
        "{ws}/request.json",
        *TRUST,
    ),
    case(
        "explain-federation-policy", "policy", "explain", CONSORTIUM, "--request", "{ws}/request.json", *TRUST
    ),
    case(
        "explain-expired-today",
        "policy",
        "explain",
        NB,
        "--request",
        "{ws}/request.json",
        *TRUST,
        "--today",
        "2031-01-01",
    ),
    case(
        "explain-not-yet-in-force",
        "policy",
        "explain",
        NB,
        "--request",
        "{ws}/request.json",
        *TRUST,
        "--today",
        "2020-01-01",
    ),
    case(
        "explain-today-garbage",
        "policy",
        "explain",
        NB,
        "--request",
        "{ws}/request.json",
        *TRUST,
        "--today",
        "someday",
    ),
    case(
        "explain-request-garbage", "policy", "explain", NB, "--request", "{ws}/garbage_request.json", *TRUST
    ),
    case("explain-request-missing", "policy", "explain", NB, "--request", "{tmp}/nope.json", *TRUST),
    case("explain-request-is-policy", "policy", "explain", NB, "--request", NB, *TRUST),
    case(
        "explain-trust-garbage",
        "policy",
        "explain",
        NB,
        "--request",
        "{ws}/request.json",
        "--trust",
        "{ws}/garbage.pub",
    ),
    case(
        "explain-records-negative",
        "policy",
        "explain",
        NB,
        "--request",
        "{ws}/request.json",
        *TRUST,
        "--records",
        "-5",
    ),
    # ---- keys generate
    case(
        "keys-existing-key",
        "keys",
        "generate",
        "k",
        "--out",
        "{tmp}/keys",
        pre={"keys": None, "keys/k.key": EXISTING},
    ),
    case(
        "keys-existing-pub",
        "keys",
        "generate",
        "k",
        "--out",
        "{tmp}/keys",
        pre={"keys": None, "keys/k.pub": EXISTING},
    ),
    case("keys-out-is-file", "keys", "generate", "k", "--out", "{tmp}/f", pre={"f": EXISTING}),
    case("keys-out-parent-is-file", "keys", "generate", "k", "--out", "{tmp}/f/keys", pre={"f": EXISTING}),
    case("keys-out-proc", "keys", "generate", "k", "--out", "/proc/fedcredit_keys"),
    case(
        "keys-name-with-slash",
        "keys",
        "generate",
        "../evil",
        "--out",
        "{tmp}/keys",
        pre={"keys": None},
    ),
    case(
        "keys-name-empty",
        "keys",
        "generate",
        "",
        "--out",
        "{tmp}/keys",
        pre={"keys": None},
    ),
    case(
        "keys-db-not-a-url",
        "keys",
        "generate",
        "k",
        "--out",
        "{tmp}/keys",
        "--db",
        "not-a-url",
        pre={"keys": None},
    ),
    case(
        "keys-db-dead-postgres",
        "keys",
        "generate",
        "k",
        "--out",
        "{tmp}/keys",
        "--db",
        BAD_PG,
        pre={"keys": None},
    ),
    # ---- audit verify / export
    case(
        "audit-verify-missing-sqlite",
        "audit",
        "verify",
        "--db",
        "sqlite:///{tmp}/missing.db",
        "--trust",
        COORD_PUB,
    ),
    case(
        "audit-verify-empty-file",
        "audit",
        "verify",
        "--db",
        "sqlite:///{ws}/empty.db",
        "--trust",
        COORD_PUB,
    ),
    case(
        "audit-verify-other-tables",
        "audit",
        "verify",
        "--db",
        "sqlite:///{ws}/other.db",
        "--trust",
        COORD_PUB,
    ),
    case(
        "audit-verify-empty-log",
        "audit",
        "verify",
        *AUDIT_DB,
        "--trust",
        COORD_PUB,
    ),
    case("audit-verify-dead-postgres", "audit", "verify", "--db", BAD_PG, "--trust", COORD_PUB),
    case(
        "audit-verify-password-not-shown",
        "audit",
        "verify",
        "--db",
        f"postgresql://user:{SECRET_PASSWORD}@127.0.0.1:1/x",
        "--trust",
        COORD_PUB,
        secrets=(SECRET_PASSWORD,),
    ),
    case("audit-verify-not-a-url", "audit", "verify", "--db", "not-a-url", "--trust", COORD_PUB),
    case("audit-verify-trust-garbage", "audit", "verify", *AUDIT_DB, "--trust", "{ws}/garbage.pub"),
    case("audit-verify-trust-missing", "audit", "verify", *AUDIT_DB, "--trust", "{tmp}/nope.pub"),
    case(
        "audit-verify-trust-private-key",
        "audit",
        "verify",
        *AUDIT_DB,
        "--trust",
        COORD_KEY,
        secrets=(KEY_BODY,),
    ),
    case(
        "audit-export-existing-no-force",
        "audit",
        "export",
        *AUDIT_DB,
        "--jsonl",
        "{tmp}/a.jsonl",
        pre={"a.jsonl": EXISTING},
    ),
    case(
        "audit-export-folder-force",
        "audit",
        "export",
        *AUDIT_DB,
        "--jsonl",
        "{tmp}/d",
        "--force",
        pre={"d": None, "d/keep.txt": EXISTING},
    ),
    case("audit-export-folder", "audit", "export", *AUDIT_DB, "--jsonl", "{tmp}/d", pre={"d": None}),
    case(
        "audit-export-parent-is-file",
        "audit",
        "export",
        *AUDIT_DB,
        "--jsonl",
        "{tmp}/f/a.jsonl",
        pre={"f": EXISTING},
    ),
    case("audit-export-proc", "audit", "export", *AUDIT_DB, "--jsonl", "/proc/fedcredit_x.jsonl"),
    case(
        "audit-export-missing-sqlite",
        "audit",
        "export",
        "--db",
        "sqlite:///{tmp}/missing.db",
        "--jsonl",
        "{tmp}/a.jsonl",
    ),
    case("audit-export-dead-postgres", "audit", "export", "--db", BAD_PG, "--jsonl", "{tmp}/a.jsonl"),
    # ---- db
    case("db-upgrade-not-a-url", "db", "upgrade", "--db", "not-a-url"),
    case("db-upgrade-dead-postgres", "db", "upgrade", "--db", BAD_PG),
    case("db-upgrade-parent-is-file", "db", "upgrade", "--db", "sqlite:///{tmp}/f/x.db", pre={"f": EXISTING}),
    case("db-current-not-a-url", "db", "current", "--db", "not-a-url"),
    case("db-current-dead-postgres", "db", "current", "--db", BAD_PG),
    # ---- node check
    case(
        "node-data-missing",
        "node",
        "check",
        "--data-path",
        "{tmp}/nope",
        "--policy",
        NB,
        *TRUST,
        "--node-key",
        str(KEYS / "demo_national_bank.key"),
    ),
    case(
        "node-data-without-train",
        "node",
        "check",
        "--data-path",
        "{ws}/adir",
        "--policy",
        NB,
        *TRUST,
        "--node-key",
        str(KEYS / "demo_national_bank.key"),
    ),
    case(
        "node-policy-unsigned",
        "node",
        "check",
        "--data-path",
        "{ws}/bank0",
        "--policy",
        "{ws}/unsigned/national_bank.toml",
        *TRUST,
        "--node-key",
        str(KEYS / "demo_national_bank.key"),
    ),
    case(
        "node-policy-tampered",
        "node",
        "check",
        "--data-path",
        "{ws}/bank0",
        "--policy",
        "{ws}/tampered/national_bank.toml",
        *TRUST,
        "--node-key",
        str(KEYS / "demo_national_bank.key"),
    ),
    case(
        "node-policy-federation-kind",
        "node",
        "check",
        "--data-path",
        "{ws}/bank0",
        "--policy",
        CONSORTIUM,
        *TRUST,
        "--node-key",
        str(KEYS / "demo_national_bank.key"),
    ),
    case(
        "node-key-garbage",
        "node",
        "check",
        "--data-path",
        "{ws}/bank0",
        "--policy",
        NB,
        *TRUST,
        "--node-key",
        "{ws}/garbage.key",
    ),
    case(
        "node-key-is-public",
        "node",
        "check",
        "--data-path",
        "{ws}/bank0",
        "--policy",
        NB,
        *TRUST,
        "--node-key",
        str(KEYS / "demo_national_bank.pub"),
    ),
    case(
        "node-trust-garbage",
        "node",
        "check",
        "--data-path",
        "{ws}/bank0",
        "--policy",
        NB,
        "--trust",
        "{ws}/garbage.pub",
        "--node-key",
        str(KEYS / "demo_national_bank.key"),
    ),
    case(
        "node-schema-unknown",
        "node",
        "check",
        "--data-path",
        "{ws}/bank0",
        "--policy",
        NB,
        *TRUST,
        "--node-key",
        str(KEYS / "demo_national_bank.key"),
        "--schema",
        "nosuch",
    ),
    # ---- simulate and demo: every one fails before training
    case("simulate-rounds-0", "simulate", "--rounds", "0"),
    case("simulate-institutions-1", "simulate", "--institutions", "1"),
    case("simulate-rows-negative", "simulate", "--rows", "-1"),
    case("simulate-dataset-unknown", "simulate", "--dataset", "nosuch"),
    case("simulate-strategy-unknown", "simulate", "--strategy", "nosuch"),
    case("simulate-epsilon-negative", "simulate", *OWN, "--epsilon", "-1"),
    case("simulate-epsilon-nan", "simulate", *OWN, "--epsilon", "nan"),
    case("simulate-epsilon-inf", "simulate", *OWN, "--epsilon", "inf"),
    case("simulate-epsilon-zero", "simulate", *OWN, "--epsilon", "0"),
    case(
        "simulate-institution-without-equals",
        "simulate",
        "--institution",
        "bank_a",
        "--institution",
        "b={ws}/bank1",
    ),
    case(
        "simulate-institution-missing-folder",
        "simulate",
        "--institution",
        "a={tmp}/nope",
        "--institution",
        "b={ws}/bank1",
    ),
    case(
        "simulate-institution-folder-without-train",
        "simulate",
        "--institution",
        "a={ws}/adir",
        "--institution",
        "b={ws}/bank1",
    ),
    case(
        "simulate-institution-is-file",
        "simulate",
        "--institution",
        "a={ws}/data.csv",
        "--institution",
        "b={ws}/bank1",
    ),
    case("simulate-institution-only-one", "simulate", "--institution", "a={ws}/bank0"),
    case(
        "simulate-institution-named-twice",
        "simulate",
        "--institution",
        "a={ws}/bank0",
        "--institution",
        "a={ws}/bank1",
    ),
    case(
        "simulate-institution-same-folder",
        "simulate",
        "--institution",
        "a={ws}/bank0",
        "--institution",
        "b={ws}/bank0",
    ),
    case("simulate-schema-without-institution", "simulate", "--schema", "x"),
    case("simulate-test-without-institution", "simulate", "--test", "{ws}/data.csv"),
    case(
        "simulate-institution-with-dataset",
        "simulate",
        "--institution",
        "a={ws}/bank0",
        "--institution",
        "b={ws}/bank1",
        "--dataset",
        "sme",
    ),
    case("simulate-institution-schema-unknown", "simulate", *OWN, "--schema", "nosuch"),
    case("simulate-institution-schema-invalid", "simulate", *OWN, "--schema", "{ws}/invalid.toml"),
    case("simulate-test-missing", "simulate", *OWN, "--test", "{tmp}/nope.csv"),
    case("simulate-policy-without-trust", "simulate", "--federation-policy", CONSORTIUM),
    case(
        "simulate-policy-unsigned",
        "simulate",
        "--federation-policy",
        "{ws}/unsigned/national_bank.toml",
        *TRUST,
    ),
    case("simulate-policy-institution-kind", "simulate", "--federation-policy", NB, *TRUST),
    case("simulate-policy-garbage", "simulate", "--federation-policy", "{ws}/garbage_policy.toml", *TRUST),
    case(
        "simulate-policy-trust-garbage",
        "simulate",
        "--federation-policy",
        CONSORTIUM,
        "--trust",
        "{ws}/garbage.pub",
    ),
    case("simulate-coordinator-key-garbage", "simulate", *OWN, "--coordinator-key", "{ws}/garbage.key"),
    case("simulate-coordinator-key-is-public", "simulate", *OWN, "--coordinator-key", COORD_PUB),
    case("simulate-coordinator-key-missing", "simulate", *OWN, "--coordinator-key", "{tmp}/nope.key"),
    case("simulate-node-keys-missing-folder", "simulate", *OWN, "--node-keys", "{tmp}/nope"),
    case("simulate-data-dir-with-sme", "simulate", "--dataset", "sme", "--data-dir", "{tmp}"),
    case("simulate-label-skew-with-uci", "simulate", "--dataset", "uci", "--label-skew", "0.5"),
    case(
        "simulate-min-institutions-above-count",
        "simulate",
        *OWN,
        "--min-institutions",
        "5",
    ),
    case("demo-rounds-0", "demo", "--rounds", "0"),
    case("demo-rows-too-few", "demo", "--rows", "5"),
    # ---- the scoring service and its tokens and models
    case(
        "serve-missing-policy",
        "serve",
        "--federation-policy",
        "{tmp}/nope.toml",
        *TRUST,
        "--coordinator-key",
        COORD_KEY,
        "--allow-demo-keys",
    ),
    case(
        "serve-untrusted-policy",
        "serve",
        "--federation-policy",
        CONSORTIUM,
        "--trust",
        COORD_PUB,
        "--coordinator-key",
        COORD_KEY,
        "--allow-demo-keys",
    ),
    case(
        "serve-demo-policy-not-allowed",
        "serve",
        "--federation-policy",
        CONSORTIUM,
        *TRUST,
        "--coordinator-key",
        COORD_KEY,
    ),
    case(
        "serve-stranger-coordinator-key",
        "serve",
        "--federation-policy",
        CONSORTIUM,
        *TRUST,
        "--coordinator-key",
        str(KEYS / "demo_national_bank.key"),
        "--allow-demo-keys",
    ),
    case(
        "serve-missing-coordinator-key",
        "serve",
        "--federation-policy",
        CONSORTIUM,
        *TRUST,
        "--coordinator-key",
        "{tmp}/nope.key",
        "--allow-demo-keys",
    ),
    case(
        "serve-port-zero",
        "serve",
        "--federation-policy",
        CONSORTIUM,
        *TRUST,
        "--coordinator-key",
        COORD_KEY,
        "--allow-demo-keys",
        "--port",
        "0",
    ),
    case(
        "serve-bad-db",
        "serve",
        "--federation-policy",
        CONSORTIUM,
        *TRUST,
        "--coordinator-key",
        COORD_KEY,
        "--allow-demo-keys",
        "--db",
        BAD_PG,
    ),
    case(
        "keys-issue-unknown-member",
        "keys",
        "issue",
        "--member",
        "nobody",
        "--role",
        "member",
        "--federation-policy",
        CONSORTIUM,
        *TRUST,
        "--allow-demo-keys",
        *AUDIT_DB,
    ),
    case(
        "keys-issue-unknown-role",
        "keys",
        "issue",
        "--member",
        "national_bank",
        "--role",
        "root",
        "--federation-policy",
        CONSORTIUM,
        *TRUST,
        "--allow-demo-keys",
        *AUDIT_DB,
    ),
    case(
        "keys-issue-not-a-scoring-member",
        "keys",
        "issue",
        "--member",
        "coastal_credit_union",
        "--role",
        "member",
        "--federation-policy",
        CONSORTIUM,
        *TRUST,
        "--allow-demo-keys",
        *AUDIT_DB,
    ),
    case(
        "keys-issue-bank-as-auditor",
        "keys",
        "issue",
        "--member",
        "national_bank",
        "--role",
        "auditor",
        "--federation-policy",
        CONSORTIUM,
        *TRUST,
        "--allow-demo-keys",
        *AUDIT_DB,
    ),
    case(
        "keys-issue-demo-not-allowed",
        "keys",
        "issue",
        "--member",
        "national_bank",
        "--role",
        "member",
        "--federation-policy",
        CONSORTIUM,
        *TRUST,
        *AUDIT_DB,
    ),
    case(
        "keys-issue-institution-policy",
        "keys",
        "issue",
        "--member",
        "national_bank",
        "--role",
        "member",
        "--federation-policy",
        NB,
        *TRUST,
        "--allow-demo-keys",
        *AUDIT_DB,
    ),
    case("keys-revoke-unknown", "keys", "revoke", "0123456789abcdef", *AUDIT_DB),
    case("models-list-empty", "models", "list", *AUDIT_DB),
    case("models-show-empty", "models", "show", "v1", *AUDIT_DB),
    case("models-promote-bad-version", "models", "promote", "latest", *AUDIT_DB),
    case("models-rollback-bad-db", "models", "rollback", "--db", BAD_PG),
    # ---- pki, coordinator start, node start, run
    case("pki-init-bad-host", "pki", "init", "--dir", "{tmp}/pki", "--host", "not a host!"),
    case("pki-add-node-no-pki", "pki", "add-node", "bank", "--dir", "{tmp}/nothing"),
    case("pki-status-no-pki", "pki", "status", "--dir", "{tmp}/nothing"),
    case(
        "coordinator-start-no-pki",
        "coordinator",
        "start",
        "--federation-policy",
        CONSORTIUM,
        *TRUST,
        "--allow-demo-keys",
        "--pki",
        "{tmp}/nothing",
        "--address",
        "127.0.0.1:9091",
    ),
    case(
        "coordinator-start-unsigned-policy",
        "coordinator",
        "start",
        "--federation-policy",
        "{ws}/unsigned/national_bank.toml",
        *TRUST,
        "--pki",
        "{tmp}/nothing",
        "--address",
        "127.0.0.1:9091",
    ),
    case(
        "node-start-no-ca",
        "node",
        "start",
        "--data-path",
        "{ws}/bank0",
        "--policy",
        NB,
        *TRUST,
        "--node-key",
        str(KEYS / "demo_national_bank.key"),
        "--superlink",
        "127.0.0.1:9",
        "--ca",
        "{tmp}/nope.pem",
        "--auth-key",
        "{tmp}/nope.key",
    ),
    case(
        "node-start-data-missing",
        "node",
        "start",
        "--data-path",
        "{tmp}/nope",
        "--policy",
        NB,
        *TRUST,
        "--node-key",
        str(KEYS / "demo_national_bank.key"),
        "--superlink",
        "127.0.0.1:9",
        "--ca",
        "{ws}/empty.csv",
        "--auth-key",
        "{ws}/empty.csv",
    ),
    case(
        "run-resume-nothing-to-resume",
        "run",
        "resume",
        "no-such-run",
        "--federation-policy",
        CONSORTIUM,
        *TRUST,
        "--coordinator-key",
        COORD_KEY,
        "--allow-demo-keys",
        "--runs-dir",
        "{tmp}/runs",
    ),
    case(
        "run-resume-tampered-checkpoint",
        "run",
        "resume",
        "r1",
        "--federation-policy",
        CONSORTIUM,
        *TRUST,
        "--coordinator-key",
        COORD_KEY,
        "--allow-demo-keys",
        "--runs-dir",
        "{tmp}/runs",
        pre={
            "runs": None,
            "runs/r1": None,
            "runs/r1/checkpoint": None,
            "runs/r1/checkpoint/checkpoint.json": b"{",
        },
    ),
]


def _fill(text: str, ws: Path, tmp: Path) -> str:
    return text.replace("{ws}", str(ws)).replace("{tmp}", str(tmp))


@pytest.mark.parametrize("bad", CASES)
def test_bad_input_is_one_error_line(bad: Case, ws: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    for rel, content in bad.pre:
        target = work / rel
        if content is None:
            target.mkdir(parents=True, exist_ok=True)
        elif isinstance(content, bytes):
            target.write_bytes(content)
        else:
            shutil.copy(_fill(content, ws, work), target)
    before, shared_before = snapshot(work), snapshot(ws)
    outcome = invoke([_fill(arg, ws, work) for arg in bad.args])
    problems = rule_problems(outcome, bad.secrets)
    after = snapshot(work)
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    created = sorted(after.keys() - before.keys())
    if changed:
        problems.append(f"overwritten: {changed}")
    if created:
        problems.append(f"left behind: {created}")
    if snapshot(ws) != shared_before:
        problems.append("a shared input was modified")
    assert not problems, f"{problems}\nstdout: {outcome.stdout!r}\nstderr: {outcome.stderr!r}"


# --------------------------------------------------------------------------- the real console script

PROCESS_CASES = [
    pytest.param(["data", "validate", "{tmp}/nope.csv"], id="process-validate-missing"),
    pytest.param(["schema", "show", "nosuch"], id="process-schema-unknown"),
    pytest.param(["data", "generate", "{tmp}/g.csv", "--rows", "100"], id="process-generate-existing"),
    pytest.param(
        ["policy", "verify", "{ws}/tampered/national_bank.toml", *TRUST], id="process-verify-tampered"
    ),
    pytest.param(
        [
            "audit",
            "verify",
            "--db",
            f"postgresql://user:{SECRET_PASSWORD}@127.0.0.1:1/x",
            "--trust",
            COORD_PUB,
        ],
        id="process-audit-dead-postgres",
    ),
    pytest.param(["score", str(APPLICANTS), "--model", "{ws}/garbage.pt"], id="process-score-garbage-model"),
    pytest.param(["db", "upgrade", "--db", "not-a-url"], id="process-db-not-a-url"),
    # an error the command leaves to the console script's own handling
    pytest.param(
        ["data", "partition", "{ws}/data.csv", "/proc/fedcredit_x"], id="process-partition-out-proc"
    ),
    pytest.param(["simulate", "--institution", "bank_a"], id="process-simulate-institution-without-equals"),
]


@pytest.mark.parametrize("args", PROCESS_CASES)
def test_console_script_bad_input(args: list[str], ws: Path, tmp_path: Path) -> None:
    (tmp_path / "g.csv").write_bytes(EXISTING)
    before = snapshot(tmp_path)
    outcome = run_process([_fill(arg, ws, tmp_path) for arg in args], cwd=tmp_path)
    problems = rule_problems(outcome, (SECRET_PASSWORD,))
    if snapshot(tmp_path) != before:
        problems.append("files changed or left behind")
    assert not problems, f"{problems}\nstdout: {outcome.stdout!r}\nstderr: {outcome.stderr!r}"


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 80


@pytest.fixture(autouse=True, scope="module")
def _no_stray_excepthook() -> Iterator[None]:
    """Typer installs its own excepthook when its app is called; put the test process's back."""
    saved = sys.excepthook
    yield
    sys.excepthook = saved
