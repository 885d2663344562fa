"""SecAgg+ cryptography: Flower's own functions against FedCredit's.

    python benchmarks/secagg_crypto.py [--json FILE] [--repeats 5]

Shamir sharing, for each federation size N (every institution holds a share,
a majority rebuilds them, as coordinator/secure_aggregation.py sets by
default), seconds per round:

- node: what one node splits per round, its 32-byte mask seed and its
  PEM-encoded private key (Flower's SecAgg+ key pair, generated here);
- coordinator, no dropout: rebuilding every node's mask seed from a majority
  of shares;
- coordinator, per dropout: rebuilding the private key of one node that
  dropped out.

federation.secagg.shamir caches the interpolation coefficients per set of share
indices (the same for every node of a round); here every rebuild computes them
afresh, the worst case. The shares of both implementations are checked to
rebuild the secrets.

Masks, for the shapes of the UCI model's trainable weights: seconds to expand
one seed (Flower: Mersenne Twister from the seed folded to 32 bits;
FedCredit: ChaCha20 from the whole seed), and what Flower's 32-bit seed means
for an attacker: the time to test one candidate seed (seed NumPy's generator,
draw four mask entries: enough to tell the right seed) and so to try all 2^32 on one core.

Best of --repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common.secure_aggregation.crypto import shamir as flower_shamir
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen as flower_masks
from flwr.supercore.primitives.asymmetric import generate_key_pairs, private_key_to_bytes

from coordinator.secure_aggregation import MODULUS_RANGE
from federation.hyperparameters import ModelConfig
from federation.loading import FeatureLayout
from federation.model import FourDimensionModel, trainable_weights
from federation.schema import resolve_schema
from federation.secagg import masks as secure_masks
from federation.secagg import shamir


def _fresh_combine(shares: list[bytes]) -> bytes:
    """federation.secagg.shamir without its cached Lagrange coefficients: a new set of survivors every time."""
    shamir.lagrange_at_zero.cache_clear()
    return shamir.combine_shares(shares)


IMPLEMENTATIONS: dict[str, tuple[Callable[..., list[bytes]], Callable[[list[bytes]], bytes]]] = {
    "flower": (flower_shamir.create_shares, flower_shamir.combine_shares),
    "fedcredit": (shamir.create_shares, _fresh_combine),
}


def best_of(repeats: int, work: Callable[[], Any]) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def _time_one(
    create: Callable[..., list[bytes]],
    combine: Callable[[list[bytes]], bytes],
    seeds: list[bytes],
    private_key: bytes,
    threshold: int,
    repeats: int,
) -> dict[str, float]:
    institutions = len(seeds)
    seed_shares = [create(seed, threshold, institutions) for seed in seeds]
    key_shares = create(private_key, threshold, institutions)
    assert all(combine(s[-threshold:]) == seed for s, seed in zip(seed_shares, seeds, strict=True))
    assert combine(key_shares[:threshold]) == private_key
    return {
        "node_split_seconds": best_of(
            repeats,
            lambda: (create(seeds[0], threshold, institutions), create(private_key, threshold, institutions)),
        ),
        "coordinator_rebuild_seeds_seconds": best_of(
            repeats, lambda: [combine(s[:threshold]) for s in seed_shares]
        ),
        "coordinator_rebuild_key_seconds": best_of(repeats, lambda: combine(key_shares[1 : threshold + 1])),
    }


def measure(institutions: int, repeats: int) -> dict[str, Any]:
    threshold = institutions // 2 + 1
    seeds = [os.urandom(32) for _ in range(institutions)]
    private_key = private_key_to_bytes(generate_key_pairs()[0])
    out: dict[str, Any] = {
        "institutions": institutions,
        "threshold": threshold,
        "key_bytes": len(private_key),
    }
    for name, (create, combine) in IMPLEMENTATIONS.items():
        out[name] = _time_one(create, combine, seeds, private_key, threshold, repeats)
    return out


def measure_masks(repeats: int) -> dict[str, Any]:
    model = FourDimensionModel(FeatureLayout.from_schema(resolve_schema("uci_homo")), ModelConfig())
    shapes = [w.shape for w in trainable_weights(model)]
    seed = os.urandom(44)  # a pairwise key as Flower passes it: 32 bytes, base64
    guesses = 10_000

    def try_seeds() -> None:
        for candidate in range(guesses):
            np.random.RandomState(candidate).randint(0, MODULUS_RANGE - 1, 4, dtype=np.int64)

    per_guess = best_of(repeats, try_seeds) / guesses
    return {
        "model_parameters": int(sum(int(np.prod(s)) for s in shapes)),
        "flower_mask_seconds": best_of(repeats, lambda: flower_masks(seed, MODULUS_RANGE, shapes)),
        "fedcredit_mask_seconds": best_of(
            repeats, lambda: secure_masks.pseudo_rand_gen(seed, MODULUS_RANGE, shapes)
        ),
        "flower_seed_guess_seconds": per_guess,
        "flower_all_seeds_core_hours": per_guess * 2**32 / 3600,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--institutions", type=int, nargs="+", default=[3, 10, 25, 50])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    results = [measure(n, args.repeats) for n in args.institutions]
    masks = measure_masks(args.repeats)
    stages = [
        ("node_split_seconds", "node split"),
        ("coordinator_rebuild_seeds_seconds", "rebuild all seeds"),
        ("coordinator_rebuild_key_seconds", "rebuild 1 key"),
    ]
    print(f"{'N':>4s} {'k':>3s} " + " ".join(f"{label + ' (Flower / ours, s)':>38s}" for _, label in stages))
    for r in results:
        cells = [f"{r['flower'][key]:.4f} / {r['fedcredit'][key]:.4f}" for key, _ in stages]
        print(f"{r['institutions']:4d} {r['threshold']:3d} " + " ".join(f"{c:>38s}" for c in cells))
    print(
        f"\nmasks for the UCI model ({masks['model_parameters']} weights): Flower "
        f"{masks['flower_mask_seconds'] * 1e3:.3f} ms, FedCredit {masks['fedcredit_mask_seconds'] * 1e3:.3f} ms "
        f"per seed\nFlower's 32-bit seed: one guess {masks['flower_seed_guess_seconds'] * 1e6:.1f} us, "
        f"all 2^32 in {masks['flower_all_seeds_core_hours']:.1f} core-hours"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"shamir": results, "masks": masks}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
