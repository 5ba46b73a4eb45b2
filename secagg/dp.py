"""Differential privacy on the aggregate: Gaussian noise and the cumulative privacy budget.

Each round releases the sum of clipped updates plus N(0, (z C)^2) noise per coordinate, where C
is the clip norm (one client changes the sum by at most C in L2) and z the noise multiplier.
With cohorts sampled from the population with probability q, T rounds are T compositions of
the Poisson-subsampled Gaussian mechanism (DP-FedAvg, McMahan et al. 2018), accounted with
Google's dp-accounting RDP accountant (Mironov 2017; Mironov, Talwar, Zhang 2019).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import dp_accounting
import numpy as np

from secagg.config import DPConfig
from secagg.errors import BudgetExhaustedError

__all__ = ["add_noise", "epsilon", "PrivacyLedger", "new_ledger", "charge_round"]

# Orders from 2 up: large ones matter for small q and many rounds. (Fractional orders below 2 make
# dp-accounting's series fail to converge for noise multipliers near 1, and matter only for
# epsilons far above any useful budget.)
_ORDERS = tuple([2 + x / 4 for x in range(40)] + list(range(12, 64)) + [128, 256])


def add_noise(
    vector_sum: np.ndarray, clip_norm: float, noise_multiplier: float, rng: np.random.Generator
) -> np.ndarray:
    """vector_sum + N(0, (noise_multiplier * clip_norm)^2) per coordinate (a new array).

    Randomness comes only from `rng` (seed it from a CSPRNG in production): no module RNG.
    """
    if noise_multiplier < 0 or clip_norm <= 0:
        raise ValueError("noise_multiplier must be >= 0 and clip_norm > 0")
    std = noise_multiplier * clip_norm
    return np.asarray(vector_sum, np.float64) + rng.normal(0.0, std, size=np.shape(vector_sum))


def epsilon(
    noise_multiplier: float,
    sampling_probability: float,
    rounds: int,
    delta: float,
    orders: tuple[float, ...] = _ORDERS,
    conversion: str = "tight",
) -> float:
    """Epsilon at `delta` after `rounds` Poisson-subsampled Gaussian rounds (RDP accounting).

    conversion="tight" is dp-accounting's RDP-to-(eps, delta) conversion (Balle et al. 2020);
    "classic" is eps = min_a RDP(a) + log(1/delta) / (a - 1) (Mironov 2017), which with integer
    orders reproduces the moments accountant of Abadi et al. 2016.
    """
    if rounds == 0:
        return 0.0
    acc = dp_accounting.rdp.RdpAccountant(list(orders))
    event = dp_accounting.PoissonSampledDpEvent(
        sampling_probability, dp_accounting.GaussianDpEvent(noise_multiplier)
    )
    acc.compose(event, rounds)
    if conversion == "tight":
        return float(acc.get_epsilon(delta))
    if conversion == "classic":
        rdp = np.asarray(acc.rdp, dtype=np.float64)
        a = np.asarray(orders, dtype=np.float64)
        return float(np.min(rdp + math.log(1 / delta) / (a - 1)))
    raise ValueError(f"unknown conversion {conversion!r}")


@dataclass(frozen=True)
class PrivacyLedger:
    """The privacy spent so far: the config and the number of noised rounds released."""

    config: DPConfig
    rounds: int = 0

    @property
    def epsilon(self) -> float:
        c = self.config
        return epsilon(c.noise_multiplier, c.sampling_probability, self.rounds, c.delta)

    def to_json(self) -> dict[str, Any]:
        return {"config": dataclasses.asdict(self.config), "rounds": self.rounds}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PrivacyLedger:
        return cls(DPConfig(**d["config"]), int(d["rounds"]))


def new_ledger(config: DPConfig) -> PrivacyLedger:
    return PrivacyLedger(config, 0)


def charge_round(ledger: PrivacyLedger) -> PrivacyLedger:
    """The ledger after one more round; BudgetExhaustedError if that would exceed the limit.

    Call before releasing a round's noised aggregate; a refused round releases nothing.
    """
    nxt = dataclasses.replace(ledger, rounds=ledger.rounds + 1)
    eps = nxt.epsilon
    if eps > ledger.config.epsilon_limit:
        raise BudgetExhaustedError(
            f"round {nxt.rounds} would bring epsilon to {eps:.3f} at delta "
            f"{ledger.config.delta:g}, over the limit {ledger.config.epsilon_limit:g}; "
            f"{ledger.rounds} rounds spent epsilon {ledger.epsilon:.3f}"
        )
    return nxt
