"""The server optimiser on the average delta: optax SGD/momentum (FedAvg/FedAvgM) and Adam
(FedAdam), with its state persisted between rounds in a file."""

import numpy as np
import optax
import pytest

from coordinator import server_opt


def _optax_run(opt, x0, deltas):
    params, state = x0, opt.init(x0)
    for d in deltas:
        up, state = opt.update(-d, state, params)
        params = optax.apply_updates(params, up)
    return np.asarray(params)


@pytest.mark.parametrize(
    ("kind", "lr", "momentum", "reference"),
    [
        ("sgd", 1.0, 0.0, optax.sgd(1.0)),
        ("sgd", 0.5, 0.9, optax.sgd(0.5, momentum=0.9)),
        ("adam", 3e-2, 0.0, optax.adam(3e-2, eps=1e-3)),
    ],
)
def test_three_rounds_with_persisted_state_equal_one_optax_run(
    tmp_path, kind, lr, momentum, reference
):
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=50).astype(np.float32)
    deltas = [rng.normal(scale=0.1, size=50).astype(np.float32) for _ in range(3)]
    x = x0
    for d in deltas:  # one call per round: the state lives only in the file between calls
        x = server_opt.apply_update(x, d, lr, momentum, tmp_path / "opt.npz", kind)
    np.testing.assert_allclose(x, _optax_run(reference, x0, deltas), atol=1e-6)


def test_fedavg_at_rate_one_adds_the_average_and_keeps_no_state(tmp_path):
    x0, d = np.arange(4, dtype=np.float32), np.array([0.5, -1, 0, 2], np.float32)
    got = server_opt.apply_update(x0, d, 1.0, 0.0, tmp_path / "opt.npz", "sgd")
    np.testing.assert_array_equal(got, x0 + d)
    assert not (tmp_path / "opt.npz").exists()


def test_state_of_another_optimiser_or_shape_restarts_it(tmp_path):
    path = tmp_path / "opt.npz"
    x0, d = np.zeros(6, np.float32), np.full(6, 0.1, np.float32)
    server_opt.apply_update(x0, d, 0.5, 0.9, path, "sgd")  # leaves a momentum trace
    fresh = server_opt.apply_update(x0, d, 3e-2, 0.0, path, "adam")  # not Adam's moments
    np.testing.assert_allclose(fresh, _optax_run(optax.adam(3e-2, eps=1e-3), x0, [d]))
    bigger = server_opt.apply_update(np.zeros(8, np.float32), np.full(8, 0.1, np.float32),
                                     3e-2, 0.0, path, "adam")  # fmt: skip
    assert bigger.shape == (8,)
    with pytest.raises(ValueError, match="'sgd' or 'adam'"):
        server_opt.apply_update(x0, d, 1.0, 0.0, path, "adagrad")
