"""Rounds in the database: row helpers shared by the round steps, and read-only views.

A round row holds the public round parameters, the cohort (secagg client id -> device id, plus
dropouts per stage), the serialised secagg `ServerState` (masked running sum only), the
server's pending message per device (`outbox`) and, for an aborted round, the reason. The
latest `stages` row of a round is its open stage (its start time drives the timeout).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import select

from coordinator import db
from coordinator.errors import Conflict, NotFound
from secagg import packing, wire
from secagg.params import RoundParams
from secagg.server_state import ServerStage, ServerState

if TYPE_CHECKING:  # the service calls rounds.recover when it opens: no import cycle at runtime
    from coordinator.service import Coordinator

__all__ = [
    "STAGES",
    "LOCK",
    "RoundView",
    "now_or",
    "aware",
    "state",
    "devices",
    "client_id",
    "expected",
    "open_stage",
    "stage_row",
    "load",
    "abort_row",
    "current_for",
    "status",
    "max_message_bytes",
    "refuse_if_running",
    "histogram",
    "masked_histogram",
    "HIST_BINS",
]

HIST_BINS = 32

STAGES = tuple(s.value for s in list(ServerStage)[:5])  # the collecting stages, in order

# One writer at a time per process: each step is a read-modify-write of the round's state.
# (On PostgreSQL `with_for_update` also serialises writers of other processes.)
LOCK = threading.RLock()


@dataclass(frozen=True)
class RoundView:
    """What one device needs to know about the round it is in."""

    round_id: int
    status: str  # running, done, aborted
    stage: str
    client_id: int
    params: dict
    identities: dict[int, bytes]  # Ed25519 public keys of its neighbours and itself
    reason: str | None
    pending: str | None  # the stage whose server message waits for it in its inbox
    model_version: int  # the global version the round's result is applied to
    mode: str  # sync or buffered
    trained_from: int  # the version this device's update must start from
    staleness: int  # versions between trained_from and model_version (0 in sync rounds)
    weight: float  # public staleness weight the device multiplies its clipped update by
    subset: dict | None = None  # random-mask round: {"seed", "of"} (secagg.subsample)


def now_or(now: datetime | None) -> datetime:
    return now or db.utcnow()


def aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)  # SQLite hands back naive UTC


def state(row: db.Round) -> ServerState:
    return ServerState.from_json(row.server_state)


def devices(row: db.Round) -> dict[int, str]:
    return {int(k): v for k, v in row.members["devices"].items()}


def client_id(row: db.Round, device_id: str) -> int:
    for k, v in devices(row).items():
        if v == device_id:
            return k
    raise Conflict(f"device {device_id!r} is not in the cohort of round {row.id}")


def expected(st: ServerState) -> set[int]:
    return {
        ServerStage.ADVERTISE: set(st.identities),
        ServerStage.SHARE_KEYS: set(st.adverts),
        ServerStage.MASKED_INPUT: set(st.shared),
        ServerStage.CONSISTENCY: set(st.survivors),
        ServerStage.UNMASKING: set(st.requests),
    }.get(st.stage, set())


def open_stage(s, round_id: int, name: str, now: datetime) -> None:
    s.add(db.Stage(round_id=round_id, name=name, status="open", started_at=now))


def stage_row(s, round_id: int) -> db.Stage:
    q = select(db.Stage).where(db.Stage.round_id == round_id).order_by(db.Stage.id.desc())
    return s.scalars(q.limit(1)).one()


def load(s, round_id: int) -> db.Round:
    row = s.get(db.Round, round_id, with_for_update=True)
    if row is None:
        raise NotFound(f"no round {round_id}")
    return row


def abort_row(s, row: db.Round, reason: str, final: ServerState | None, now: datetime) -> None:
    """Mark the round aborted with its reason; the masked data goes with the state."""
    # The column is 1,000 characters (PostgreSQL enforces it; a secagg reason is far shorter).
    row.status, row.reason, row.ended_at, row.outbox = "aborted", reason[:1000], now, {}
    if final is not None:
        row.server_state = final.to_json()  # secagg's ABORTED state: masked data dropped
    else:  # unreadable state: keep what identifies it, drop the masked sum and any shares
        row.server_state = {**(row.server_state or {}), "stage": "aborted", "acc": None,
                            "inbox": {}}  # fmt: skip
    g = stage_row(s, row.id)
    g.status, g.ended_at = "aborted", now


def current_for(coord: Coordinator, device_id: str) -> RoundView | None:
    """The running round this device is in, if any. Polled by every device: reads the small
    columns only (not the secagg state with its masked sum); the neighbours' identity keys
    are their enrolled keys, which the round's state was made from."""
    q = select(
        db.Round.id, db.Round.status, db.Round.params, db.Round.members, db.Round.outbox,
        db.Round.reason, db.Round.version_id, db.Round.mode, db.Round.stats,
    ).where(db.Round.status == "running")  # fmt: skip
    with coord.db.read() as s:
        for row in s.execute(q).all():
            ids = {int(k): v for k, v in row.members["devices"].items()}
            u = next((k for k, v in ids.items() if v == device_id), None)
            if u is None:
                continue
            params = RoundParams.from_json(row.params)
            nb = params.neighbours[u] + (u,)
            keys = dict(
                s.execute(
                    select(db.Device.id, db.Device.public_key).where(
                        db.Device.id.in_([ids[v] for v in nb])
                    )
                ).all()
            )
            stage = stage_row(s, row.id).name
            pending = (row.outbox or {}).get(device_id, {}).get("stage")
            stats = row.stats or {}
            return RoundView(
                row.id, row.status, stage, u, row.params, {v: keys[ids[v]] for v in nb},
                row.reason, pending, row.version_id, row.mode or "sync",
                stats.get("trained_from", {}).get(str(u), row.version_id),
                stats.get("staleness", {}).get(str(u), 0),
                stats.get("weights", {}).get(str(u), 1.0), stats.get("subset"),
            )  # fmt: skip
    return None


