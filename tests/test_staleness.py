import math

import pytest

from coordinator import staleness


def test_fresh_update_has_full_weight_and_stale_ones_decay_as_fedbuff():
    assert staleness.weight(0) == 1.0
    assert staleness.weight(3) == pytest.approx(0.5)  # 1/sqrt(4)
    assert staleness.weight(8) == pytest.approx(1 / 3)
    assert staleness.weight(3, exponent=0.0) == 1.0  # exponent 0: plain FedAvg


def test_too_stale_counts_nothing_and_totals_add_up():
    assert staleness.weight(5, max_staleness=4) == 0.0
    assert staleness.total_weight([0, 3, 8]) == pytest.approx(1 + 0.5 + 1 / 3)
    assert staleness.total_weight([0, 9], max_staleness=4) == 1.0


def test_staleness_is_versions_since_and_rejects_the_future():
    assert staleness.staleness(4, 7) == 3
    with pytest.raises(ValueError, match="newer than current"):
        staleness.staleness(8, 7)
    with pytest.raises(ValueError, match=">= 0"):
        staleness.weight(-1)
    assert math.isfinite(staleness.weight(10**6))
