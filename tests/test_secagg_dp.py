"""Differential privacy: Gaussian noise on the aggregate and the privacy budget."""

import json

import numpy as np
import pytest

from secagg import DPConfig, dp
from secagg.errors import BudgetExhaustedError


def test_accountant_matches_abadi_et_al_2016():
    """Abadi et al. 2016, Sec. 3.1: q = 0.01, sigma = 4, delta = 1e-5, T = 10000 gives
    epsilon ~= 1.26 with the moments accountant (integer orders, classic conversion)."""
    orders = tuple(range(2, 65))
    eps = dp.epsilon(4.0, 0.01, 10_000, 1e-5, orders=orders, conversion="classic")
    assert eps == pytest.approx(1.26, abs=0.005)
    # dp-accounting's tighter conversion can only improve on it
    tight = dp.epsilon(4.0, 0.01, 10_000, 1e-5)
    assert 0.9 < tight < eps


def test_epsilon_grows_with_rounds_and_shrinks_with_noise():
    e = [dp.epsilon(1.0, 0.01, t, 1e-6) for t in (0, 1, 10, 100)]
    assert e[0] == 0.0 and e[1] < e[2] < e[3]
    assert dp.epsilon(2.0, 0.01, 100, 1e-6) < e[3]


def test_budget_limit_refuses_further_rounds():
    cfg = DPConfig(noise_multiplier=2.0, delta=1e-5, sampling_probability=0.1, epsilon_limit=2.0)
    ledger = dp.new_ledger(cfg)
    spent = 0
    with pytest.raises(BudgetExhaustedError, match=r"over the limit 2") as e:
        while True:
            ledger = dp.charge_round(ledger)
            spent += 1
            assert ledger.epsilon <= 2.0
    assert f"{spent} rounds spent" in str(e.value)
    assert spent == ledger.rounds and spent > 0
    assert dp.epsilon(2.0, 0.1, spent + 1, 1e-5) > 2.0
    # the ledger survives a restart as JSON
    again = dp.PrivacyLedger.from_json(json.loads(json.dumps(ledger.to_json())))
    assert again == ledger
    with pytest.raises(BudgetExhaustedError):
        dp.charge_round(again)


def test_noise_has_the_calibrated_scale_and_explicit_randomness():
    agg = np.zeros(200_000)
    a = dp.add_noise(agg, clip_norm=0.5, noise_multiplier=1.2, rng=np.random.default_rng(1))
    assert a.std() == pytest.approx(0.6, rel=0.01)
    assert abs(a.mean()) < 0.01
    b = dp.add_noise(agg, clip_norm=0.5, noise_multiplier=1.2, rng=np.random.default_rng(1))
    assert np.array_equal(a, b)
    assert not agg.any()  # input untouched
