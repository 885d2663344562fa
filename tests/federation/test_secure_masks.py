"""SecAgg+ masks: the whole seed matters, the output is what Flower's workflow expects."""

from __future__ import annotations

import os

import numpy as np
import pytest
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen as flower_masks

from coordinator.secure_aggregation import MODULUS_RANGE
from federation.secure_masks import pseudo_rand_gen

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
    twin_seed = bytes(twin)
    flower_a, flower_b = (
        flower_masks(seed, MODULUS_RANGE, [(64,)]),
        flower_masks(twin_seed, MODULUS_RANGE, [(64,)]),
    )
    assert np.array_equal(flower_a[0], flower_b[0])  # the weakness this module removes
    ours_a, ours_b = (
        pseudo_rand_gen(seed, MODULUS_RANGE, [(64,)]),
        pseudo_rand_gen(twin_seed, MODULUS_RANGE, [(64,)]),
    )
    assert not np.array_equal(ours_a[0], ours_b[0])


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
