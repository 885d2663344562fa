from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from policies.documents import FederationPolicy, InstitutionPolicy, PolicyError, load_policy, parse_policy

from .conftest import EXAMPLES


def _text(name: str = "national_bank") -> str:
    return (EXAMPLES / f"{name}.toml").read_text()


def _error(text: str) -> str:
    with pytest.raises(PolicyError) as err:
        parse_policy(text.encode(), "p.toml")
    return str(err.value)


def test_examples_parse_and_hash_is_identity() -> None:
    policy = load_policy(EXAMPLES / "national_bank.toml")
    assert isinstance(policy, InstitutionPolicy)
    assert policy.header.version == 1 and policy.header.expires == dt.date(2027, 12, 31)
    assert "owner_gender" in policy.forbidden_features
    import hashlib

    assert policy.sha256 == hashlib.sha256((EXAMPLES / "national_bank.toml").read_bytes()).hexdigest()
    fed = load_policy(EXAMPLES / "sme_consortium.toml")
    assert isinstance(fed, FederationPolicy)
    assert fed.member("coordinator") is not None and fed.min_institutions == 3


def test_missing_policy_fails_closed(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="no policy file here; without a policy nothing is permitted"):
        load_policy(tmp_path / "absent.toml")


def test_malformed_toml() -> None:
    assert _error("kind = \n") == "p.toml: not valid TOML at line 1, column 8: invalid value"


def test_unknown_key_names_file_line_and_key() -> None:
    text = _text().replace(
        "min_local_records = 1000", "min_local_records = 1000\nshare_with_marketing = true"
    )
    line = text.splitlines().index("share_with_marketing = true") + 1
    assert (
        _error(text) == f"p.toml:{line}: data.share_with_marketing: unknown key 'share_with_marketing'; "
        "this policy format has no such setting"
    )


def test_wrong_type() -> None:
    text = _text().replace("min_local_records = 1000", 'min_local_records = "many"')
    line = text.splitlines().index('min_local_records = "many"') + 1
    assert _error(text) == f"p.toml:{line}: data.min_local_records: expected an integer, got str 'many'"
    text = _text().replace("require_secure_aggregation = false", "require_secure_aggregation = 1")
    assert "federation.require_secure_aggregation: expected true/false, got int 1" in _error(text)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "# lifetime_epsilon_budget = 10.0",
            "lifetime_epsilon_budget = 0.0",
            "privacy.lifetime_epsilon_budget: epsilon must be a finite number > 0, got 0.0",
        ),
        (
            "# lifetime_epsilon_budget = 10.0",
            "lifetime_epsilon_budget = -3",
            "epsilon must be a finite number > 0, got -3",
        ),
        (
            "# lifetime_epsilon_budget = 10.0",
            "lifetime_epsilon_budget = nan",
            "epsilon must be a finite number > 0, got nan",
        ),
        (
            "# lifetime_epsilon_budget = 10.0",
            "lifetime_epsilon_budget = inf",
            "epsilon must be a finite number > 0, got inf",
        ),
        ("delta = 1e-5", "delta = nan", "privacy.delta: delta must be between 0 and 1 (exclusive), got nan"),
        (
            "expires = 2027-12-31",
            "expires = 2025-12-31",
            "expires: expires 2025-12-31 is before effective 2026-01-01",
        ),
        ("delta = 1e-5", "delta = 1.5", "privacy.delta: delta must be between 0 and 1 (exclusive), got 1.5"),
        (
            '["credit_underwriting", "risk_monitoring"]',
            '["credit_underwriting", "marketing"]',
            "'marketing' can never be an allowed purpose",
        ),
        (
            '["credit_underwriting", "risk_monitoring"]',
            '["credit_underwriting", "astrology"]',
            "'astrology' is not one of",
        ),
        ("\nversion = 1", "\nversion = 0", "version: must be a finite number > 0, got 0"),
        ("format_version = 1", "format_version = 9", "unsupported format_version 9"),
    ],
)
def test_impossible_values(old: str, new: str, message: str) -> None:
    text = _text()
    assert old in text
    assert message in _error(text.replace(old, new, 1))


def test_missing_required_key() -> None:
    text = _text().replace('owner = "Compliance Office, National Bank (DEMO)"\n', "")
    assert "missing required key 'owner'" in _error(text)


def test_federation_policy_checks() -> None:
    text = _text("sme_consortium")
    assert "min_institutions: 9 exceeds the 5 data holder(s)" in _error(
        text.replace("min_institutions = 3", "min_institutions = 9")
    )
    assert "'somebody' is not a member" in _error(
        text.replace('allowed_members = ["national_bank"', 'allowed_members = ["somebody"')
    )
    assert "rounds: 80 exceeds max_rounds 50" in _error(text.replace("rounds = 10\n", "rounds = 80\n"))
    # one key for two members: a reply signed with it could be counted as either
    online = 'public_key = "ed25519:hKOgKOAh/6W51BIB3L1lg13EheMga/JMwaMgVWwUVhA="'
    national = 'public_key = "ed25519:+HIRcc++XM7QSKT5l6TQJVD4saTfncbVvzVGkJ0JCaw="'
    assert online in text and national in text
    assert "['national_bank', 'online_bank'] share one public key" in _error(text.replace(online, national))


