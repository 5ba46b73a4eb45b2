"""Read-only queries over the coordinator's database, for the dashboard.

Pure functions of an engine (plus, for the privacy budget, the ledger file): each returns a
pandas DataFrame or a dict, and none writes. The engine from `connect` refuses writes at the
driver level (SQLite `mode=ro`, PostgreSQL read-only transactions), so a dashboard pointed at a
live coordinator can never change its state. Table layout: `coordinator.db`.
"""

from __future__ import annotations

import bisect
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import create_engine, inspect, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from coordinator import db
from coordinator.config import CoordinatorConfig

__all__ = [
    "ENV_URL",
    "ENV_LEDGER",
    "STAGES",
    "FULL_MODEL_PARAMS",
    "DENSE_UPDATE_BYTES",
    "DashboardError",
    "default_url",
    "ledger_path",
    "display_url",
    "connect",
    "check",
    "quality",
    "rounds",
    "staleness",
    "upload_histograms",
    "stages",
    "bytes_per_round",
    "traffic_by_kind",
    "privacy",
    "devices",
    "cloud_text",
    "summary",
    "reference_quality",
]

ENV_URL = "SOTTO_DATABASE_URL"
ENV_LEDGER = "SOTTO_PRIVACY_LEDGER"
STAGES = ("advertise", "share_keys", "masked_input", "consistency", "unmasking")
# The whole network (base + device part) as a dense float32 update: what plain FedAvg of the
# full model would upload per device per round; the yardstick for the compression ratio.
FULL_MODEL_PARAMS = 1_431_950
DENSE_UPDATE_BYTES = FULL_MODEL_PARAMS * 4
_ROUND_ENDPOINT = "/v1/rounds/"
_TABLES = {t.name for t in db.Base.metadata.sorted_tables}
_ADDED_TABLES = {"ready_devices", "schema_version"}  # schema 2 (coordinator.db.migrate)


class DashboardError(Exception):
    """The database cannot be read (unreachable) or is not a Sotto coordinator database."""


def default_url() -> str:
    """`SOTTO_DATABASE_URL`, else the coordinator's default SQLite file."""
    return os.environ.get(ENV_URL) or CoordinatorConfig.default().db_url


def ledger_path(url: str) -> Path | None:
    """The coordinator's privacy ledger: `SOTTO_PRIVACY_LEDGER`, else (SQLite) the file next
    to the database in the data dir; None if neither applies. The epsilon limit lives there,
    not in the database."""
    if os.environ.get(ENV_LEDGER):
        return Path(os.environ[ENV_LEDGER])
    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database not in (None, "", ":memory:"):
        return Path(u.database).parent / "privacy_ledger.json"
    return None


