"""Accounting of what devices exchanged with the coordinator: bytes per endpoint and kind,
and for cloud mode how much raw text arrived (a count and a byte length, never the text)."""

import threading
import time

from sqlalchemy import func, select

from coordinator import db

__all__ = [
    "record",
    "record_later",
    "flush",
    "FLUSH_EVERY_S",
    "record_raw_text",
    "totals",
    "raw_text_totals",
    "for_device",
]

# Per-request accounting is written in batches: one transaction per request for its two rows
# was a third of all writes under load (bench/coordinator). A crash loses at most this long.
FLUSH_EVERY_S = 0.25
_MAX_PENDING = 1_000


def record(
    database: db.Database,
    device_id: str | None,
    endpoint: str,
    rows: list[tuple[str, int, str]],
) -> None:
    """One row per (direction, bytes, kind), written together."""
    now = db.utcnow()
    with database.transaction() as s:
        for direction, nbytes, kind in rows:
            s.add(
                db.Traffic(
                    device_id=device_id,
                    endpoint=endpoint,
                    direction=direction,
                    bytes=nbytes,
                    kind=kind,
                    at=now,
                )
            )


class _Pending:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: list[dict] = []
        self.last = time.monotonic()


_pending: dict[int, _Pending] = {}
_pending_lock = threading.Lock()


def _queue(database: db.Database) -> _Pending:
    with _pending_lock:
        return _pending.setdefault(id(database), _Pending())


def record_later(
    database: db.Database,
    device_id: str | None,
    endpoint: str,
    rows: list[tuple[str, int, str]],
) -> None:
    """`record`, written with the other requests' rows at most FLUSH_EVERY_S later (the rows
    keep the time of the request)."""
    now = db.utcnow()
    q = _queue(database)
    with q.lock:
        q.rows += [
            {"device_id": device_id, "endpoint": endpoint, "direction": d, "bytes": n,
             "kind": k, "at": now}
            for d, n, k in rows
        ]  # fmt: skip
        due = time.monotonic() - q.last >= FLUSH_EVERY_S or len(q.rows) >= _MAX_PENDING
    if due:
        flush(database)


def flush(database: db.Database) -> int:
    """Write the rows waiting from `record_later`; returns how many."""
    q = _queue(database)
    with q.lock:
        rows, q.rows, q.last = q.rows, [], time.monotonic()
    if rows:
        with database.transaction() as s:
            s.execute(db.Traffic.__table__.insert(), rows)
    return len(rows)


def record_raw_text(database: db.Database, device_id: str, nbytes: int) -> None:
    """Count one cloud prediction request carrying `nbytes` of typed text."""
    with database.transaction() as s:
        row = s.get(db.CloudText, device_id)
        if row is None:
            row = db.CloudText(device_id=device_id, requests=0, bytes=0)
            s.add(row)
        row.requests += 1
        row.bytes += nbytes
        row.updated_at = db.utcnow()


def totals(database: db.Database) -> dict[str, dict[str, int]]:
    """{kind: {"in": bytes, "out": bytes}} over all devices."""
    q = select(db.Traffic.kind, db.Traffic.direction, func.sum(db.Traffic.bytes)).group_by(
        db.Traffic.kind, db.Traffic.direction
    )
    out: dict[str, dict[str, int]] = {}
    flush(database)
    with database.transaction() as s:
        for kind, direction, n in s.execute(q).all():
            out.setdefault(kind, {"in": 0, "out": 0})[direction] = int(n)
    return out


def raw_text_totals(database: db.Database) -> dict[str, int]:
    q = select(
        func.count(db.CloudText.device_id),
        func.coalesce(func.sum(db.CloudText.requests), 0),
        func.coalesce(func.sum(db.CloudText.bytes), 0),
    )
    flush(database)
    with database.transaction() as s:
        devices, requests, nbytes = s.execute(q).one()
    return {"devices": int(devices), "requests": int(requests), "bytes": int(nbytes)}


def for_device(database: db.Database, device_id: str) -> list[tuple[str, str, int, str]]:
    """(endpoint, direction, bytes, kind) rows of one device, oldest first."""
    q = (
        select(db.Traffic.endpoint, db.Traffic.direction, db.Traffic.bytes, db.Traffic.kind)
        .where(db.Traffic.device_id == device_id)
        .order_by(db.Traffic.id)
    )
    flush(database)
    with database.transaction() as s:
        return [tuple(r) for r in s.execute(q).all()]
