"""Synchronous federated rounds with SecAgg+, over the database and without HTTP.

A round samples a cohort (over-selected to tolerate dropouts) from enrolled on-device devices
and walks the secagg server through its stages (ADVERTISE -> SHARE_KEYS -> MASKED_INPUT ->
CONSISTENCY -> UNMASKING). Every step loads the `ServerState` from the round's row, changes it
and writes it back in one transaction, so a restarted coordinator carries on where the last
one stopped. A stage closes when every expected device answered or its timeout passed (`tick`);
whoever stayed silent has dropped. The server's reply for each device waits in the row's
outbox until the device polls for it. The database only ever holds masked vectors and their
running sum: the secagg state folds a masked input into the sum on receipt.

When Unmasking closes, the decoded sum / contributors is the average clipped delta; the server
optimiser (`coordinator.server_opt`) applies it to the global device part and the registry
gets a new version (same LiteRT file), with the round's metrics and federated evaluation.
"""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import select

from coordinator import db, server_opt
from coordinator.errors import Conflict, Invalid, NotFound
from secagg import dp, server, wire
from secagg.errors import AbortError, CryptoError, ProtocolError, WireError
from secagg.params import RoundParams, new_round
from secagg.server_state import ServerStage, ServerState

if TYPE_CHECKING:  # the service opens rounds.recover at start: no import cycle at runtime
    from coordinator.service import Coordinator

__all__ = [
    "STAGES",
    "RoundView",
    "open_round",
    "current_for",
    "status",
    "submit",
    "inbox",
    "tick",
    "close_stage",
    "recover",
    "max_message_bytes",
]

STAGES = tuple(s.value for s in list(ServerStage)[:5])  # the collecting stages, in order

# One writer at a time per process: each step is a read-modify-write of the round's state.
# (On PostgreSQL `with_for_update` also serialises writers of other processes.)
_LOCK = threading.RLock()


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


def _now(now: datetime | None) -> datetime:
    return now or db.utcnow()


def _aware(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)  # SQLite hands back naive UTC


def _state(row: db.Round) -> ServerState:
    return ServerState.from_json(row.server_state)


def _devices(row: db.Round) -> dict[int, str]:
    return {int(k): v for k, v in row.members["devices"].items()}


def _client_id(row: db.Round, device_id: str) -> int:
    for k, v in _devices(row).items():
        if v == device_id:
            return k
    raise Conflict(f"device {device_id!r} is not in the cohort of round {row.id}")


def _expected(st: ServerState) -> set[int]:
    return {
        ServerStage.ADVERTISE: set(st.identities),
        ServerStage.SHARE_KEYS: set(st.adverts),
        ServerStage.MASKED_INPUT: set(st.shared),
        ServerStage.CONSISTENCY: set(st.survivors),
        ServerStage.UNMASKING: set(st.requests),
    }.get(st.stage, set())


def _open_stage(s, round_id: int, name: str, now: datetime) -> None:
    s.add(db.Stage(round_id=round_id, name=name, status="open", started_at=now))


def _stage_row(s, round_id: int) -> db.Stage:
    q = select(db.Stage).where(db.Stage.round_id == round_id).order_by(db.Stage.id.desc())
    return s.scalars(q.limit(1)).one()


def _load(s, round_id: int) -> db.Round:
    row = s.get(db.Round, round_id, with_for_update=True)
    if row is None:
        raise NotFound(f"no round {round_id}")
    return row


def open_round(
    coord: Coordinator,
    rng: np.random.Generator,
    cohort_size: int | None = None,
    now: datetime | None = None,
) -> int:
    """Sample a cohort of on-device devices and start a round; returns its id."""
    cfg = coord.config
    want = cohort_size or cfg.round_cohort_size
    now = _now(now)
    current = coord.registry.current()
    dim = server_opt.dimension(coord.registry.device_part(current.id))
    with _LOCK, coord.db.transaction() as s:
        if s.scalars(select(db.Round.id).where(db.Round.status == "running")).first():
            raise Conflict("a round is already running")
        rows = s.scalars(
            select(db.Device).where(db.Device.mode == "on_device").order_by(db.Device.id)
        ).all()
        n = min(len(rows), int(np.ceil(want * (1 + cfg.round_overselect))))
        if n < 2:
            raise Invalid(f"{len(rows)} on-device devices enrolled; a round needs at least 2")
        chosen = sorted(rng.choice(len(rows), size=n, replace=False).tolist())
        devices = {i: rows[j].id for i, j in enumerate(chosen)}
        identities = {i: rows[j].public_key for i, j in enumerate(chosen)}
        row = db.Round(version_id=current.id, status="running", started_at=now)
        s.add(row)
        s.flush()  # the id labels the secagg round (bound into every message)
        params = new_round(cfg.secagg, f"sotto/{row.id}/{now.isoformat()}", list(devices), dim)
        row.params = params.to_json()
        row.members = {"devices": {str(k): v for k, v in devices.items()}, "dropouts": {}}
        row.server_state = server.new_server(params, identities).to_json()
        row.outbox = {}
        _open_stage(s, row.id, ServerStage.ADVERTISE.value, now)
        return row.id


