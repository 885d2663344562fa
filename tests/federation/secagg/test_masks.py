"""SecAgg+ masks: the whole seed matters, the output is what Flower's workflow expects."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest
from Crypto.Cipher import ChaCha20
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen as flower_masks

from coordinator.secure_aggregation import MODULUS_RANGE
from federation.secagg.masks import pseudo_rand_gen

SHAPES = [(16, 8), (8,), (), (3, 2, 2)]


def test_same_seed_same_masks_in_flowers_shapes_and_dtype() -> None:
    seed = os.urandom(32)
    first, second = pseudo_rand_gen(seed, MODULUS_RANGE, SHAPES), pseudo_rand_gen(seed, MODULUS_RANGE, SHAPES)
    reference = flower_masks(seed, MODULUS_RANGE, SHAPES)
    for a, b, ref in zip(first, second, reference, strict=True):
        assert a.shape == ref.shape and a.dtype == ref.dtype == np.int64
        assert np.array_equal(a, b)


def test_masks_are_uniform_over_the_modulus() -> None:
    values = pseudo_rand_gen(os.urandom(32), MODULUS_RANGE, [(200_000,)])[0]
    assert values.min() >= 0 and values.max() < MODULUS_RANGE
    assert abs(values.mean() / MODULUS_RANGE - 0.5) < 0.005
    top_bit = (values >> 41) & 1  # the highest bit of the range is set half the time
    assert abs(top_bit.mean() - 0.5) < 0.005


def test_every_byte_of_the_seed_counts_unlike_flowers_32_bit_fold() -> None:
    seed = os.urandom(32)
    # flip the same bit in two 4-byte words: Flower XOR-folds the seed to 32 bits, so this cancels
    twin = bytearray(seed)
    twin[0] ^= 1
    twin[4] ^= 1
    assert np.array_equal(
        flower_masks(seed, MODULUS_RANGE, [(64,)])[0], flower_masks(bytes(twin), MODULUS_RANGE, [(64,)])[0]
    )  # the weakness this module removes
    reference = pseudo_rand_gen(seed, MODULUS_RANGE, [(64,)])[0]
    for i in range(len(seed)):
        flipped = bytearray(seed)
        flipped[i] ^= 0x80
        assert not np.array_equal(pseudo_rand_gen(bytes(flipped), MODULUS_RANGE, [(64,)])[0], reference)


def test_the_stream_is_chacha20_of_the_hashed_seed_and_runs_on_across_arrays() -> None:
    """Known answer from an independent ChaCha20 (pycryptodome, RFC 7539, counter 0, zero nonce)."""
    seed = os.urandom(44)  # a pairwise key as Flower passes it: 32 bytes, base64
    key = hashlib.sha256(b"fedcredit secagg+ mask v1" + seed).digest()
    stream = ChaCha20.new(key=key, nonce=bytes(12)).encrypt(bytes(8 * 30))
    expected = np.frombuffer(stream, dtype="<u8") & np.uint64(MODULUS_RANGE - 1)
    masks = pseudo_rand_gen(seed, MODULUS_RANGE, [(4, 5), (), (9,)])
    assert np.array_equal(np.concatenate([m.ravel() for m in masks]), expected.astype(np.int64))
    assert not np.array_equal(masks[0].ravel()[:9], masks[2])  # each array has its own part of the stream


@pytest.mark.parametrize(
    ("seed", "num_range", "message"),
    [
        (bytes(32), 3 * 2**40, "power of two"),
        (bytes(32), 1, "power of two"),
        (bytes(32), 2**64, "power of two"),
        (bytes(8), MODULUS_RANGE, "at least 16 bytes"),
    ],
)
def test_bad_arguments_are_refused(seed: bytes, num_range: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        pseudo_rand_gen(seed, num_range, [(4,)])