def status(coord: Coordinator, round_id: int) -> dict:
    """Status, stage, reason and resulting version of a round (public facts only)."""
    with coord.db.read() as s:
        row = s.get(db.Round, round_id)
        if row is None:
            raise NotFound(f"no round {round_id}")
        stages = s.scalars(
            select(db.Stage).where(db.Stage.round_id == round_id).order_by(db.Stage.id)
        ).all()
        return {
            "round_id": row.id,
            "status": row.status,
            "stage": row.server_state["stage"] if row.server_state else None,
            "reason": row.reason,
            "result_version": row.result_version,
            "mode": row.mode or "sync",
            "cohort": len(row.members["devices"]),
            "staleness": sorted((row.stats or {}).get("staleness", {}).values()),
            "dropouts": row.members.get("dropouts", {}),
            "stages": [
                {
                    "name": g.name,
                    "status": g.status,
                    "bytes_in": g.bytes_in,
                    "bytes_out": g.bytes_out,
                }
                for g in stages
            ],
        }


def max_message_bytes(coord: Coordinator, round_id: int) -> int:
    with coord.db.transaction() as s:
        row = s.get(db.Round, round_id)
        if row is None or row.params is None:
            raise NotFound(f"no round {round_id}")
        return RoundParams.from_json(row.params).max_message_bytes()


def refuse_if_running(s) -> None:
    if s.scalars(select(db.Round.id).where(db.Round.status == "running")).first():
        raise Conflict("a round is already running")


def histogram(values: np.ndarray, lo: float, hi: float, bins: int = HIST_BINS) -> dict:
    """{"lo", "hi", "counts"}: `bins` equal-width bins over [lo, hi] (counts only)."""
    counts, _ = np.histogram(np.asarray(values, np.float64), bins=bins, range=(lo, hi))
    return {"lo": float(lo), "hi": float(hi), "counts": [int(c) for c in counts]}


def masked_histogram(st: ServerState, message: bytes) -> dict:
    """Histogram over the field [0, 2^width) of one masked input message, as received."""
    spec = st.params.spec
    _, body = wire.decode(
        message, wire.MsgType.MASKED_INPUT, st.params.round_id, st.params.max_message_bytes()
    )
    masked = packing.unpack(body.payload, spec.width, spec.length)
    return histogram(masked, 0, float(1 << spec.width))
