"""Synchronous federated rounds with SecAgg+, over the database and without HTTP.

A round samples a cohort (over-selected to tolerate dropouts) from enrolled on-device devices
and walks the secagg server through its stages (ADVERTISE -> SHARE_KEYS -> MASKED_INPUT ->
CONSISTENCY -> UNMASKING). Every step loads the `ServerState` from the round's row, changes it
and writes it back in one transaction, so a restarted coordinator carries on where the last
one stopped. A stage closes when every expected device answered or its timeout passed (`tick`);
whoever stayed silent has dropped. The server's reply for each device waits in the row's
outbox until the device polls for it (`inbox`). The database only ever holds masked vectors
and their running sum: the secagg state folds a masked input into the sum on receipt.

When Unmasking closes, `coordinator.round_result` turns the aggregate into a new version. A
round that falls below the secagg threshold ends `aborted`, with the reason, and no version.

Buffered rounds (`coordinator.buffered`) form their cohort from ready devices instead of
sampling (`start_round` with each member's version), then run the same stages; the round row
keeps its mode and each member's staleness and public weight (`rounds.stats`), and the
aggregate is divided by the survivors' total weight. `coordinator.scheduler` opens rounds.
"""

from __future__ import annotations

import base64
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import select

from coordinator import db, evaluation, round_result, server_opt, staleness
from coordinator import round_store as rs
from coordinator.errors import Conflict, Invalid, NotFound
from coordinator.round_store import STAGES, RoundView, current_for, max_message_bytes, status
from secagg import server, subsample, wire
from secagg.errors import (
    AbortError,
    BudgetExhaustedError,
    CryptoError,
    ProtocolError,
    WireError,
)
from secagg.params import new_round
from secagg.server_state import ServerStage

if TYPE_CHECKING:  # the service calls recover() when it opens: no import cycle at runtime
    from coordinator.service import Coordinator

__all__ = [
    "STAGES",
    "RoundView",
    "open_round",
    "start_round",
    "current_for",
    "status",
    "max_message_bytes",
    "submit",
    "inbox",
    "tick",
    "close_stage",
    "recover",
]


def open_round(
    coord: Coordinator,
    rng: np.random.Generator,
    cohort_size: int | None = None,
    now: datetime | None = None,
) -> int:
    """Sample a cohort of on-device devices and start a synchronous round; returns its id.

    ceil(cohort_size * (1 + round_overselect)) devices are asked, so the round survives the
    dropouts the secagg threshold was chosen for. One round runs at a time.
    """
    cfg = coord.config
    want = cohort_size or cfg.round_cohort_size
    now = rs.now_or(now)
    tick(coord, now)  # a round whose devices all went silent ends here, not blocks forever
    with rs.LOCK, coord.db.transaction() as s:
        rs.refuse_if_running(s)
        rows = s.scalars(
            select(db.Device).where(db.Device.mode == "on_device").order_by(db.Device.id)
        ).all()
        n = min(len(rows), int(np.ceil(want * (1 + cfg.round_overselect))))
        if n < 2:
            raise Invalid(f"{len(rows)} on-device devices enrolled; a round needs at least 2")
        chosen = sorted(rng.choice(len(rows), size=n, replace=False).tolist())
        return start_round(coord, s, [rows[j] for j in chosen], "sync", None, now)


def start_round(
    coord: Coordinator,
    s,
    cohort: list[db.Device],
    mode: str,
    trained_from: dict[str, int] | None,
    now: datetime,
) -> int:
    """Create the round row for `cohort` (inside the caller's transaction and lock).

    Buffered rounds pass each member's `trained_from` version: its staleness against the
    current version and its public weight are stored with the round and handed out in the
    member's round task."""
    cfg = coord.config
    current = coord.registry.current()
    dim = server_opt.dimension(coord.registry.device_part(current.id))
    members = {i: d.id for i, d in enumerate(cohort)}
    identities = {i: d.public_key for i, d in enumerate(cohort)}
    stats: dict = {}
    if trained_from is not None:
        taus = {i: staleness.staleness(trained_from[d], current.id) for i, d in members.items()}
        stats["trained_from"] = {str(i): trained_from[d] for i, d in members.items()}
        stats["staleness"] = {str(i): t for i, t in taus.items()}
        stats["weights"] = {
            str(i): staleness.weight(t, cfg.staleness_exponent, cfg.max_staleness)
            for i, t in taus.items()
        }
    row = db.Round(version_id=current.id, status="running", started_at=now, mode=mode)
    s.add(row)
    s.flush()  # the id (and start time) label the secagg round, bound into every message
    label = f"sotto/{row.id}/{now.isoformat()}"
    if cfg.upload_fraction < 1:  # devices upload a public random subset of coordinates
        stats["subset"] = {"seed": subsample.round_seed(label), "of": dim}
        dim = subsample.subset_size(dim, cfg.upload_fraction)
    # A public rotation seed from the label, when updates are rotated before quantising.
    rotation = subsample.round_seed(label, "rotation") if cfg.secagg.rotate else None
    params = new_round(cfg.secagg, label, list(members), dim, rotation)
    row.params = params.to_json()
    row.members = {"devices": {str(k): v for k, v in members.items()}, "dropouts": {}}
    row.server_state = server.new_server(params, identities).to_json()
    row.outbox = {}
    row.stats = stats
    rs.open_stage(s, row.id, ServerStage.ADVERTISE.value, now)
    return row.id