def current_for(coord: Coordinator, device_id: str) -> RoundView | None:
    """The running round this device is in, if any."""
    with coord.db.transaction() as s:
        for row in s.scalars(select(db.Round).where(db.Round.status == "running")).all():
            devices = _devices(row)
            if device_id in devices.values():
                u = _client_id(row, device_id)
                st = _state(row)
                nb = st.params.neighbours[u] + (u,)
                return RoundView(row.id, row.status, st.stage.value, u, row.params,
                                 {v: st.identities[v] for v in nb}, row.reason)  # fmt: skip
    return None


def status(coord: Coordinator, round_id: int) -> dict:
    """Status, stage, reason and resulting version of a round (public facts only)."""
    with coord.db.transaction() as s:
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
            "cohort": len(row.members["devices"]),
            "dropouts": row.members.get("dropouts", {}),
            "stages": [
                {
                    "name": g.name,
                    "status": g.status,
                    "bytes_in": g.bytes_in,
                    "bytes_out": g.bytes_out,
                }
                for g in stages
            ],  # fmt: skip
        }


def max_message_bytes(coord: Coordinator, round_id: int) -> int:
    with coord.db.transaction() as s:
        row = s.get(db.Round, round_id)
        if row is None or row.params is None:
            raise NotFound(f"no round {round_id}")
        return RoundParams.from_json(row.params).max_message_bytes()


def submit(
    coord: Coordinator,
    round_id: int,
    device_id: str,
    stage: str,
    message: bytes,
    now: datetime | None = None,
) -> str:
    """Fold one device's message for `stage` into the round; closes the stage when everyone
    expected has answered. Returns the round's stage afterwards. Any rejection raises before
    anything is written (Conflict for protocol errors, Invalid for bad bytes/signatures)."""
    now = _now(now)
    tick(coord, now)
    with _LOCK:
        with coord.db.transaction() as s:
            row = _load(s, round_id)
            if row.status != "running":
                raise Conflict(f"round {round_id} is {row.status}: {row.reason or 'finished'}")
            u = _client_id(row, device_id)
            st = _state(row)
            if stage != st.stage.value:
                raise Conflict(f"round {round_id} is in stage {st.stage.value}, not {stage}")
            try:
                sender = wire.peek(message).sender
                if sender != u:  # the bearer token decides who speaks, not the header
                    raise ProtocolError(f"message names sender {sender}, device is client {u}")
                st = server.receive(st, message)
            except (ProtocolError, AbortError) as e:
                raise Conflict(str(e)) from e
            except (WireError, CryptoError) as e:
                raise Invalid(str(e)) from e
            row.server_state = st.to_json()
            _stage_row(s, round_id).bytes_in += len(message)
            complete = set(st.inbox) >= _expected(st)
        if complete:
            close_stage(coord, round_id, now)
        return _stage_of(coord, round_id)


def _stage_of(coord: Coordinator, round_id: int) -> str:
    with coord.db.transaction() as s:
        row = s.get(db.Round, round_id)
        return row.status if row.status != "running" else row.server_state["stage"]


def inbox(coord: Coordinator, round_id: int, device_id: str, stage: str) -> bytes | None:
    """The server's message that lets this device answer `stage`; None if not there yet.
    Conflict if the round ended or moved on without this device (it dropped)."""
    tick(coord)
    with coord.db.transaction() as s:
        row = s.get(db.Round, round_id)
        if row is None:
            raise NotFound(f"no round {round_id}")
        _client_id(row, device_id)
        if row.status != "running":
            raise Conflict(f"round {round_id} is {row.status}: {row.reason or 'finished'}")
        if stage not in STAGES:
            raise Invalid(f"unknown stage {stage!r}; stages are {STAGES}")
        entry = (row.outbox or {}).get(device_id)
        if entry is not None and entry["stage"] == stage:
            return base64.b64decode(entry["msg"])
        if STAGES.index(stage) < STAGES.index(row.server_state["stage"]):
            raise Conflict(f"round {round_id} moved past {stage} without device {device_id!r}")
        return None


def tick(coord: Coordinator, now: datetime | None = None) -> list[int]:
    """Close every stage whose timeout passed; returns the rounds touched."""
    now = _now(now)
    cfg = coord.config
    due = []
    with coord.db.transaction() as s:
        for row in s.scalars(select(db.Round).where(db.Round.status == "running")).all():
            g = _stage_row(s, row.id)
            timeout = (
                cfg.round_masked_input_timeout_s
                if g.name == ServerStage.MASKED_INPUT.value
                else cfg.round_stage_timeout_s
            )
            if _aware(g.started_at) + timedelta(seconds=timeout) <= now:
                due.append(row.id)
    for rid in due:
        close_stage(coord, rid, now)
    return due


