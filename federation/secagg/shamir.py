"""Shamir secret sharing for SecAgg+, interchangeable with Flower's.

Flower's SecAgg+ splits each node's secrets (its mask seed and its PEM-encoded
private key, 3 and 20 chunks of 16 bytes) with pycryptodome's ``Shamir``,
whose GF(2^128) arithmetic is pure Python bit by bit and which redoes the
Lagrange interpolation, with an inversion per share, for every chunk. On 10
institutions that cost the coordinator about 0.1 s per round, and several
seconds for larger federations (``benchmarks/secagg_crypto.py``).

This module computes the same thing faster: the same field (x^128 + x^7 + x^2
+ x + 1, integer bit i is the coefficient of x^i), the same 16-byte big-endian
encoding and the same share layout as ``flwr.common.secure_aggregation.crypto
.shamir`` (4-byte little-endian index, then one 16-byte share per chunk of the
PKCS#7-padded secret). Shares from either implementation combine with the
other. Lagrange coefficients depend only on which indices are present, so they
are computed once per set of indices, not per chunk; loops and branches run
over the bits of the public operand (share index or coefficient), never over
secret bits (Python integers are not constant-time; neither is pycryptodome).

Stricter than pycryptodome: a share with index 0 (which would be the secret
itself), shares of different lengths and an impossible threshold are refused.
"""

from __future__ import annotations

import secrets
from functools import lru_cache

from Crypto.Util.Padding import pad, unpad

FIELD_BITS = 128
_LOW = (1 << FIELD_BITS) - 1
_MODULUS = (1 << FIELD_BITS) | 0x87  # x^128 + x^7 + x^2 + x + 1


def _clmul(secret: int, public: int) -> int:
    """Carry-less product of two GF(2) polynomials; loops over the bits of ``public`` only."""
    product = 0
    while public:
        if public & 1:
            product ^= secret
        secret <<= 1
        public >>= 1
    return product


def _mul(secret: int, public: int) -> int:
    """``secret * public`` in GF(2^128)."""
    product = _clmul(secret, public)
    # fold bits 128.. back with x^128 = x^7 + x^2 + x + 1; two folds always suffice
    for _ in range(2):
        high = product >> FIELD_BITS
        product = (product & _LOW) ^ high ^ (high << 1) ^ (high << 2) ^ (high << 7)
    return product


def _inverse(value: int) -> int:
    """The multiplicative inverse of a (public) ``value``, by the extended Euclidean algorithm."""
    if value == 0:
        raise ValueError("zero has no inverse")
    r0, r1, s0, s1 = value, _MODULUS, 1, 0
    while r1:
        quotient, remainder = 0, r0
        while remainder.bit_length() >= r1.bit_length():
            shift = remainder.bit_length() - r1.bit_length()
            quotient ^= 1 << shift
            remainder ^= r1 << shift
        r0, r1 = r1, remainder
        s0, s1 = s1, s0 ^ _clmul(s1, quotient)
    return s0


@lru_cache(maxsize=256)
def lagrange_at_zero(indices: tuple[int, ...]) -> tuple[int, ...]:
    """The coefficients that give p(0) from p(x_1), ..., p(x_k) (subtraction is XOR here)."""
    coefficients = []
    for j, x_j in enumerate(indices):
        numerator, denominator = 1, 1
        for m, x_m in enumerate(indices):
            if m != j:
                numerator = _mul(numerator, x_m)
                denominator = _mul(denominator, x_j ^ x_m)
        coefficients.append(_mul(numerator, _inverse(denominator)))
    return tuple(coefficients)


def create_shares(secret: bytes, threshold: int, num: int) -> list[bytes]:
    """``num`` shares of ``secret``; any ``threshold`` of them rebuild it, fewer reveal nothing."""
    if not 1 <= threshold <= num < 2**32:
        raise ValueError(f"need 1 <= threshold <= num < 2**32, got threshold {threshold}, num {num}")
    padded = pad(secret, 16)
    # per chunk: the chunk is the constant term, the other coefficients uniform random
    polynomials = [
        [int.from_bytes(secrets.token_bytes(16), "big") for _ in range(threshold - 1)]
        + [int.from_bytes(padded[i : i + 16], "big")]
        for i in range(0, len(padded), 16)
    ]
    shares = []
    for index in range(1, num + 1):
        share = bytearray(index.to_bytes(4, "little"))
        for coefficients in polynomials:
            value = 0
            for coefficient in coefficients:  # Horner's rule
                value = _mul(value, index) ^ coefficient
            share += value.to_bytes(16, "big")
        shares.append(bytes(share))
    return shares


def combine_shares(share_list: list[bytes]) -> bytes:
    """The secret behind ``share_list`` (at least ``threshold`` shares of it)."""
    if not share_list:
        raise ValueError("no shares to combine")
    size = len(share_list[0])
    if size < 20 or (size - 4) % 16 or any(len(s) != size for s in share_list):
        raise ValueError("Failed to combine shares: shares differ in length or are malformed")
    ordered = sorted(share_list, key=lambda s: int.from_bytes(s[:4], "little"))
    indices = tuple(int.from_bytes(s[:4], "little") for s in ordered)
    if len(set(indices)) != len(indices) or 0 in indices:
        raise ValueError("Failed to combine shares: duplicate or zero share index")
    coefficients = lagrange_at_zero(indices)
    padded = bytearray()
    for start in range(4, size, 16):
        chunk = 0
        for coefficient, share in zip(coefficients, ordered, strict=True):
            chunk ^= _mul(int.from_bytes(share[start : start + 16], "big"), coefficient)
        padded += chunk.to_bytes(16, "big")
    try:
        return unpad(bytes(padded), 16)
    except ValueError:
        raise ValueError("Failed to combine shares") from None
