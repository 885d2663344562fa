"""federation.secagg.shamir against Flower's own Shamir sharing (pycryptodome underneath)."""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable

import pytest
from Crypto.Protocol import SecretSharing
from Crypto.Protocol.SecretSharing import _Element
from flwr.common.secure_aggregation.crypto import shamir as flower_shamir

from federation.secagg import shamir

# the secrets SecAgg+ shares: a 32-byte mask seed and a PEM private key; and edge sizes
SIZES = [0, 1, 15, 16, 17, 32, 306]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(("threshold", "num"), [(2, 3), (6, 10)])
def test_shares_combine_with_flowers_implementation_both_ways(size: int, threshold: int, num: int) -> None:
    secret = os.urandom(size)
    ours = shamir.create_shares(secret, threshold, num)
    theirs = flower_shamir.create_shares(secret, threshold, num)
    assert [len(s) for s in ours] == [len(s) for s in theirs]
    assert [s[:4] for s in ours] == [s[:4] for s in theirs]
    assert flower_shamir.combine_shares(ours[:threshold]) == secret
    assert shamir.combine_shares(theirs[-threshold:]) == secret
    assert shamir.combine_shares(ours) == secret


def test_any_threshold_subset_in_any_order_rebuilds_the_secret() -> None:
    secret = os.urandom(32)
    shares = shamir.create_shares(secret, 3, 5)
    rng = random.Random(7)
    for subset in itertools.combinations(shares, 3):
        picked = list(subset)
        rng.shuffle(picked)
        assert shamir.combine_shares(picked) == secret


def test_fewer_than_threshold_shares_do_not_rebuild_the_secret() -> None:
    secret = os.urandom(32)
    shares = shamir.create_shares(secret, 4, 6)
    for subset in itertools.combinations(shares, 3):
        try:
            assert shamir.combine_shares(list(subset)) != secret
        except ValueError as exc:  # the interpolated padding is not valid PKCS#7
            assert "Failed to combine shares" in str(exc)


def test_every_split_draws_fresh_coefficients() -> None:
    secret = os.urandom(32)
    first, second = shamir.create_shares(secret, 3, 5), shamir.create_shares(secret, 3, 5)
    assert all(a != b for a, b in zip(first, second, strict=True))
    # equal chunks get their own coefficients: a share must not reveal chunk_a XOR chunk_b
    share = shamir.create_shares(bytes(16) * 2, 3, 5)[0]
    assert share[4:20] != share[20:36]


def test_same_random_bytes_give_byte_identical_shares_to_pycryptodome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Same field, same polynomial, same encoding: with the same coefficients the shares are equal."""

    def stream(seed: int) -> Callable[[int], bytes]:
        rng = random.Random(seed)
        return lambda n: rng.randbytes(n)

    secret = b"mask seed"  # one chunk: Flower splits chunks on a thread pool, so only one is ordered
    for threshold, num in [(2, 3), (6, 10), (9, 9)]:
        monkeypatch.setattr(SecretSharing, "rng", stream(threshold))
        monkeypatch.setattr(shamir.secrets, "token_bytes", stream(threshold))
        assert shamir.create_shares(secret, threshold, num) == flower_shamir.create_shares(
            secret, threshold, num
        )


def test_field_arithmetic_matches_pycryptodome() -> None:
    rng = random.Random(11)
    for _ in range(200):
        a, b = rng.getrandbits(128), rng.getrandbits(128)
        assert shamir._mul(a, b) == int(_Element(a) * _Element(b))
        assert shamir._mul(a, shamir._inverse(a or 1)) == 1


@pytest.mark.parametrize(
    ("shares", "message"),
    [
        ([], "no shares"),
        ([b"\x01\x00\x00\x00" + bytes(16), b"\x01\x00\x00\x00" + bytes(16)], "duplicate"),
        ([b"\x01\x00\x00\x00" + bytes(16), b"\x02\x00\x00\x00" + bytes(32)], "differ in length"),
        ([b"\x01\x00\x00\x00" + bytes(5)], "malformed"),
        ([b"\x00\x00\x00\x00" + bytes(16), b"\x02\x00\x00\x00" + bytes(16)], "zero share index"),
    ],
)
def test_malformed_shares_are_refused(shares: list[bytes], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        shamir.combine_shares(shares)


@pytest.mark.parametrize(("threshold", "num"), [(0, 3), (4, 3)])
def test_impossible_threshold_is_refused(threshold: int, num: int) -> None:
    with pytest.raises(ValueError, match="threshold"):
        shamir.create_shares(b"secret", threshold, num)
