"""Accounting of what devices exchanged with the coordinator: bytes per endpoint and kind,
and for cloud mode how much raw text arrived (a count and a byte length, never the text)."""

from sqlalchemy import func, select

from coordinator import db

__all__ = ["record", "record_raw_text", "totals", "raw_text_totals", "for_device"]


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
    with database.transaction() as s:
        return [tuple(r) for r in s.execute(q).all()]
