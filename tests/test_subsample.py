"""Random-mask rounds' coordinate subsets (secagg.subsample): exact on tiny inputs."""

import numpy as np
import pytest

from secagg import subsample


def test_subset_size_rounds_up_and_checks_the_fraction():
    assert subsample.subset_size(10, 0.25) == 3
    assert subsample.subset_size(10, 1.0) == 10
    assert subsample.subset_size(3, 0.01) == 1
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="upload fraction"):
            subsample.subset_size(10, bad)


def test_indices_are_sorted_distinct_reproducible_and_differ_by_seed():
    a = subsample.indices(7, 100, 30)
    assert a.tolist() == sorted(set(a.tolist())) and len(a) == 30 and a.max() < 100
    np.testing.assert_array_equal(a, subsample.indices(7, 100, 30))
    assert not np.array_equal(a, subsample.indices(8, 100, 30))
    assert subsample.indices(1, 5, 5).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="cannot choose"):
        subsample.indices(1, 5, 6)


def test_round_seed_is_public_and_depends_on_the_label():
    s = subsample.round_seed("sotto/1/2026-12-04T10:00:00")
    assert s == subsample.round_seed("sotto/1/2026-12-04T10:00:00") and 0 <= s < 2**63
    assert s != subsample.round_seed("sotto/2/2026-12-04T10:00:00")


def test_scatter_puts_values_back_and_zeros_elsewhere():
    out = subsample.scatter(np.array([1.5, -2.0], np.float32), np.array([1, 3]), 5)
    assert out.tolist() == [0.0, 1.5, 0.0, -2.0, 0.0] and out.dtype == np.float32
    with pytest.raises(ValueError, match="2 values for 3 coordinates"):
        subsample.scatter(np.ones(2, np.float32), np.array([0, 1, 2]), 5)
