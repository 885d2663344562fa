"""A model card for tests that save a model."""

from __future__ import annotations

import hashlib

from federation.model_card import ModelCard, schema_sha256
from federation.schema import resolve_schema


def card_for_tests(
    schema: str = "sme",
    run_id: str = "test",
    institutions: tuple[str, ...] = ("bank_a", "bank_b"),
    metrics: dict[str, float] | None = None,
    demo: bool = True,
) -> ModelCard:
    """The card of a test model trained under ``schema`` (a name or a file)."""
    resolved = resolve_schema(schema)
    return ModelCard(
        run_id=run_id,
        schema_name=resolved.name,
        schema_version=resolved.version,
        schema_sha256=schema_sha256(resolved),
        federation_policy_sha256=None,
        training_request_sha256=hashlib.sha256(f"request {run_id}".encode()).hexdigest(),
        institutions=institutions,
        metrics={} if metrics is None else metrics,
        created_at="2025-01-01T00:00:00+00:00",
        demo=demo,
    )