def _abort(s, row: db.Round, reason: str, state: ServerState | None, now: datetime) -> None:
    row.status, row.reason, row.ended_at, row.outbox = "aborted", reason, now, {}
    if state is not None:
        row.server_state = state.to_json()  # ABORTED state: masked data already dropped
    else:
        row.server_state = {**(row.server_state or {}), "stage": "aborted", "acc": None}
    g = _stage_row(s, row.id)
    g.status, g.ended_at = "aborted", now


def close_stage(coord: Coordinator, round_id: int, now: datetime | None = None) -> str:
    """Close the round's current stage (everyone answered, or its timeout passed)."""
    now = _now(now)
    with _LOCK:
        with coord.db.transaction() as s:
            row = _load(s, round_id)
            if row.status != "running":
                return row.status
            st = _state(row)
            dropped = sorted(_expected(st) - set(st.inbox))
            row.members = {
                **row.members,
                "dropouts": {**row.members["dropouts"], st.stage.value: len(dropped)},
            }
            if st.stage == ServerStage.UNMASKING:
                pass  # finished below, outside this transaction (the registry writes too)
            else:
                try:
                    st, out = server.advance(st)
                except AbortError as e:
                    _abort(s, row, str(e), e.state, now)
                    return "aborted"
                devices = _devices(row)
                row.outbox = {
                    devices[u]: {"stage": st.stage.value, "msg": base64.b64encode(m).decode()}
                    for u, m in out.items()
                }
                row.server_state = st.to_json()
                g = _stage_row(s, round_id)
                g.status, g.ended_at = "closed", now
                g.bytes_out = sum(len(m) for m in out.values())
                _open_stage(s, round_id, st.stage.value, now)
                return st.stage.value
        return _finish(coord, round_id, now)


def _finish(coord: Coordinator, round_id: int, now: datetime) -> str:
    cfg = coord.config
    with coord.db.transaction() as s:
        row = _load(s, round_id)
        st, version_id, dropouts = _state(row), row.version_id, dict(row.members["dropouts"])
    try:
        st, result = server.finish(st)
    except AbortError as e:
        with coord.db.transaction() as s:
            _abort(s, _load(s, round_id), str(e), e.state, now)
        return "aborted"
    n = result.num_contributors
    vec_sum = result.vector_sum
    if cfg.dp_noise_multiplier > 0:
        from secrets import randbits

        rng = np.random.default_rng(randbits(128))
        vec_sum = dp.add_noise(vec_sum, cfg.secagg.clip_norm, cfg.dp_noise_multiplier, rng)
    average = (vec_sum / n).astype(np.float32)
    part = coord.registry.device_part(version_id)
    new_vec = server_opt.apply_update(
        server_opt.flatten(part),
        average,
        cfg.server_learning_rate,
        cfg.server_momentum,
        cfg.data_dir / "server_optimizer.npz",
    )
    hits1, hits3, words = (list(result.counters) + [0, 0, 0])[:3]
    metrics = {
        "source": f"round {round_id}",
        "round": round_id,
        "contributors": n,
        "dropouts": dropouts,
        "fed_hits_at_1": hits1,
        "fed_hits_at_3": hits3,
        "fed_words": words,
        "fed_top1": hits1 / words if words else None,
        "fed_top3": hits3 / words if words else None,
        "dp_noise_multiplier": cfg.dp_noise_multiplier,
    }
    version = coord.registry.register(
        coord.registry.model_bytes(version_id),
        server_opt.unflatten(new_vec, part),
        metrics,
        parent=version_id,
    )
    with coord.db.transaction() as s:
        row = _load(s, round_id)
        row.server_state = st.to_json()  # DONE: the masked sum is dropped with it
        row.status, row.ended_at, row.result_version, row.outbox = "done", now, version.id, {}
        g = _stage_row(s, round_id)
        g.status, g.ended_at = "closed", now
    return "done"


def recover(coord: Coordinator) -> list[int]:
    """After a restart: running rounds whose state loads carry on (their stage timeouts still
    apply); any whose state cannot be loaded are aborted, so no round stays stuck."""
    aborted = []
    with _LOCK, coord.db.transaction() as s:
        for row in s.scalars(select(db.Round).where(db.Round.status == "running")).all():
            try:
                _state(row)
                _devices(row)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                why = f"coordinator restarted and could not resume: {e}"
                _abort(s, row, why, None, db.utcnow())
                aborted.append(row.id)
    return aborted
