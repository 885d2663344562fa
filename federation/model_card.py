"""The model card: what a trained model is, who made it and how, carried inside the model file."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from federation.errors import FedCreditError, SchemaError
from federation.schema import Schema, builtin_schema_path, load_schema, schema_to_dict

_SHA256 = re.compile(r"[0-9a-f]{64}")

# field -> (what it must be, as said in an error message)
_FIELDS: dict[str, str] = {
    "run_id": "a non-empty string",
    "schema_name": "a non-empty string",
    "schema_version": "a non-empty string",
    "schema_sha256": "a sha256 (64 lowercase hex digits) or null",
    "federation_policy_sha256": "a sha256 (64 lowercase hex digits) or null",
    "training_request_sha256": "a sha256 (64 lowercase hex digits)",
    "institutions": "a list of non-empty strings, each once",
    "metrics": "an object of finite numbers",
    "created_at": "an ISO 8601 UTC time",
    "demo": "true or false",
}


def utc_now() -> str:
    """The current UTC time as the card writes it (ISO 8601, to the second)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def schema_sha256(schema: Schema) -> str:
    """sha256 of the schema's canonical JSON (``schema_to_dict``, sorted keys, no spaces).

    It identifies the schema's content, whatever file or formatting it was read from.
    """
    text = json.dumps(schema_to_dict(schema), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _problem(name: str, value: Any) -> str | None:
    """Why ``value`` is not a valid ``name`` field, or None if it is."""
    if name in ("run_id", "schema_name", "schema_version"):
        ok = isinstance(value, str) and bool(value.strip())
    elif name in ("schema_sha256", "federation_policy_sha256"):
        ok = value is None or (isinstance(value, str) and _SHA256.fullmatch(value) is not None)
    elif name == "training_request_sha256":
        ok = isinstance(value, str) and _SHA256.fullmatch(value) is not None
    elif name == "institutions":
        ok = (
            isinstance(value, list | tuple)
            and all(isinstance(v, str) and v.strip() for v in value)
            and len(set(value)) == len(value)
        )
    elif name == "metrics":
        ok = isinstance(value, dict) and all(
            isinstance(k, str)
            and isinstance(v, int | float)
            and not isinstance(v, bool)
            and math.isfinite(float(v))
            for k, v in value.items()
        )
    elif name == "created_at":
        ok = isinstance(value, str) and _utc_time(value) is not None
    elif name == "demo":
        ok = isinstance(value, bool)
    else:  # pragma: no cover - every field is listed above
        raise AssertionError(name)
    if ok:
        return None
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return f"field {name!r} must be {_FIELDS[name]}, got {shown}"


def _utc_time(text: str) -> dt.datetime | None:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None or when.utcoffset() != dt.timedelta(0):
        return None
    return when


@dataclass(frozen=True)
class ModelCard:
    """Identity and provenance of a trained model.

    A schema is identified by its name and version; ``schema_sha256`` (see :func:`schema_sha256`)
    pins its exact content when known. ``institutions`` are the members whose updates reached
    the model; ``metrics`` the final test-set metrics (empty when the run had no test set).
    """

    run_id: str
    schema_name: str
    schema_version: str
    training_request_sha256: str
    federation_policy_sha256: str | None = None
    schema_sha256: str | None = None
    institutions: tuple[str, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: str = field(default_factory=utc_now)
    demo: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "institutions", tuple(self.institutions))
        if isinstance(self.metrics, dict):
            object.__setattr__(
                self,
                "metrics",
                {
                    k: float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
                    for k, v in self.metrics.items()
                },
            )
        for name in _FIELDS:
            problem = _problem(name, getattr(self, name))
            if problem is not None:
                raise FedCreditError(f"model card: {problem}")

    def schema(self, given: Schema | None = None, source: str = "") -> Schema:
        """The schema to score with: ``given`` (read from ``source``), else the built-in schema of the
        card's name; either way it must be the one the model was trained on, by name, version and
        (when recorded) content."""
        trained = f"{self.schema_name} {self.schema_version}"
        where = source or "the shipped schema"
        if given is None:
            try:
                given = load_schema(builtin_schema_path(self.schema_name))
            except SchemaError:
                raise FedCreditError(
                    f"the model was trained on schema {trained}, which FedCredit does not ship; "
                    "pass that schema's file with --schema"
                ) from None
        if (given.name, given.version) != (self.schema_name, self.schema_version):
            raise FedCreditError(
                f"{where}: is schema {given.name} {given.version}, but the model was trained on schema "
                f"{trained}; score with that schema"
            )
        if self.schema_sha256 is not None and schema_sha256(given) != self.schema_sha256:
            raise FedCreditError(
                f"{where}: schema {trained} with other columns or ranges than the model was trained on; "
                "score with the schema file it was trained with"
            )
        return given

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists, strings, numbers, booleans, null)."""
        return {
            "run_id": self.run_id,
            "schema_name": self.schema_name,
            "schema_version": self.schema_version,
            "schema_sha256": self.schema_sha256,
            "federation_policy_sha256": self.federation_policy_sha256,
            "training_request_sha256": self.training_request_sha256,
            "institutions": list(self.institutions),
            "metrics": dict(self.metrics),
            "created_at": self.created_at,
            "demo": self.demo,
        }

    def to_json(self) -> str:
        """The card as canonical JSON (sorted keys, no spaces): what the model file stores."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, raw: Any, source: str = "model card") -> ModelCard:
        """Check and read a card; ``source`` (the file it came from) names it in every error."""
        if not isinstance(raw, dict):
            raise FedCreditError(
                f"{source}: malformed model card: expected an object, got {type(raw).__name__}"
            )
        missing = [name for name in _FIELDS if name not in raw]
        unknown = sorted(str(k) for k in raw if k not in _FIELDS)
        if missing or unknown:
            said = [f"missing {', '.join(missing)}"] if missing else []
            said += [f"unknown {', '.join(unknown)}"] if unknown else []
            raise FedCreditError(f"{source}: malformed model card: {'; '.join(said)}")
        for name in _FIELDS:
            problem = _problem(name, raw[name])
            if problem is not None:
                raise FedCreditError(f"{source}: malformed model card: {problem}")
        return cls(
            run_id=raw["run_id"],
            schema_name=raw["schema_name"],
            schema_version=raw["schema_version"],
            schema_sha256=raw["schema_sha256"],
            federation_policy_sha256=raw["federation_policy_sha256"],
            training_request_sha256=raw["training_request_sha256"],
            institutions=tuple(raw["institutions"]),
            metrics={k: float(v) for k, v in raw["metrics"].items()},
            created_at=raw["created_at"],
            demo=raw["demo"],
        )

    @classmethod
    def from_json(cls, text: Any, source: str = "model card") -> ModelCard:
        if not isinstance(text, str):
            raise FedCreditError(
                f"{source}: malformed model card: expected JSON text, got {type(text).__name__}"
            )
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise FedCreditError(f"{source}: malformed model card: not JSON ({exc})") from None
        return cls.from_dict(raw, source)
