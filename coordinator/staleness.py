"""Staleness weights of buffered semi-asynchronous rounds (FedBuff).

In buffered mode a device trains from the version it fetched and joins whichever round forms
while it is ready, so by then the global model may have moved on. Its staleness is the number
of versions published since the one it trained from. FedBuff (Nguyen et al. 2022, "Federated
Learning with Buffered Asynchronous Aggregation") down-weights a stale update by
1 / sqrt(1 + staleness); we use that polynomial family, with the exponent configurable.

The weight is a *public* function of public facts (the version a device fetched and the round's
version), so under secure aggregation the device scales its own update before clipping and
masking, and the server divides the unmasked sum by the sum of the weights it can compute
itself. Nothing about an individual update is revealed by weighting.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["staleness", "weight", "total_weight"]


def staleness(trained_from: int, current: int) -> int:
    """Versions published since `trained_from` (0 for a device that trained on `current`)."""
    if trained_from > current:
        raise ValueError(f"trained from version {trained_from}, newer than current {current}")
    return current - trained_from


def weight(tau: int, exponent: float = 0.5, max_staleness: int | None = None) -> float:
    """(1 + tau)^-exponent; 0 beyond `max_staleness` (too stale to count at all)."""
    if tau < 0:
        raise ValueError(f"staleness must be >= 0, got {tau}")
    if exponent < 0:
        raise ValueError(f"exponent must be >= 0, got {exponent}")
    if max_staleness is not None and tau > max_staleness:
        return 0.0
    return float((1.0 + tau) ** -exponent)


def total_weight(
    taus: Iterable[int], exponent: float = 0.5, max_staleness: int | None = None
) -> float:
    """The divisor of a buffered round's unmasked sum: the weights of the devices that counted."""
    return float(sum(weight(t, exponent, max_staleness) for t in taus))
