"""Who sent a reply: a node signs what it contributes with its institution's key.

The coordinator never takes an institution's name from what a node reports:
it attributes a reply to the member of the federation whose registered key
signed the reply's attestation (institution, run request, kind, round, node).
A reply that no member's key signed is not counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from policies.signing import canonical_json, sign_bytes, verify_bytes

# what a signature is for, inside what it covers: a node key's signature on one kind of
# payload can never pass for another kind (its policy manifests, its refusals, its audit heads)
ATTESTATION_CONTEXT = "fedcredit reply attestation v1"


@dataclass(frozen=True)
class Attestation:
    """What a node vouches for with each reply."""

    institution: str
    request_sha256: str  # the signed training request the reply answers
    kind: str  # normalization-stats, train, evaluate, contribution-reference, refusal
    round: int  # the round for train and evaluate; 0 otherwise
    node_id: int  # the Flower node the reply came from

    def payload(self) -> bytes:
        return canonical_json({"signed": ATTESTATION_CONTEXT, **asdict(self)})

    def sign(self, key: Ed25519PrivateKey) -> str:
        return sign_bytes(key, self.payload())


def attributed_member(attestation: Attestation, signature: str, members: Mapping[str, str]) -> str | None:
    """The member ``attestation`` belongs to, if that member's key signed it; else None."""
    key = members.get(attestation.institution)
    if key is None or not verify_bytes(key, attestation.payload(), signature):
        return None
    return attestation.institution
