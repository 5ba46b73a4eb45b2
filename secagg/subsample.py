"""Random-mask structured updates (Konečný et al. 2016, "Federated Learning: Strategies for
Improving Communication Efficiency"): in a round, every device uploads only the same public
random subset of its update's coordinates, so secure aggregation sums vectors `fraction` as
long and the server writes the average back into those coordinates (the others move by zero).
The subset is drawn from a public per-round seed, so the device and the server agree on it
without sending it; a different subset each round covers every coordinate over time.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

__all__ = ["subset_size", "round_seed", "indices", "scatter"]


def subset_size(full_dim: int, fraction: float) -> int:
    """How many coordinates a round with `fraction` uploads (at least one)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"upload fraction must be in (0, 1], got {fraction}")
    return max(1, min(full_dim, math.ceil(full_dim * fraction)))


def round_seed(label: str, purpose: str = "subset") -> int:
    """A public 63-bit seed for `purpose` from the round's label (its id and start time)."""
    digest = hashlib.sha256(f"{label}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def indices(seed: int, full_dim: int, k: int) -> np.ndarray:
    """The sorted coordinates a round uploads: k of `full_dim`, drawn from `seed` (PCG64,
    whose stream numpy keeps stable across versions)."""
    if not 0 < k <= full_dim:
        raise ValueError(f"cannot choose {k} of {full_dim} coordinates")
    rng = np.random.Generator(np.random.PCG64(seed))
    return np.sort(rng.choice(full_dim, size=k, replace=False))


def scatter(values: np.ndarray, idx: np.ndarray, full_dim: int) -> np.ndarray:
    """A full-length float32 vector with `values` at `idx` and zeros elsewhere."""
    if values.shape != idx.shape:
        raise ValueError(f"{values.shape[0]} values for {idx.shape[0]} coordinates")
    out = np.zeros(full_dim, np.float32)
    out[idx] = values
    return out
