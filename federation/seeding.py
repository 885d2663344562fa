"""Independent random streams per purpose, so one seed never drives two correlated draws.

Generating data with seed 9 and splitting it with seed 9 must not reuse the
same uniforms (the split would then follow the data's own first draws).
"""

from __future__ import annotations

import zlib

import numpy as np


def rng_for(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(purpose.encode())])