def submit(
    coord: Coordinator,
    round_id: int,
    device_id: str,
    stage: str,
    message: bytes,
    now: datetime | None = None,
) -> str:
    """Fold one device's message for `stage` into the round; closes the stage when everyone
    expected has answered. Returns the round's stage (or final status) afterwards. Any
    rejection raises before anything is written: Conflict for protocol errors (wrong stage,
    replay, another round or sender), Invalid for bad bytes or signatures."""
    tick(coord, now)
    now = rs.now_or(now)
    with rs.LOCK:
        with coord.db.transaction() as s:
            row = rs.load(s, round_id)
            if row.status != "running":
                raise Conflict(f"round {round_id} is {row.status}: {row.reason or 'finished'}")
            u = rs.client_id(row, device_id)
            st = rs.state(row)
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
            if stage == ServerStage.MASKED_INPUT.value and "masked_hist" not in (row.stats or {}):
                # What the server saw of one upload: the value histogram of a masked vector
                # (uniform over the field whatever the update; the vector is not kept).
                row.stats = {**(row.stats or {}), "masked_hist": rs.masked_histogram(st, message)}
            rs.stage_row(s, round_id).bytes_in += len(message)
            complete = set(st.inbox) >= rs.expected(st)
        if complete:
            close_stage(coord, round_id, now, stage)
        with coord.db.transaction() as s:
            st = s.scalars(select(db.Round.status).where(db.Round.id == round_id)).one()
            return st if st != "running" else rs.stage_row(s, round_id).name


def inbox(coord: Coordinator, round_id: int, device_id: str, stage: str) -> bytes | None:
    """The server's message that lets this device answer `stage`; None if not there yet.
    Conflict if the round ended or moved on without this device (it dropped)."""
    if stage not in STAGES:
        raise Invalid(f"unknown stage {stage!r}; stages are {STAGES}")
    tick(coord)
    with coord.db.read() as s:
        # Polled often: read the small columns, not the server state with its masked sum.
        q = select(db.Round.status, db.Round.reason, db.Round.members, db.Round.outbox)
        row = s.execute(q.where(db.Round.id == round_id)).one_or_none()
        if row is None:
            raise NotFound(f"no round {round_id}")
        if device_id not in row.members["devices"].values():
            raise Conflict(f"device {device_id!r} is not in the cohort of round {round_id}")
        if row.status != "running":
            raise Conflict(f"round {round_id} is {row.status}: {row.reason or 'finished'}")
        entry = (row.outbox or {}).get(device_id)
        if entry is not None and entry["stage"] == stage:
            return base64.b64decode(entry["msg"])
        if STAGES.index(stage) < STAGES.index(rs.stage_row(s, round_id).name):
            raise Conflict(f"round {round_id} moved past {stage} without device {device_id!r}")
        return None


TICK_EVERY_S = 0.5
_last_tick: dict[int, float] = {}  # per Coordinator object


def tick(coord: Coordinator, now: datetime | None = None) -> list[int]:
    """Close every stage whose timeout passed (its silent devices have dropped); returns the
    rounds touched. Called on every round request; an operator loop may call it too.

    Without `now` (a request's own clock) it runs at most every TICK_EVERY_S per process:
    stage timeouts are tens of seconds, and every device request checking them made the
    checks themselves a bottleneck (bench/coordinator)."""
    if now is None:
        t = time.monotonic()
        if t - _last_tick.get(id(coord), float("-inf")) < TICK_EVERY_S:
            return []
        _last_tick[id(coord)] = t
    now = rs.now_or(now)
    cfg = coord.config
    due = []
    with coord.db.read() as s:  # ids and stage rows only: no state is parsed here
        for rid in s.scalars(select(db.Round.id).where(db.Round.status == "running")).all():
            g = rs.stage_row(s, rid)
            timeout = (
                cfg.round_masked_input_timeout_s
                if g.name == ServerStage.MASKED_INPUT.value
                else cfg.round_stage_timeout_s
            )
            if rs.aware(g.started_at) + timedelta(seconds=timeout) <= now:
                due.append((rid, g.name))
    for rid, name in due:
        close_stage(coord, rid, now, name)
    return [rid for rid, _ in due]


