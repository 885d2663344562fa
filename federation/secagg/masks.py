"""SecAgg+ masks from the whole seed, with a cryptographic generator.

Flower's SecAgg+ expands each mask seed (a node's 32-byte self-mask seed, or the
32-byte key two nodes agree on) with ``secaggplus_utils.pseudo_rand_gen``,
which XOR-folds the seed to 32 bits and draws from NumPy's Mersenne Twister.
Every mask therefore comes from one of 2^32 streams. A coordinator that
declares a node dropped out (nothing in the protocol lets the other nodes
check) receives the shares of that node's pairwise-mask key; what then hides
the node's update is its self mask, and 2^32 candidates for it can be tried
on one machine (``benchmarks/secagg_crypto.py`` measures the cost of one try).

``pseudo_rand_gen`` here keeps Flower's signature and output (int64 arrays of
the given shapes, uniform over ``[0, num_range)``), but the stream is
ChaCha20 keyed with SHA-256 of the whole seed. Node and coordinator must
expand masks the same way: both install it (``federation.secagg.flower``).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

_DOMAIN = b"fedcredit secagg+ mask v1"
_NONCE = bytes(16)  # every key expands one stream; SecAgg+ draws fresh seeds every round


def pseudo_rand_gen(seed: bytes, num_range: int, dimensions_list: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Masks uniform over ``[0, num_range)`` in the given shapes; ``num_range`` a power of two <= 2**63."""
    if num_range < 2 or num_range & (num_range - 1) or num_range > 2**63:
        raise ValueError(f"the mask range must be a power of two between 2 and 2**63, got {num_range}")
    if len(seed) < 16:
        raise ValueError(f"a mask seed needs at least 16 bytes, got {len(seed)}")
    sizes = [math.prod(shape) for shape in dimensions_list]
    key = hashlib.sha256(_DOMAIN + seed).digest()
    stream = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor().update(bytes(8 * sum(sizes)))
    values = np.frombuffer(stream, dtype="<u8") & np.uint64(num_range - 1)  # a power of two: unbiased
    masks = []
    offset = 0
    for shape, size in zip(dimensions_list, sizes, strict=True):
        masks.append(values[offset : offset + size].astype(np.int64).reshape(shape))
        offset += size
    return masks
