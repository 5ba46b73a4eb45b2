"""From a round's aggregate to a new global version.

The decoded sum of the survivors' clipped, quantised deltas (plus central Gaussian noise,
`secagg.dp.add_noise`, when DP is configured) divided by the number of contributors is the
average delta. With DP, each round is charged to a privacy ledger (`secagg.dp`, kept in
`<data dir>/privacy_ledger.json`) before anything is released; a round that would exceed the
epsilon limit raises BudgetExhaustedError and releases nothing. The
server optimiser (`coordinator.server_opt`, FedAvgM) steps the global device part along it, and
the registry gets the new version with the same LiteRT file. The federated-evaluation counters
that rode in the masked sum become the version's metrics.
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING

import numpy as np

from coordinator import db, server_opt
from coordinator import round_store as rs
from coordinator.registry import VersionInfo
from model.checkpoint import atomic_write_bytes
from secagg import dp, subsample
from secagg.server_state import AggregateResult

if TYPE_CHECKING:
    from coordinator.service import Coordinator

__all__ = ["LEDGER_FILE", "ledger", "divisor", "average_delta", "register_result"]

LEDGER_FILE = "privacy_ledger.json"


def ledger(coord: Coordinator) -> dp.PrivacyLedger | None:
    """The privacy spent so far under the configured DP settings (None without DP)."""
    cfg = coord.config
    if cfg.dp is None:
        return None
    path = cfg.data_dir / LEDGER_FILE
    rounds = json.loads(path.read_text())["rounds"] if path.exists() else 0
    return dp.PrivacyLedger(cfg.dp, int(rounds))


def _charge(coord: Coordinator) -> dp.PrivacyLedger | None:
    """Charge one round (BudgetExhaustedError if over the limit), written before release: a
    crash afterwards over-counts, never under-counts."""
    spent = ledger(coord)
    if spent is None:
        return None
    nxt = dp.charge_round(spent)
    path = coord.config.data_dir / LEDGER_FILE
    atomic_write_bytes(path, json.dumps(nxt.to_json()).encode())
    return nxt


def divisor(result: AggregateResult, weights: dict[str, float] | None = None) -> float:
    """What the unmasked sum is divided by: the number of contributors (sync), or the sum of
    the public staleness weights of the devices whose inputs are in it (buffered)."""
    if weights is None:
        return float(result.num_contributors)
    return float(sum(weights[str(u)] for u in result.contributors))


def average_delta(
    coord: Coordinator,
    result: AggregateResult,
    rng: np.random.Generator | None = None,
    weights: dict[str, float] | None = None,
) -> np.ndarray:
    """The (noised, if DP is configured) (weighted) average of the contributors' updates."""
    cfg = coord.config
    total = result.vector_sum
    if cfg.dp is not None:
        # Noise randomness from the OS CSPRNG unless a test passes a seeded generator.
        rng = rng or np.random.default_rng(secrets.randbits(128))
        total = dp.add_noise(total, cfg.secagg.clip_norm, cfg.dp.noise_multiplier, rng)
    total_weight = divisor(result, weights)
    if total_weight <= 0:
        raise ValueError("every contributor has weight 0: nothing to average")
    return (np.asarray(total) / total_weight).astype(np.float32)


def register_result(
    coord: Coordinator,
    round_id: int,
    parent: int,
    result: AggregateResult,
    dropouts: dict[str, int],
    rng: np.random.Generator | None = None,
    weights: dict[str, float] | None = None,
    subset: dict | None = None,
) -> VersionInfo:
    """Apply the round's average delta to version `parent` and register the new version.

    Idempotent per round: a coordinator that crashed after registering but before marking the
    round done finds the version again instead of registering a second one.
    """
    for v in coord.registry.versions():
        if v.metrics.get("round") == round_id:
            return v
    cfg = coord.config
    spent = _charge(coord)
    part = coord.registry.device_part(parent)
    avg = average_delta(coord, result, rng, weights)
    _store_aggregate_histogram(coord, round_id, avg)
    if subset is not None:  # a random-mask round: the average covers only its coordinates
        idx = subsample.indices(subset["seed"], subset["of"], avg.size)
        avg = subsample.scatter(avg, idx, subset["of"])
    new_vec = server_opt.apply_update(
        server_opt.flatten(part),
        avg,
        cfg.server_learning_rate,
        cfg.server_momentum,
        cfg.data_dir / "server_optimizer.npz",
        cfg.server_optimizer,
    )
    hits1, hits3, words = (list(result.counters) + [0, 0, 0])[:3]
    metrics = {
        "source": f"round {round_id}",
        "round": round_id,
        "contributors": result.num_contributors,
        "mode": "sync" if weights is None else "buffered",
        "uploaded_coordinates": int(result.vector_sum.size),
        "total_weight": divisor(result, weights),
        "dropouts": dropouts,
        "fed_hits_at_1": hits1,
        "fed_hits_at_3": hits3,
        "fed_words": words,
        "fed_top1": hits1 / words if words else None,
        "fed_top3": hits3 / words if words else None,
        "dp_noise_multiplier": cfg.dp and cfg.dp.noise_multiplier,
        "dp_epsilon": spent and spent.epsilon,
        "dp_delta": cfg.dp and cfg.dp.delta,
    }
    return coord.registry.register(
        coord.registry.model_bytes(parent),
        server_opt.unflatten(new_vec, part),
        metrics,
        parent=parent,
    )


def _store_aggregate_histogram(coord: Coordinator, round_id: int, avg: np.ndarray) -> None:
    """The value histogram of the released (averaged, noised) aggregate, beside the masked
    upload's: this is the sum of many devices' updates, never one device's."""
    lo, hi = float(avg.min(initial=0.0)), float(avg.max(initial=0.0))
    hist = rs.histogram(avg, lo, hi if hi > lo else lo + 1.0)
    with coord.db.transaction() as s:
        row = s.get(db.Round, round_id)
        if row is not None:
            row.stats = {**(row.stats or {}), "aggregate_hist": hist}
