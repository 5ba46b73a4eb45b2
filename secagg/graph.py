"""The SecAgg+ neighbour graph: a random k-regular Harary graph (Bell et al. 2020, Sec. 3).

Each client masks with, and secret-shares to, only its k neighbours instead of the whole cohort,
so client work and dropout recovery grow with k = O(log n) rather than n. The graph is the
Harary graph H(k, n) over a random permutation of the cohort; the permutation comes from a
public seed (derived from the round id), so every client can recompute its own neighbourhood
and check what the server tells it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

__all__ = ["choose_degree", "harary", "graph_seed", "failure_probability"]


def graph_seed(round_id: bytes, cohort: Sequence[int]) -> bytes:
    """The public seed of a round's graph: bound to the round and to the exact cohort."""
    h = hashlib.sha256(b"secagg/graph" + round_id)
    h.update(np.asarray(sorted(cohort), dtype="<u4").tobytes())
    return h.digest()


def failure_probability(degree: int, threshold: int, dropout: float) -> float:
    """P(fewer than `threshold` of `degree` neighbours survive), independent dropout rate."""
    keep = 1.0 - dropout
    return sum(math.comb(degree, s) * keep**s * dropout ** (degree - s) for s in range(threshold))


def choose_degree(n: int, dropout: float, abort_probability: float) -> tuple[int, int]:
    """(degree, threshold) for a cohort of n with expected dropout rate `dropout`.

    The threshold is a strict majority of the neighbourhood, floor(k/2) + 1, so that a server
    cannot obtain t shares of a client's self-mask seed and t of its key from disjoint sets of
    honest neighbours (Bonawitz et al. 2017, Sec. 4; Bell et al. 2020). The degree is the
    smallest even k >= 2 ceil(log2 n) (Bell et al.: k = O(log n) keeps the graph of honest
    survivors connected) such that, by a union bound over the n clients, the chance that some
    neighbourhood falls below threshold is at most `abort_probability`. Small cohorts get the
    complete graph (plain SecAgg).
    """
    if n < 2:
        raise ValueError(f"a cohort needs at least 2 clients, got {n}")
    k = max(2, 2 * math.ceil(math.log2(n)))
    k += k % 2
    while k < n - 1:
        t = k // 2 + 1
        if n * failure_probability(k, t, dropout) <= abort_probability:
            return k, t
        k += 2
    return n - 1, (n - 1) // 2 + 1


def harary(cohort: Sequence[int], degree: int, seed: bytes) -> dict[int, tuple[int, ...]]:
    """Neighbours of every client in H(degree, n) over a seeded random permutation of `cohort`.

    Position i is linked to positions i +- 1 .. i +- floor(k/2) (mod n), and for odd k (n even)
    also to i + n/2. degree >= n - 1 gives the complete graph.
    """
    ids = sorted(cohort)
    n = len(ids)
    if len(set(ids)) != n:
        raise ValueError("cohort ids must be distinct")
    if degree < 1:
        raise ValueError(f"degree must be >= 1, got {degree}")
    if degree >= n - 1:
        return {u: tuple(v for v in ids if v != u) for u in ids}
    if degree % 2 and n % 2:
        raise ValueError(f"an odd degree {degree} needs an even cohort size, got {n}")
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(seed, "little")))
    order = [ids[i] for i in rng.permutation(n)]
    offsets = list(range(1, degree // 2 + 1))
    out = {}
    for i, u in enumerate(order):
        nb = {order[(i + d) % n] for d in offsets} | {order[(i - d) % n] for d in offsets}
        if degree % 2:
            nb.add(order[(i + n // 2) % n])
        out[u] = tuple(sorted(nb))
    return out
