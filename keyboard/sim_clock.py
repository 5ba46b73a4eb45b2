"""The population simulator's clock: device speeds, training times and round durations.

Simulated time is what a fleet of phones would take, not what this machine takes: a device's
training time is `steps x step_time_s x slowdown`, where `step_time_s` is the LiteRT `train`
step measured on this machine (`bench/results/litert.json`, 12.8 ms for a batch of 8x16) and
`slowdown` is the device's speed factor (1 for a typical phone, e.g. 10 for a straggler).

A synchronous round (`sync_round`) is as slow as its slowest on-time device: every stage waits
for all its expected devices, or for its timeout when somebody stays silent; a device whose
training would end after the masked-input deadline is late and drops. Everything here is pure
arithmetic on floats, so the tests check it with exact values.

Where a buffered (FedBuff-style) mode plugs in: `Population.run_round` asks a schedule for the
round's simulated duration and for who made it in time; a buffered schedule would instead keep
each device's finish time across rounds (`DeviceTimes`), let the coordinator aggregate the first
K updates that are ready, and weight each by its staleness (`coordinator.staleness`). The speed
profile and the per-device training time below are shared by both modes.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SpeedProfile",
    "SimClock",
    "RoundTiming",
    "slowdowns",
    "training_seconds",
    "sync_round",
]

# Measured LiteRT `train` step (p50, batch 8x16, one thread) on this machine: bench/litert.
MEASURED_STEP_S = 0.0128


@dataclass(frozen=True)
class SpeedProfile:
    """How fast the simulated phones are."""

    straggler_share: float = 0.1  # fraction of devices that are slow
    straggler_slowdown: float = 10.0  # how many times slower a straggler trains
    step_time_s: float = MEASURED_STEP_S  # one local training step on a typical phone
    latency_s: float = 0.2  # one request/response round trip (advertise, keys, ...)

    def __post_init__(self) -> None:
        if not 0 <= self.straggler_share <= 1:
            raise ValueError(f"straggler_share must be in [0, 1], got {self.straggler_share}")
        if self.straggler_slowdown < 1 or self.step_time_s <= 0 or self.latency_s < 0:
            raise ValueError("straggler_slowdown must be >= 1, step_time_s > 0, latency_s >= 0")


def slowdowns(n: int, profile: SpeedProfile, rng: np.random.Generator) -> np.ndarray:
    """Each of `n` devices' slowdown: exactly round(share * n) stragglers, chosen by `rng`."""
    k = int(round(profile.straggler_share * n))
    out = np.ones(n)
    out[rng.permutation(n)[:k]] = profile.straggler_slowdown
    return out


def training_seconds(steps: int, slowdown: float, profile: SpeedProfile) -> float:
    """Simulated time one device needs for `steps` local training steps."""
    return steps * profile.step_time_s * slowdown


@dataclass(frozen=True)
class RoundTiming:
    seconds: float  # simulated duration of the round
    on_time: tuple[str, ...]  # devices whose masked input arrives before the deadline
    late: tuple[str, ...]  # devices still training at the deadline (they drop)


OTHER_STAGES = ("advertise", "share_keys", "consistency", "unmasking")


def sync_round(
    train_s: Mapping[str, float],
    silent_at: Collection[str],
    profile: SpeedProfile,
    masked_deadline_s: float,
    stage_timeout_s: float,
) -> RoundTiming:
    """Duration of one synchronous SecAgg+ round on the simulated clock.

    `train_s` is the training time of each cohort member that means to send its masked input;
    `silent_at` names the stages at which some member went silent. A stage with a silent member
    waits for its timeout, any other one round trip (`latency_s`); MaskedInput waits for the
    slowest on-time member, or for `masked_deadline_s` if a member is late or silent there.
    """
    on_time = tuple(
        sorted(d for d, t in train_s.items() if t + profile.latency_s <= masked_deadline_s)
    )
    late = tuple(sorted(d for d in train_s if d not in on_time))
    if late or "masked_input" in silent_at:
        masked = masked_deadline_s
    else:
        masked = max(train_s.values(), default=0.0) + profile.latency_s
    others = sum(stage_timeout_s if s in silent_at else profile.latency_s for s in OTHER_STAGES)
    return RoundTiming(others + masked, on_time, late)


class SimClock:
    """Simulated seconds since the start of the run (only ever moves forward)."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"the clock does not go backwards ({seconds})")
        self._now += seconds
        return self._now
