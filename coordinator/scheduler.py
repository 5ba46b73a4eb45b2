"""When rounds open: on the service's own clock, or now at an operator's request.

- sync: every `round_interval_s` (0 = never on its own) since the last round started, when
  at least `round_min_devices` on-device devices are enrolled and no round runs.
- buffered: whenever at least `round_buffer_size` devices are ready and no round runs (a ready
  report that completes the buffer opens the round at once; `schedule` catches the buffers
  that filled while a round was running).

`open_now` is the operator's "open a round now": sync samples a cohort as usual; buffered opens
over whoever is ready (at least 2), without waiting for a full buffer.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import func, select

from coordinator import buffered, db, rounds
from coordinator import round_store as rs
from coordinator.errors import Conflict, Invalid

if TYPE_CHECKING:
    from coordinator.service import Coordinator

__all__ = ["schedule", "open_now", "overview"]


def _rng(rng: np.random.Generator | None) -> np.random.Generator:
    # Cohort sampling from the OS CSPRNG unless a test passes a seeded generator.
    return rng or np.random.default_rng(secrets.randbits(128))


def schedule(
    coord: Coordinator, now: datetime | None = None, rng: np.random.Generator | None = None
) -> int | None:
    """Open a round if the configured schedule says one is due; returns its id or None."""
    cfg = coord.config
    now = rs.now_or(now)
    if cfg.round_mode == "buffered":
        return buffered.open_buffered(coord, now)
    if cfg.round_interval_s <= 0:
        return None
    rounds.tick(coord, now)
    with coord.db.transaction() as s:
        if s.scalars(select(db.Round.id).where(db.Round.status == "running")).first():
            return None
        last = s.scalar(select(func.max(db.Round.started_at)))
        enrolled = s.scalar(
            select(func.count()).select_from(db.Device).where(db.Device.mode == "on_device")
        )
    if last is not None and rs.aware(last) + timedelta(seconds=cfg.round_interval_s) > now:
        return None
    if enrolled < cfg.round_min_devices:
        return None
    try:
        return rounds.open_round(coord, _rng(rng), now=now)
    except Conflict:  # another process (or request) opened one meanwhile
        return None


def open_now(
    coord: Coordinator, now: datetime | None = None, rng: np.random.Generator | None = None
) -> int:
    """Open a round at once (the operator's command); Conflict if one runs, Invalid if too
    few devices are enrolled (sync) or ready (buffered)."""
    if coord.config.round_mode == "buffered":
        with coord.db.transaction() as s:
            rs.refuse_if_running(s)
        rid = buffered.open_buffered(coord, now, min_ready=2)
        if rid is None:
            n = buffered.ready_count(coord)
            raise Invalid(f"{n} devices ready; a buffered round needs at least 2")
        return rid
    return rounds.open_round(coord, _rng(rng), now=now)


def overview(coord: Coordinator, last: int = 5) -> dict:
    """The operator's status: mode, the running round, devices ready, the latest rounds."""
    cfg = coord.config
    rounds.tick(coord)
    with coord.db.transaction() as s:
        ids = s.scalars(select(db.Round.id).order_by(db.Round.id.desc()).limit(last)).all()
        running = s.scalars(select(db.Round.id).where(db.Round.status == "running")).first()
    current = coord.registry.current()
    return {
        "mode": cfg.round_mode,
        "buffer_size": cfg.round_buffer_size if cfg.round_mode == "buffered" else None,
        "ready": buffered.ready_count(coord),
        "current_version": current and current.id,
        "running": running,
        "rounds": [rounds.status(coord, i) for i in ids],
    }
