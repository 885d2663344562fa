"""The model registry on SQLite and PostgreSQL: numbered versions, one active, rollbacks walk back."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from policies.audit import AuditEntry
from policies.registry import (
    Registration,
    RegistryError,
    active_version,
    parse_version,
    promote,
    register,
    rollback,
    versions,
)


def _registration(run_id: str, federation: str = "fed.a") -> Registration:
    return Registration(
        federation=federation,
        run_id=run_id,
        model_path=f"/models/{run_id}/model.pt",
        model_sha256="a" * 64,
        schema_name="sme",
        schema_version="1.0.0",
        schema_sha256="b" * 64,
        federation_policy_sha256="c" * 64,
        institutions=(("bank_a", "d" * 64), ("bank_b", None)),
        rounds=3,
        metrics={"global": {"auc": 0.75}, "institutions": {"bank_a": {"holdout_auc": 0.7}}},
        epsilon=2.5,
        demo=False,
    )


def test_versions_are_numbered_per_federation_and_the_first_is_active(engine: Engine) -> None:
    with Session(engine) as session:
        first = register(session, _registration("r1"), "coordinator")
        second = register(session, _registration("r2"), "coordinator")
        other = register(session, _registration("r1", "fed.b"), "coordinator")
        session.commit()
        assert (first.label, second.label, other.label) == ("v1", "v2", "v1")
        assert active_version(session, "fed.a").version == 1  # type: ignore[union-attr]
        summary = versions(session, "fed.a")[1].summary()
        assert summary["institutions"] == [
            {"name": "bank_a", "policy_sha256": "d" * 64},
            {"name": "bank_b", "policy_sha256": None},
        ]
        assert summary["metrics"]["global"]["auc"] == 0.75 and summary["epsilon"] == 2.5
        actions = [e.action for e in session.exec(select(AuditEntry).order_by(AuditEntry.seq))]  # type: ignore[arg-type]
    assert actions == ["model.version", "model.promote", "model.version", "model.version", "model.promote"]


def test_rollbacks_walk_back_through_what_was_active(engine: Engine) -> None:
    with Session(engine) as session:
        for run in ("r1", "r2", "r3"):
            register(session, _registration(run), "coordinator")
        promote(session, "fed.a", 2, "admin")
        promote(session, "fed.a", 3, "admin")
        assert rollback(session, "fed.a", "admin").version == 2
        assert rollback(session, "fed.a", "admin").version == 1
        with pytest.raises(RegistryError, match="nothing to roll back to"):
            rollback(session, "fed.a", "admin")
        promote(session, "fed.a", 3, "admin")
        assert rollback(session, "fed.a", "admin").version == 1
        with pytest.raises(RegistryError, match="already the active version"):
            promote(session, "fed.a", 1, "admin")
        with pytest.raises(RegistryError, match="no model version v9"):
            promote(session, "fed.a", 9, "admin")
        with pytest.raises(RegistryError, match="no active model version"):
            rollback(session, "fed.none", "admin")


@pytest.mark.parametrize("text", ["v0", "x", "", "v-1", "1.5", "vv2"])
def test_a_version_is_written_v1_v2(text: str) -> None:
    with pytest.raises(RegistryError, match="is not a model version"):
        parse_version(text)
    assert parse_version("v12") == parse_version("12") == 12
