"""The server step of a round: flattening, FedAvgM momentum across rounds, central DP noise."""

import dataclasses

import numpy as np
import pytest

from coordinator import round_result, server_opt, testing
from coordinator.service import Coordinator
from secagg.config import DPConfig
from secagg.server_state import AggregateResult


def test_flatten_is_sorted_by_name_and_inverts():
    part = {"b": np.ones((2, 3), np.float32), "a": np.arange(4, dtype=np.float32)}
    v = server_opt.flatten(part)
    np.testing.assert_array_equal(v[:4], np.arange(4))  # "a" first
    back = server_opt.unflatten(v, part)
    assert all(np.array_equal(back[k], part[k]) for k in part)
    with pytest.raises(ValueError, match="does not fit"):
        server_opt.unflatten(v[:-1], part)


def test_fedavgm_first_step_is_the_average_then_momentum_carries_over(tmp_path):
    g = np.zeros(4, np.float32)
    d = np.array([1, -1, 0.5, 0], np.float32)
    state = tmp_path / "opt.npz"
    first = server_opt.apply_update(g, d, 1.0, 0.9, state)
    np.testing.assert_allclose(first, d)
    second = server_opt.apply_update(first, d, 1.0, 0.9, state)  # trace read back from disk
    np.testing.assert_allclose(second, first + 1.9 * d, rtol=1e-6)
    plain = server_opt.apply_update(g, d, 0.5, 0.0, tmp_path / "none.npz")  # FedAvg, lr 0.5
    np.testing.assert_allclose(plain, 0.5 * d)
    assert not (tmp_path / "none.npz").exists()


def test_dp_noise_is_added_to_the_sum_before_averaging(tmp_path):
    cfg = testing.fresh_config(tmp_path, dp=DPConfig(noise_multiplier=0.5))
    coord = Coordinator.open(cfg)
    total = np.full(1000, 4.0)
    res = AggregateResult(np.zeros(1), total, (0, 0, 0), (0, 1, 2, 3))
    avg = round_result.average_delta(coord, res, np.random.default_rng(0))
    noise = avg * 4 - total  # back to the sum
    assert abs(noise.std() - 0.5 * cfg.secagg.clip_norm) < 0.05
    off = dataclasses.replace(coord, config=dataclasses.replace(cfg, dp=None))
    np.testing.assert_allclose(round_result.average_delta(off, res), 1.0)
    coord.close()
