"""The real ``fedcredit`` console script, run as a careless operator or a dishonest party would:
an expected failure is one line on stderr and exit code 2, never a traceback, a password or an
applicant's data; the published demo keys and the federation policy are never silently used."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sqlalchemy.exc import OperationalError

from coordinator.score_cli import EXAMPLE_APPLICANT
from federation.loading import load_dataset
from federation.model import FourDimensionModel, save_model
from federation.schema import resolve_schema
from policies.cli_errors import error_line
from policies.demo_keys import EXAMPLES

from ..federation.model_helpers import card_for_tests

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = EXAMPLE_APPLICANT
DEAD_DB = "postgresql+psycopg://postgres:s3cretpw@127.0.0.1:1/test"
CONSORTIUM = [
    *("--federation-policy", str(EXAMPLES / "sme_consortium.toml")),
    *("--trust", str(EXAMPLES / "keys" / "demo_consortium.pub")),
]


def fedcredit(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """The installed console script's entry point, ``coordinator.cli:main``, in a fresh process."""
    code = "import sys; from coordinator.cli import main; sys.argv[0] = 'fedcredit'; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=180
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output and "locals" not in output, output
    (line,) = output.strip().splitlines()  # on stderr; policies' own commands print theirs on stdout
    assert line.startswith("error: "), output
    for text in expected:
        assert text in line, line
    return line


def test_the_console_script_is_main() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert 'fedcredit = "coordinator.cli:main"' in text


def test_a_dead_database_is_one_line_without_its_password() -> None:
    result = fedcredit("audit", "verify", "--db", DEAD_DB, "--trust", str(EXAMPLES / "keys"))
    assert "s3cretpw" not in result.stdout + result.stderr
    assert_one_line_error(result, "127.0.0.1", "port 1")


def test_any_command_that_meets_a_dead_database_is_one_line_without_its_password() -> None:
    """``main`` itself: a command of the real app that lets the database error through."""
    code = (
        "import sys\n"
        "from sqlmodel import Session, text\n"
        "from coordinator.cli import app, main\n"
        "from policies.audit import create_audit_engine\n"
        "@app.command('touch-db')\n"
        "def touch_db() -> None:\n"
        f"    url = {DEAD_DB!r}\n"
        "    with Session(create_audit_engine(url)) as session:\n"
        "        session.exec(text('SELECT 1'))\n"
        "sys.argv = ['fedcredit', 'touch-db']\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert "s3cretpw" not in result.stdout + result.stderr
    assert_one_line_error(result, "error: database: ", "127.0.0.1", "port 1")


def test_a_database_error_never_shows_its_sql_parameters_or_password() -> None:
    driver = RuntimeError("password authentication failed for user 'postgres'\nDETAIL: more")
    exc = OperationalError("SELECT * FROM applicants WHERE id = %(id)s", {"id": "APPLICANT-7"}, driver)
    assert error_line(exc) == "database: password authentication failed for user 'postgres'"
    assert error_line(OSError("no route to postgresql://u:pw@db/x")) == "no route to postgresql://u:***@db/x"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained model: enough to score with."""
    data = load_dataset(EXAMPLE, resolve_schema("sme"), require_label=False, min_rows=1)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.manual_seed(0)
    save_model(FourDimensionModel(data.layout), path, card_for_tests())
    return path


def test_score_on_applicants_that_do_not_fit_the_model_shows_no_applicant(
    model: Path, tmp_path: Path
) -> None:
    """Read under another schema, the applicants used to crash the model with a traceback listing
    every local variable: their ids and values."""
    schema = tmp_path / "sme_other.toml"
    text = (ROOT / "federation" / "schemas" / "sme.toml").read_text()
    schema.write_text(
        text.replace('name = "monthly_revenue"\n', 'name = "monthly_revenue"\nprotected = true\n', 1)
    )
    result = fedcredit("score", str(EXAMPLE), "--model", str(model), "--schema", str(schema))
    assert "grocery-couple" not in result.stdout + result.stderr
    assert_one_line_error(result, "other columns or ranges than the model", str(model))


def test_score_on_a_broken_file_or_model_is_one_line(model: Path, tmp_path: Path) -> None:
    broken = tmp_path / "applicants.csv"
    broken.write_bytes(b"\x00\xff\xfe not a csv")
    assert_one_line_error(fedcredit("score", str(broken), "--model", str(model)), str(broken))
    not_a_model = tmp_path / "model.pt"
    not_a_model.write_text("garbage")
    assert_one_line_error(
        fedcredit("score", str(EXAMPLE), "--model", str(not_a_model)), "not a FedCredit model file"
    )


def test_an_unexpected_failure_is_a_short_traceback_without_locals() -> None:
    code = (
        "import sys\n"
        "from coordinator.cli import app, main\n"
        "@app.command('explode')\n"
        "def explode() -> None:\n"
        "    password = 'hunter2-local'\n"
        "    raise RuntimeError('unexpected')\n"
        "sys.argv = ['fedcredit', 'explode']\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "RuntimeError" in result.stderr and "unexpected" in result.stderr
    assert "hunter2-local" not in result.stderr.replace("password = 'hunter2-local'", "")


def test_simulate_refuses_institutions_the_federation_policy_does_not_list(tmp_path: Path) -> None:
    result = fedcredit("simulate", *CONSORTIUM, "--allow-demo-keys", "--institutions", "8", cwd=tmp_path)
    assert_one_line_error(
        result, "federation.sme-consortium v1", "inland_savings_bank", "west_farmers_coop", "city_bank_south"
    )
    assert not (tmp_path / "var" / "runs").exists() or not any((tmp_path / "var" / "runs").iterdir())


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--strategy", "fedprox"], ["--strategy fedprox", "strategy fedavg"]),
        (["--rounds", "3"], ["--rounds 3", "rounds 10"]),
        (["--no-secure-aggregation"], ["requires secure aggregation"]),
    ],
)
def test_simulate_never_silently_overrides_what_the_operator_asked(
    tmp_path: Path, options: list[str], expected: list[str]
) -> None:
    result = fedcredit("simulate", *CONSORTIUM, "--allow-demo-keys", *options, cwd=tmp_path)
    assert_one_line_error(result, "federation.sme-consortium v1", *expected)


def test_simulate_refuses_the_published_demo_keys_unless_asked(tmp_path: Path) -> None:
    line = assert_one_line_error(fedcredit("simulate", *CONSORTIUM, cwd=tmp_path), "--allow-demo-keys")
    assert "demo_coordinator" in line and "demo_consortium" in line and "example policies" in line
    own_key = ["--coordinator-key", str(EXAMPLES / "keys" / "demo_coordinator.key")]
    assert_one_line_error(
        fedcredit("simulate", *own_key, cwd=tmp_path), "demo_coordinator", "--allow-demo-keys"
    )