def display_url(url: str) -> str:
    """`url` without its password, for the page header."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(not a valid database URL)"


def connect(url: str) -> Engine:
    """A read-only engine for `url` (nothing is opened until the first query);
    DashboardError for a URL that cannot name a database."""
    try:
        return _connect(url)
    except (ArgumentError, ImportError) as e:  # bad URL, or no driver for its dialect
        raise DashboardError(f"cannot use the database URL {display_url(url)}: {e}") from e


def _connect(url: str) -> Engine:
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        path = u.database or ""
        if path in ("", ":memory:"):
            raise DashboardError("an in-memory SQLite database has no coordinator data")
        # URI mode=ro: a missing file is an error instead of a new empty database.
        ro = f"sqlite:///file:{Path(path).absolute()}?mode=ro&uri=true"
        return create_engine(ro, connect_args={"check_same_thread": False})
    if u.get_backend_name() == "postgresql":
        return create_engine(
            u,
            connect_args={"options": "-c default_transaction_read_only=on", "connect_timeout": 5},
        )
    return create_engine(u)


def check(engine: Engine) -> None:
    """Raise DashboardError with a readable reason unless the Sotto tables can be read."""
    where = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as c:
            names = set(inspect(c).get_table_names())
    except SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise DashboardError(f"cannot open the database {where}: {reason}") from e
    missing = sorted(_TABLES - names)
    if missing and set(missing) <= _ADDED_TABLES:
        raise DashboardError(
            f"{where} was written by an older coordinator: start the coordinator once on it to "
            "migrate its schema (the dashboard only reads)"
        )
    if missing:
        raise DashboardError(
            f"{where} is not a Sotto coordinator database (missing tables: {', '.join(missing)})"
        )


def _utc(t: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; the coordinator writes every timestamp in UTC.
    return None if t is None else (t if t.tzinfo else t.replace(tzinfo=UTC))


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    return None if a is None or b is None else (_utc(b) - _utc(a)).total_seconds()


def _rows(engine: Engine, q) -> list:
    # The database may go away between `check` and a query (a restart, a network cut): the
    # page reports it like an unreachable database instead of showing a traceback.
    try:
        with engine.connect() as c:
            return c.execute(q).all()
    except SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise DashboardError(f"reading the database failed: {reason}") from e


def quality(engine: Engine) -> pd.DataFrame:
    """One row per version: server-side public evaluation and federated evaluation.

    Federated top-k is recomputed from the summed counters (hits / words from the masked sum),
    so it never depends on a stored ratio.
    """
    v = db.Version.__table__
    out = []
    for r in _rows(
        engine, select(v.c.id, v.c.parent, v.c.created_at, v.c.metrics).order_by(v.c.id)
    ):
        m = r.metrics or {}
        words = m.get("fed_words") or 0
        h1, h3 = m.get("fed_hits_at_1"), m.get("fed_hits_at_3")
        out.append(
            {
                "version": r.id,
                "parent": r.parent,
                "created_at": _utc(r.created_at),
                "source": m.get("source"),
                "round": m.get("round"),
                "public_top1": m.get("public_top1"),
                "public_top3": m.get("public_top3"),
                "public_targets": m.get("public_targets"),
                "public_perplexity": m.get("public_perplexity"),
                "public_keystroke_savings": m.get("public_keystroke_savings"),
                "fed_hits_at_1": h1,
                "fed_hits_at_3": h3,
                "fed_words": m.get("fed_words"),
                "fed_top1": h1 / words if words and h1 is not None else None,
                "fed_top3": h3 / words if words and h3 is not None else None,
                "contributors": m.get("contributors"),
            }
        )
    cols = [
        "version", "parent", "created_at", "source", "round", "public_top1", "public_top3",
        "public_targets", "public_perplexity", "public_keystroke_savings", "fed_hits_at_1",
        "fed_hits_at_3", "fed_words", "fed_top1", "fed_top3",
        "contributors",
    ]  # fmt: skip
    return pd.DataFrame(out, columns=cols)


def rounds(engine: Engine) -> pd.DataFrame:
    """One row per round: mode, status, cohort, over-selection, contributors, dropouts per
    stage, staleness (buffered rounds), duration."""
    r, v = db.Round.__table__, db.Version.__table__
    q = select(
        r.c.id, r.c.version_id, r.c.result_version, r.c.status, r.c.started_at, r.c.ended_at,
        r.c.members, r.c.params, r.c.reason, r.c.mode, r.c.stats,
    ).order_by(r.c.id)  # fmt: skip
    contributors = {
        row.id: (row.metrics or {}).get("contributors")
        for row in _rows(engine, select(v.c.id, v.c.metrics))
    }
    out = []
    for row in _rows(engine, q):
        members = row.members or {}
        drops = members.get("dropouts") or {}
        params = row.params or {}
        taus = list(((row.stats or {}).get("staleness") or {}).values())
        out.append(
            {
                "round": row.id,
                "mode": row.mode or "sync",
                "status": row.status,
                "from_version": row.version_id,
                "result_version": row.result_version,
                "started_at": _utc(row.started_at),
                "ended_at": _utc(row.ended_at),
                "duration_s": _seconds(row.started_at, row.ended_at),
                "cohort": len(members.get("devices") or {}),
                "threshold": params.get("threshold"),
                "contributors": contributors.get(row.result_version),
                **{f"dropped_{s}": int(drops.get(s, 0)) for s in STAGES},
                "dropped_total": int(sum(drops.values())),
                "staleness_mean": sum(taus) / len(taus) if taus else None,
                "staleness_max": max(taus) if taus else None,
                "reason": row.reason,
            }
        )
    cols = [
        "round", "mode", "status", "from_version", "result_version", "started_at", "ended_at",
        "duration_s", "cohort", "threshold", "contributors",
        *[f"dropped_{s}" for s in STAGES], "dropped_total", "staleness_mean", "staleness_max",
        "reason",
    ]  # fmt: skip
    return pd.DataFrame(out, columns=cols)


def staleness(engine: Engine) -> pd.DataFrame:
    """One row per member of every buffered round: its staleness (versions behind when the
    round opened) and its public weight. Synchronous rounds have none (all trained from the
    round's version)."""
    r = db.Round.__table__
    out = []
    for row in _rows(engine, select(r.c.id, r.c.stats).order_by(r.c.id)):
        st = row.stats or {}
        weights = st.get("weights") or {}
        for client, tau in sorted((st.get("staleness") or {}).items(), key=lambda x: int(x[0])):
            out.append(
                {"round": row.id, "client": int(client), "staleness": int(tau),
                 "weight": weights.get(client)}
            )  # fmt: skip
    return pd.DataFrame(out, columns=["round", "client", "staleness", "weight"])


def upload_histograms(engine: Engine) -> pd.DataFrame:
    """Per round, the value histogram of ONE masked upload as the server received it (field
    values, uniform whatever the update) and that of the unmasked aggregate (the released
    average of the whole cohort): one row per bin, {round, what, bin, lo, hi, count}."""
    r = db.Round.__table__
    names = {"masked_hist": "masked upload", "aggregate_hist": "unmasked aggregate"}
    out = []
    for row in _rows(engine, select(r.c.id, r.c.stats).order_by(r.c.id)):
        for key, what in names.items():
            h = (row.stats or {}).get(key)
            if not h:
                continue
            n = len(h["counts"])
            width = (h["hi"] - h["lo"]) / n
            for i, c in enumerate(h["counts"]):
                lo = h["lo"] + i * width
                out.append(
                    {"round": row.id, "what": what, "bin": i, "lo": lo, "hi": lo + width,
                     "count": int(c)}
                )  # fmt: skip
    return pd.DataFrame(out, columns=["round", "what", "bin", "lo", "hi", "count"])


def stages(engine: Engine) -> pd.DataFrame:
    """One row per secure-aggregation stage of every round, with its duration and bytes."""
    g = db.Stage.__table__
    out = [
        {
            "round": row.round_id,
            "stage": row.name,
            "status": row.status,
            "duration_s": _seconds(row.started_at, row.ended_at),
            "bytes_in": int(row.bytes_in or 0),
            "bytes_out": int(row.bytes_out or 0),
        }
        for row in _rows(engine, select(g).order_by(g.c.round_id, g.c.id))
    ]
    cols = ["round", "stage", "status", "duration_s", "bytes_in", "bytes_out"]
    return pd.DataFrame(out, columns=cols)


def bytes_per_round(engine: Engine) -> pd.DataFrame:
    """Per round: bytes each cohort device sent and received on the round endpoints (from the
    traffic table), against a dense float32 update.

    Traffic rows carry no round id. One round runs at a time, so a member's round request
    belongs to the last round that started before it; not to a window ending at `ended_at`,
    because the request that closes a round is recorded just after the round's end time.
    """
    r, t = db.Round.__table__, db.Traffic.__table__
    rows = _rows(engine, select(r).order_by(r.c.started_at, r.c.id))
    starts = [_utc(row.started_at) for row in rows]
    members = [set(((row.members or {}).get("devices") or {}).values()) for row in rows]
    ups = [dict.fromkeys(m, 0) for m in members]
    downs = [dict.fromkeys(m, 0) for m in members]
    q = select(t.c.device_id, t.c.direction, t.c.bytes, t.c.at)
    # A ready report (buffered mode) comes before its round: not round traffic.
    q = q.where(t.c.endpoint.startswith(_ROUND_ENDPOINT), t.c.endpoint != "/v1/rounds/ready")
    for d, direction, n, at in _rows(engine, q):
        i = bisect.bisect_right(starts, _utc(at)) - 1
        if i >= 0 and d in members[i]:
            (ups[i] if direction == "in" else downs[i])[d] += int(n)
    out = []
    for row, up, down in sorted(zip(rows, ups, downs, strict=True), key=lambda x: x[0].id):
        active = [d for d in up if up[d] or down[d]]  # devices that took part at all
        dim = (row.params or {}).get("dim")
        mean_up = sum(up[d] for d in active) / len(active) if active else None
        top_up = max((up[d] for d in active), default=None)
        out.append(
            {
                "round": row.id,
                "status": row.status,
                "devices": len(active),
                "bytes_up_total": sum(up.values()),
                "bytes_down_total": sum(down.values()),
                "bytes_up_per_device": mean_up,
                "bytes_down_per_device": (
                    sum(down[d] for d in active) / len(active) if active else None
                ),
                "max_bytes_up_device": top_up,
                "device_part_params": dim,
                "dense_device_part_bytes": dim * 4 if dim else None,
                "dense_full_model_bytes": DENSE_UPDATE_BYTES,
                # Against one full participant's upload (the largest), not the mean, which a
                # device that dropped early pulls down.
                "compression_vs_full": DENSE_UPDATE_BYTES / top_up if top_up else None,
            }
        )
    cols = [
        "round", "status", "devices", "bytes_up_total", "bytes_down_total",
        "bytes_up_per_device", "bytes_down_per_device", "max_bytes_up_device",
        "device_part_params", "dense_device_part_bytes", "dense_full_model_bytes",
        "compression_vs_full",
    ]  # fmt: skip
    return pd.DataFrame(out, columns=cols)


def traffic_by_kind(engine: Engine) -> pd.DataFrame:
    """Bytes in (to the server) and out per kind of payload, over all devices."""
    t = db.Traffic.__table__
    acc: dict[str, dict[str, int]] = {}
    for kind, direction, n in _rows(engine, select(t.c.kind, t.c.direction, t.c.bytes)):
        acc.setdefault(kind, {"bytes_in": 0, "bytes_out": 0})[
            "bytes_in" if direction == "in" else "bytes_out"
        ] += int(n)
    out = [{"kind": k, **v} for k, v in sorted(acc.items())]
    return pd.DataFrame(out, columns=["kind", "bytes_in", "bytes_out"])


def _ledger(path: Path | None) -> dict[str, Any] | None:
    if path is None or not Path(path).is_file():
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def privacy(engine: Engine, ledger_file: Path | None = None) -> dict[str, Any]:
    """Epsilon spent per version (from round metrics), the clip norm of the rounds, and the
    budget from the coordinator's privacy ledger file when it can be read.

    {"per_version": DataFrame, "clip_norm": float | None, "noise_multiplier", "delta",
     "epsilon_spent", "epsilon_limit", "ledger_rounds", "dp": bool}
    """
    v, r = db.Version.__table__, db.Round.__table__
    per = []
    for row in _rows(engine, select(v.c.id, v.c.metrics).order_by(v.c.id)):
        m = row.metrics or {}
        if "round" not in m:
            continue
        per.append(
            {
                "version": row.id,
                "round": m.get("round"),
                "epsilon": m.get("dp_epsilon"),
                "delta": m.get("dp_delta"),
                "noise_multiplier": m.get("dp_noise_multiplier"),
            }
        )
    df = pd.DataFrame(per, columns=["version", "round", "epsilon", "delta", "noise_multiplier"])
    clips = [
        (p or {}).get("config", {}).get("clip_norm")
        for (p,) in _rows(engine, select(r.c.params).order_by(r.c.id))
    ]
    clips = [c for c in clips if c is not None]
    noised = df.dropna(subset=["epsilon"])
    ledger = _ledger(ledger_file)
    cfg = (ledger or {}).get("config", {})
    return {
        "per_version": df,
        "dp": not noised.empty or ledger is not None,
        "clip_norm": clips[-1] if clips else None,
        "noise_multiplier": (
            noised["noise_multiplier"].iloc[-1] if not noised.empty else cfg.get("noise_multiplier")
        ),
        "delta": noised["delta"].iloc[-1] if not noised.empty else cfg.get("delta"),
        "epsilon_spent": float(noised["epsilon"].max()) if not noised.empty else None,
        "epsilon_limit": cfg.get("epsilon_limit"),
        "ledger_rounds": (ledger or {}).get("rounds"),
    }


def devices(engine: Engine) -> pd.DataFrame:
    """Enrolled devices: mode, enrolment, last seen, model version in use, bytes exchanged."""
    d, t = db.Device.__table__, db.Traffic.__table__
    up: dict[str, int] = {}
    down: dict[str, int] = {}
    for dev, direction, n in _rows(engine, select(t.c.device_id, t.c.direction, t.c.bytes)):
        if dev is not None:
            side = up if direction == "in" else down
            side[dev] = side.get(dev, 0) + int(n)
    q = select(d.c.id, d.c.mode, d.c.enrolled_at, d.c.last_seen, d.c.model_version)
    out = [
        {
            "device": row.id,
            "mode": row.mode,
            "enrolled_at": _utc(row.enrolled_at),
            "last_seen": _utc(row.last_seen),
            "model_version": row.model_version,
            "bytes_up": up.get(row.id, 0),
            "bytes_down": down.get(row.id, 0),
        }
        for row in _rows(engine, q.order_by(d.c.id))
    ]
    cols = ["device", "mode", "enrolled_at", "last_seen", "model_version", "bytes_up", "bytes_down"]
    return pd.DataFrame(out, columns=cols)


def cloud_text(engine: Engine) -> pd.DataFrame:
    """Raw typed text received from cloud-mode devices: requests and bytes (never the text)."""
    c = db.CloudText.__table__
    out = [
        {
            "device": row.device_id,
            "requests": int(row.requests),
            "bytes": int(row.bytes),
            "updated_at": _utc(row.updated_at),
        }
        for row in _rows(engine, select(c).order_by(c.c.device_id))
    ]
    return pd.DataFrame(out, columns=["device", "requests", "bytes", "updated_at"])


def summary(engine: Engine) -> dict[str, Any]:
    """Headline counts for the top of the page."""
    q, r, dv, ct = quality(engine), rounds(engine), devices(engine), cloud_text(engine)
    return {
        "versions": len(q),
        "current_version": int(q["version"].max()) if len(q) else None,
        "rounds": len(r),
        "rounds_done": int((r["status"] == "done").sum()),
        "rounds_aborted": int((r["status"] == "aborted").sum()),
        "round_running": bool((r["status"] == "running").any()),
        "devices": len(dv),
        "devices_by_mode": {k: int(n) for k, n in dv["mode"].value_counts().sort_index().items()},
        "raw_text_bytes": int(ct["bytes"].sum()) if len(ct) else 0,
        "raw_text_requests": int(ct["requests"].sum()) if len(ct) else 0,
    }


def reference_quality(path: Path, split: str = "chitchat_heldout") -> dict[str, dict[str, float]]:
    """Reference lines from `bench/results/quality.json`: {"3-gram": {...}, "centralised": ...}
    with top1/top3 on `split`; {} if the file is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())[split]
    except (OSError, ValueError, KeyError):
        return {}
    names = {"ngram": "3-gram baseline", "centralized": "centralised (upper bound)"}
    return {
        label: {"top1": float(data[k]["top1"]), "top3": float(data[k]["top3"])}
        for k, label in names.items()
        if k in data
    }