def close_stage(
    coord: Coordinator, round_id: int, now: datetime | None = None, stage: str | None = None
) -> str:
    """Close the round's current stage (everyone answered, or its timeout passed).

    With `stage`, only if that is still the current one: two requests that both saw a stage
    due must not close it and then its successor.
    """
    now = rs.now_or(now)
    with rs.LOCK:
        with coord.db.transaction() as s:
            row = rs.load(s, round_id)
            st = rs.state(row) if row.status == "running" else None
            if st is None or (stage is not None and st.stage.value != stage):
                return row.status if st is None else st.stage.value
            dropped = sorted(rs.expected(st) - set(st.inbox))
            row.members = {
                **row.members,
                "dropouts": {**row.members["dropouts"], st.stage.value: len(dropped)},
            }
            if st.stage != ServerStage.UNMASKING:
                try:
                    st, out = server.advance(st)
                except AbortError as e:
                    rs.abort_row(s, row, str(e), e.state, now)
                    return "aborted"
                ids = rs.devices(row)
                row.outbox = {
                    ids[u]: {"stage": st.stage.value, "msg": base64.b64encode(m).decode()}
                    for u, m in out.items()
                }
                row.server_state = st.to_json()
                g = rs.stage_row(s, round_id)
                g.status, g.ended_at = "closed", now
                g.bytes_out = sum(len(m) for m in out.values())
                rs.open_stage(s, round_id, st.stage.value, now)
                return st.stage.value
        return _finish(coord, round_id, now)


def _finish(coord: Coordinator, round_id: int, now: datetime) -> str:
    """Unmask, register the new version, mark the round done (the registry writes in its own
    transaction, so this one runs in three steps under the lock)."""
    with coord.db.transaction() as s:
        row = rs.load(s, round_id)
        st, parent, dropouts = rs.state(row), row.version_id, dict(row.members["dropouts"])
        weights = (row.stats or {}).get("weights")
        subset = (row.stats or {}).get("subset")
    try:
        st, result = server.finish(st)
    except AbortError as e:
        with coord.db.transaction() as s:
            rs.abort_row(s, rs.load(s, round_id), str(e), e.state, now)
        return "aborted"
    try:
        version = round_result.register_result(
            coord, round_id, parent, result, dropouts, weights=weights, subset=subset
        )
    except BudgetExhaustedError as e:  # nothing released: the round ends like an abort
        with coord.db.transaction() as s:
            rs.abort_row(s, rs.load(s, round_id), str(e), None, now)
        return "aborted"
    with coord.db.transaction() as s:
        row = rs.load(s, round_id)
        row.server_state = st.to_json()  # DONE: the masked sum is dropped with it
        row.status, row.ended_at, row.result_version, row.outbox = "done", now, version.id, {}
        g = rs.stage_row(s, round_id)
        g.status, g.ended_at = "closed", now
    cfg = coord.config
    if cfg.eval_targets > 0:  # server-side quality of every version, on public users only
        evaluation.evaluate_version(coord.registry, version.id, cfg.eval_preset, cfg.eval_targets)
    return "done"


def recover(coord: Coordinator) -> list[int]:
    """After a restart: a running round whose state loads carries on (its stage timeouts
    still apply; a stage everyone had answered closes now); one whose state cannot be loaded
    is aborted with the reason, so no round stays stuck. Returns the aborted rounds."""
    aborted, complete = [], []
    with rs.LOCK:
        with coord.db.transaction() as s:
            for row in s.scalars(select(db.Round).where(db.Round.status == "running")).all():
                try:
                    st = rs.state(row)
                    rs.devices(row)
                except (KeyError, TypeError, ValueError, AttributeError) as e:
                    why = f"coordinator restarted and could not resume: {e}"
                    rs.abort_row(s, row, why, None, db.utcnow())
                    aborted.append(row.id)
                    continue
                if set(st.inbox) >= rs.expected(st):
                    complete.append((row.id, st.stage.value))
        for rid, stage in complete:
            close_stage(coord, rid, None, stage)
    return aborted