def test_institution_policy_run_limits() -> None:
    policy = load_policy(EXAMPLES / "national_bank.toml")
    assert isinstance(policy, InstitutionPolicy)
    assert (policy.max_request_age_minutes, policy.max_runs_per_day, policy.max_rounds_per_run) == (
        60,
        24,
        100,
    )
    text = _text().replace(
        "min_institutions_per_round = 3\n", "min_institutions_per_round = 3\nmax_runs_per_day = 0\n"
    )
    assert "federation.max_runs_per_day: must be a finite number > 0, got 0" in _error(text)


def test_federation_secure_aggregation_and_client_dp_settings() -> None:
    text = _text("sme_consortium")
    default = parse_policy(text.encode(), "p.toml")
    assert isinstance(default, FederationPolicy)
    assert default.secure_aggregation_shares is None and default.reconstruction_threshold is None
    assert default.client_dp is None

    def privacy(extra: str) -> str:
        return text.replace("delta = 1e-5\n", f"delta = 1e-5\n{extra}\n")

    set_ = parse_policy(
        privacy(
            "secure_aggregation_shares = 5\nreconstruction_threshold = 3\n"
            "[privacy.client_dp]\nnoise_multiplier = 0.8\nclipping_norm = 2"
        ).encode(),
        "p.toml",
    )
    assert isinstance(set_, FederationPolicy)
    assert (set_.secure_aggregation_shares, set_.reconstruction_threshold) == (5, 3)
    assert set_.client_dp is not None and set_.client_dp.clipping_norm == 2.0
    assert "privacy.secure_aggregation_shares: must be an odd number >= 3, got 4" in _error(
        privacy("secure_aggregation_shares = 4")
    )
    assert (
        "privacy.reconstruction_threshold: must be more than half of secure_aggregation_shares (5)"
        in _error(privacy("secure_aggregation_shares = 5\nreconstruction_threshold = 2"))
    )
    assert "privacy.client_dp.noise_multiplier: must be a finite number > 0, got 0" in _error(
        privacy("[privacy.client_dp]\nnoise_multiplier = 0\nclipping_norm = 1")
    )
    assert "privacy.client_dp.sigma: unknown key" in _error(
        privacy("[privacy.client_dp]\nnoise_multiplier = 1\nclipping_norm = 1\nsigma = 2")
    )


def test_a_folder_is_not_a_missing_policy(tmp_path: Path) -> None:
    (tmp_path / "p.toml").mkdir()
    with pytest.raises(PolicyError) as err:
        load_policy(tmp_path / "p.toml")
    assert str(err.value) == f"{tmp_path / 'p.toml'}: is a folder, not a policy TOML file"


def test_policy_file_errors_are_one_line() -> None:
    assert _error("") == "p.toml: is empty (no TOML keys); expected a policy"
    assert _error('id = "unterminated') == (
        "p.toml: not valid TOML at the end of the file (line 1): unterminated string"
    )
    with pytest.raises(PolicyError) as err:
        parse_policy(b'owner = "Caf\xe9"\n', "p.toml")
    assert str(err.value) == "p.toml: not UTF-8 text (byte 12); a policy is a TOML file"


def test_a_policy_with_a_byte_order_mark_is_read_and_hashed_as_is(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbf" + (EXAMPLES / "national_bank.toml").read_bytes()
    policy = parse_policy(data, "p.toml")
    import hashlib

    assert isinstance(policy, InstitutionPolicy)
    assert policy.sha256 == hashlib.sha256(data).hexdigest()


def test_toml_reading_is_shared_and_keeps_each_callers_error(tmp_path: Path) -> None:
    from federation.errors import SchemaError
    from policies.toml_files import TomlFileError, load_toml

    path = tmp_path / "x.toml"
    path.write_text("a = 1\nb = \n")
    expected = f"{path}: not valid TOML at line 2, column 5: invalid value"
    for error in (TomlFileError, PolicyError, SchemaError):
        with pytest.raises(error) as err:
            load_toml(path, "thing", error)
        assert str(err.value) == expected
    with pytest.raises(TomlFileError, match=r"no such file; expected a thing TOML file"):
        load_toml(tmp_path / "absent.toml", "thing")
    path.write_text("a = 1\n")
    assert load_toml(path, "thing") == {"a": 1}


def test_toml_files_does_not_reach_above_policies() -> None:
    import subprocess
    import sys

    code = (
        "import sys, policies.toml_files; print(sorted(m for m in sys.modules if m.startswith('federation')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
