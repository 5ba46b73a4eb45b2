"""Buffered semi-asynchronous rounds (FedBuff, Nguyen et al. 2022; MIT FTTE), over the database.

A device fetches the current version, trains from it whenever it can, and then reports ready
with the version it trained from (`ready`). As soon as `round_buffer_size` devices are ready
and no round runs, a SecAgg+ round opens whose cohort is exactly those ready devices
(`open_buffered`, oldest first, at most `round_cohort_size`): nobody waits for stragglers; a
slow device reports ready later and joins a later round with a higher staleness.

Staleness = versions published since the one a device trained from, fixed when the round
opens. Its public weight (1 + staleness)^-exponent (`coordinator.staleness`) is handed to the
device in its round task; the device multiplies its clipped update by it before quantising and
masking, and the server divides the unmasked sum by the sum of the weights of the devices whose
inputs made it to Unmasking (`coordinator.round_result.divisor`). The update is applied to the
current version. The secure-aggregation stages are those of `coordinator.rounds`.

Pure functions over the database, like `coordinator.rounds`: the HTTP routes and the population
simulator call the same ones.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, select

from coordinator import db, rounds, staleness
from coordinator import round_store as rs
from coordinator.errors import Conflict, Forbidden, Invalid, NotFound

if TYPE_CHECKING:
    from coordinator.service import Coordinator

__all__ = ["ready", "ready_count", "open_buffered", "withdraw"]


def ready(
    coord: Coordinator, device_id: str, trained_from: int, now: datetime | None = None
) -> dict:
    """Report that `device_id` trained from version `trained_from` and can join a round.

    Returns {"ready": devices waiting, "buffer_size": K, "staleness": its staleness now,
    "round_id": the round it joined if this report completed the buffer, else None}.
    Raises Conflict when the coordinator runs synchronous rounds, the device already waits or
    is in a running round, or its version is more than `max_staleness` behind; Forbidden for a
    cloud-mode device; Invalid for a version that does not exist (or is newer than current).
    """
    cfg = coord.config
    now = rs.now_or(now)
    if cfg.round_mode != "buffered":
        raise Conflict("this coordinator runs synchronous rounds: wait for a round task instead")
    rounds.tick(coord, now)
    current = coord.registry.current()
    with rs.LOCK:
        with coord.db.transaction() as s:
            dev = s.get(db.Device, device_id)
            if dev is None:
                raise NotFound(f"no device {device_id!r}")
            if dev.mode != "on_device":
                raise Forbidden("a cloud-mode device does not train, so it cannot be ready")
            if s.get(db.Version, trained_from) is None or trained_from > current.id:
                raise Invalid(f"no version {trained_from} (current is {current.id})")
            tau = staleness.staleness(trained_from, current.id)
            if tau > cfg.max_staleness:
                raise Conflict(
                    f"too stale: trained from version {trained_from}, current is {current.id} "
                    f"(at most {cfg.max_staleness} behind); fetch the current version and retrain"
                )
            if s.get(db.Ready, device_id) is not None:
                raise Conflict(f"device {device_id!r} is already ready and waiting for a round")
            for row in s.scalars(select(db.Round).where(db.Round.status == "running")).all():
                if device_id in rs.devices(row).values():
                    raise Conflict(f"device {device_id!r} is already in running round {row.id}")
            s.add(db.Ready(device_id=device_id, trained_from=trained_from, at=now))
            s.flush()
            waiting = s.scalar(select(func.count()).select_from(db.Ready))
        round_id = None
        if waiting >= cfg.round_buffer_size:
            round_id = open_buffered(coord, now, min_ready=cfg.round_buffer_size)
    return {
        "ready": waiting if round_id is None else ready_count(coord),
        "buffer_size": cfg.round_buffer_size,
        "staleness": tau,
        "round_id": round_id,
    }


def ready_count(coord: Coordinator) -> int:
    with coord.db.transaction() as s:
        return int(s.scalar(select(func.count()).select_from(db.Ready)))


def withdraw(coord: Coordinator, device_id: str) -> bool:
    """Take a waiting device out of the buffer (e.g. it went offline); True if it was there."""
    with rs.LOCK, coord.db.transaction() as s:
        return s.execute(delete(db.Ready).where(db.Ready.device_id == device_id)).rowcount > 0


def open_buffered(
    coord: Coordinator, now: datetime | None = None, min_ready: int | None = None
) -> int | None:
    """Open a round over the ready devices if at least `min_ready` (default K) are waiting
    and no round runs; returns its id, else None. Devices that have become too stale while
    waiting (versions published since they reported) leave the buffer and must retrain."""
    cfg = coord.config
    need = max(2, cfg.round_buffer_size if min_ready is None else min_ready)
    now = rs.now_or(now)
    rounds.tick(coord, now)
    current = coord.registry.current()
    with rs.LOCK, coord.db.transaction() as s:
        if s.scalars(select(db.Round.id).where(db.Round.status == "running")).first():
            return None
        waiting = s.scalars(select(db.Ready).order_by(db.Ready.at, db.Ready.device_id)).all()
        fresh = []
        for r in waiting:
            if current.id - r.trained_from > cfg.max_staleness:
                s.delete(r)
            else:
                fresh.append(r)
        if len(fresh) < need:
            return None
        take = fresh[: cfg.round_cohort_size]
        cohort = [s.get(db.Device, r.device_id) for r in take]
        trained = {r.device_id: r.trained_from for r in take}
        for r in take:
            s.delete(r)
        return rounds.start_round(coord, s, cohort, "buffered", trained, now)
