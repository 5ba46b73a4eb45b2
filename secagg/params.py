"""The public parameters of one round, known to the server and to every client of the cohort.

They fix the cohort, the vector length, the SecAgg+ graph (degree, threshold and a seed bound to
the round id) and the encoding. The coordinator creates them once per round with `new_round`
and sends them to devices with the round's task (`to_json` / `from_json`).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any

from secagg import encoding, graph
from secagg.config import SecAggConfig
from secagg.errors import InputError
from secagg.wire import SERVER

__all__ = ["RoundParams", "new_round", "make_round_id"]


def make_round_id(label: str | int) -> bytes:
    """A 16-byte round id from the coordinator's round label (hash: fixed size on the wire)."""
    return hashlib.sha256(b"secagg/round/" + str(label).encode()).digest()[:16]


@dataclass(frozen=True)
class RoundParams:
    round_id: bytes  # 16 bytes; every message carries it, so replays across rounds fail
    cohort: tuple[int, ...]  # sorted client ids selected for the round
    dim: int  # float update length
    degree: int  # neighbours per client in the Harary graph
    threshold: int  # Shamir threshold t
    rotation_seed: int | None  # public seed of the random rotation (None = no rotation)
    config: SecAggConfig

    @functools.cached_property
    def neighbours(self) -> dict[int, tuple[int, ...]]:
        return graph.harary(self.cohort, self.degree, graph.graph_seed(self.round_id, self.cohort))

    @functools.cached_property
    def spec(self) -> encoding.EncodingSpec:
        return encoding.make_spec(self.config, self.dim, self.rotation_seed, len(self.cohort))

    def max_message_bytes(self) -> int:
        """Upper bound on any message of this round (the masked input dominates)."""
        return 64 + max(self.spec.packed_bytes, 200 * len(self.cohort))

    def to_json(self) -> dict[str, Any]:
        return {
            "round_id": self.round_id.hex(),
            "cohort": list(self.cohort),
            "dim": self.dim,
            "degree": self.degree,
            "threshold": self.threshold,
            "rotation_seed": self.rotation_seed,
            "config": self.config.to_json(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RoundParams:
        p = cls(
            round_id=bytes.fromhex(d["round_id"]),
            cohort=tuple(int(c) for c in d["cohort"]),
            dim=int(d["dim"]),
            degree=int(d["degree"]),
            threshold=int(d["threshold"]),
            rotation_seed=None if d["rotation_seed"] is None else int(d["rotation_seed"]),
            config=SecAggConfig.from_json(d["config"]),
        )
        _check(p)
        return p


def _check(p: RoundParams) -> None:
    n = len(p.cohort)
    if len(p.round_id) != 16:
        raise InputError("round_id must be 16 bytes")
    if list(p.cohort) != sorted(set(p.cohort)) or any(not 0 <= c < SERVER for c in p.cohort):
        raise InputError("cohort must be sorted distinct uint32 ids below 0xFFFFFFFF")
    if not 2 <= n <= p.config.max_cohort:
        raise InputError(f"cohort size {n} must be in [2, max_cohort={p.config.max_cohort}]")
    if not 1 <= p.degree <= n - 1:
        raise InputError(f"degree {p.degree} must be in [1, {n - 1}]")
    if not p.degree // 2 < p.threshold <= p.degree:
        raise InputError(
            f"threshold {p.threshold} must be a strict majority of the degree {p.degree}"
        )


def new_round(
    config: SecAggConfig,
    round_label: str | int,
    cohort: list[int] | tuple[int, ...],
    dim: int,
    rotation_seed: int | None = None,
) -> RoundParams:
    """Round parameters; degree and threshold from config, or derived from expected dropout."""
    ids = tuple(sorted(cohort))
    n = len(ids)
    if n < 2:
        raise InputError(f"a cohort needs at least 2 clients, got {n}")
    if config.degree is None:
        degree, threshold = graph.choose_degree(
            n, config.expected_dropout, config.abort_probability
        )
    else:
        degree = min(config.degree, n - 1)
        threshold = degree // 2 + 1
    if config.threshold is not None:
        threshold = config.threshold
    p = RoundParams(make_round_id(round_label), ids, dim, degree, threshold, rotation_seed, config)
    _check(p)
    p.spec  # noqa: B018 - validates dim and the rotation seed now, not at first use
    return p
