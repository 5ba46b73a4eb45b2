"""Configuration: frozen dataclasses with presets `tiny()` (tests) and `default()` (production).

The degree and threshold of the SecAgg+ neighbour graph are derived from the expected dropout
rate unless given (see `secagg.graph.choose_degree`); the field width is derived from the value
bits and the largest cohort (see `secagg.encoding.field_width`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["SecAggConfig", "DPConfig"]


@dataclass(frozen=True)
class SecAggConfig:
    # Largest cohort a round may have; the field is wide enough that the sum of this many
    # maximal encoded values cannot wrap around (Bonawitz et al. 2017 use a fixed 2^32 field; we
    # use the smallest power of two that provably fits, which is what travels on the wire).
    max_cohort: int = 1000
    # b: bits per quantised coordinate after stochastic rounding (Kairouz et al. 2021, DDGauss).
    value_bits: int = 8
    # L2 norm every client update is clipped to on the device; also the DP sensitivity.
    clip_norm: float = 1.0
    # Randomised Hadamard rotation before quantisation: spreads a vector's energy evenly over
    # the coordinates so a per-coordinate bound of a few sigma loses almost nothing (DDGauss).
    rotate: bool = False
    # With rotation, each coordinate is bounded by coord_sigmas * clip_norm / sqrt(dim); without
    # rotation the bound is clip_norm itself (always safe, coarser).
    coord_sigmas: float = 4.0
    # Number of small non-negative integer counters appended exactly (hits@1, hits@3, words).
    num_counters: int = 3
    # Each counter is < 2^counter_bits; it travels as ceil(counter_bits / value_bits) limbs of
    # value_bits each, so counters never force a wider field than the model values need.
    counter_bits: int = 24
    # Expected fraction of the cohort that drops before Unmasking; used to derive the degree.
    expected_dropout: float = 0.15
    # Acceptable probability (union bound over clients) that dropouts at the expected rate
    # leave some neighbourhood below threshold, which aborts the round (Bell et al. 2020).
    abort_probability: float = 1e-2
    # Neighbours per client in the Harary graph; None derives it from the two fields above.
    degree: int | None = None
    # Shamir threshold; None uses a strict majority of the neighbourhood (floor(degree/2) + 1),
    # so a server cannot collect both kinds of shares of one client from disjoint halves.
    threshold: int | None = None
    # Never release a sum of fewer contributors than this (a sum of one is that client's input).
    min_contributors: int = 2
    # Largest vector length accepted on the wire (size limit for MaskedInput messages).
    max_dim: int = 1 << 22

    def __post_init__(self) -> None:
        if not 2 <= self.max_cohort < 1 << 20:
            raise ValueError(f"max_cohort must be in [2, 2^20), got {self.max_cohort}")
        if not 1 <= self.value_bits <= 16:
            raise ValueError(f"value_bits must be in [1, 16], got {self.value_bits}")
        if self.value_bits + (self.max_cohort - 1).bit_length() > 32:
            raise ValueError("value_bits + ceil(log2 max_cohort) must be <= 32 (the field width)")
        if not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be > 0, got {self.clip_norm}")
        if not 0 <= self.expected_dropout < 0.5:
            raise ValueError(f"expected_dropout must be in [0, 0.5), got {self.expected_dropout}")
        if not 0 < self.abort_probability < 1:
            raise ValueError(f"abort_probability must be in (0, 1), got {self.abort_probability}")
        if self.num_counters < 0 or not 1 <= self.counter_bits <= 62:
            raise ValueError("num_counters must be >= 0 and counter_bits in [1, 62]")
        if self.min_contributors < 2:
            raise ValueError("min_contributors must be >= 2: a sum of one input is that input")

    @classmethod
    def tiny(cls) -> SecAggConfig:
        """Small and fast: for unit tests and the end-to-end test round."""
        return cls(max_cohort=16, value_bits=8, clip_norm=1.0, expected_dropout=0.2)

    @classmethod
    def default(cls) -> SecAggConfig:
        """Production defaults: cohorts up to 1,000, 8-bit values, an 18-bit field."""
        return cls()

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SecAggConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        if set(d) != names:
            raise ValueError(f"SecAggConfig fields differ: {sorted(set(d) ^ names)}")
        return cls(**d)


@dataclass(frozen=True)
class DPConfig:
    # z: Gaussian noise std on the aggregate is noise_multiplier * clip_norm (central DP on the
    # sum of clipped updates; one client changes the sum by at most clip_norm in L2).
    noise_multiplier: float = 1.0
    # delta at which epsilon is reported and enforced.
    delta: float = 1e-6
    # Probability that a given enrolled device is in a round's cohort (Poisson sampling).
    sampling_probability: float = 0.01
    # Refuse further rounds once the cumulative epsilon would exceed this.
    epsilon_limit: float = 10.0

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0:
            raise ValueError(f"noise_multiplier must be > 0, got {self.noise_multiplier}")
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if not 0 < self.sampling_probability <= 1:
            raise ValueError(
                f"sampling_probability must be in (0, 1], got {self.sampling_probability}"
            )
        if not self.epsilon_limit > 0:
            raise ValueError(f"epsilon_limit must be > 0, got {self.epsilon_limit}")

    @classmethod
    def tiny(cls) -> DPConfig:
        return cls(noise_multiplier=1.0, delta=1e-5, sampling_probability=0.1, epsilon_limit=5.0)

    @classmethod
    def default(cls) -> DPConfig:
        return cls()
