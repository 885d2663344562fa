"""FedCredit's published demo keys (``policies/examples/keys``): anyone can sign with them.

They exist so that the demo runs anywhere; whatever they sign is a demo, and is
refused or marked DEMO wherever it is met.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from policies.signing import read_public_keys

EXAMPLES = Path(__file__).resolve().parent / "examples"
DEMO_KEYS = EXAMPLES / "keys"
DEMO_COORDINATOR_KEY = DEMO_KEYS / "demo_coordinator.key"


@cache
def _demo_public_keys() -> dict[str, str]:
    return {read_public_keys(pub)[0]: pub.stem for pub in sorted(DEMO_KEYS.glob("demo_*.pub"))}


def demo_key_name(public_key: str) -> str | None:
    """The name of the published demo key (e.g. ``demo_coordinator``) that ``public_key`` is, else None."""
    return _demo_public_keys().get(public_key.strip())
