"""The coordinator's database: SQLAlchemy 2.x ORM tables and transactional sessions.

Portable SQL only (SQLite by default, PostgreSQL by URL): no dialect-specific statements.
Every write happens inside `Database.transaction()`, which commits or rolls back as a whole,
so a crash never leaves half a write. What is deliberately absent: raw tokens (only their
SHA-256), typed text (cloud mode stores a count and a byte length, never the text), and any
single device's update.
"""

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

__all__ = [
    "Base",
    "Device",
    "File",
    "Version",
    "Traffic",
    "CloudText",
    "Round",
    "Stage",
    "Ready",
    "SchemaVersion",
    "SCHEMA_VERSION",
    "migrate",
    "Database",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Device(Base):
    __tablename__ = "devices"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # SHA-256 of the bearer token: a database leak does not let anyone act as a device.
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True, index=True)
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32))  # Ed25519 identity key
    mode: Mapped[str] = mapped_column(String(16))  # "on_device" or "cloud"
    enrolled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    model_version: Mapped[int | None] = mapped_column(ForeignKey("versions.id"))


class File(Base):
    """A content-addressed artefact; `path` is relative to the data dir (or the bytes inline)."""

    __tablename__ = "files"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str | None] = mapped_column(String(255))
    blob: Mapped[bytes | None] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Version(Base):
    __tablename__ = "versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    parent: Mapped[int | None] = mapped_column(ForeignKey("versions.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    base_sha256: Mapped[str] = mapped_column(ForeignKey("files.sha256"))
    device_sha256: Mapped[str] = mapped_column(ForeignKey("files.sha256"))
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)


class Traffic(Base):
    """Bytes exchanged with a device: one row per direction of a served request."""

    __tablename__ = "traffic"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str | None] = mapped_column(ForeignKey("devices.id"), index=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    direction: Mapped[str] = mapped_column(String(4))  # "in" (to server) or "out"
    bytes: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))  # model_download, device_part, raw_text, ...
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CloudText(Base):
    """How much raw text each cloud-mode device sent: counts only, never the text."""

    __tablename__ = "cloud_text"
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Round(Base):
    """A federated round (filled in by the round protocol; defined now so the schema is set)."""

    __tablename__ = "rounds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"))  # model trained from
    result_version: Mapped[int | None] = mapped_column(ForeignKey("versions.id"))
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Filled by `coordinator.rounds`: public round parameters, cohort (secagg id -> device id),
    # the serialised secagg ServerState (masked running sum only, never one input), the
    # server's pending message per device, and why an aborted round stopped.
    params: Mapped[dict | None] = mapped_column(JSON)
    members: Mapped[dict | None] = mapped_column(JSON)
    server_state: Mapped[dict | None] = mapped_column(JSON)
    outbox: Mapped[dict | None] = mapped_column(JSON)
    reason: Mapped[str | None] = mapped_column(String(1000))
    # Schema 2: "sync" or "buffered"; public per-round facts for the dashboard: each member's
    # staleness and weight (buffered), the value histogram of ONE masked upload as received
    # (uniform-looking: it reveals nothing) and that of the unmasked average (never a single
    # device's unmasked update).
    mode: Mapped[str | None] = mapped_column(String(16))
    stats: Mapped[dict | None] = mapped_column(JSON)


class Stage(Base):
    """One secure-aggregation stage of a round (AdvertiseKeys, ShareKeys, ...)."""

    __tablename__ = "stages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    name: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)


class Ready(Base):
    """Buffered mode: a device that trained from `trained_from` and waits for a round."""

    __tablename__ = "ready_devices"
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    trained_from: Mapped[int] = mapped_column(ForeignKey("versions.id"))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SchemaVersion(Base):
    """One row: the schema version this database was last migrated to (`migrate`)."""

    __tablename__ = "schema_version"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


# 1: the first release (no schema_version table). 2: rounds.mode, rounds.stats, ready_devices.
SCHEMA_VERSION = 2
# Columns added to existing tables after version 1: (table, column, portable SQL type).
_ADDED_COLUMNS = {2: [("rounds", "mode", "VARCHAR(16)"), ("rounds", "stats", "JSON")]}


def migrate(engine: Engine) -> int:
    """Bring an existing database up to SCHEMA_VERSION; idempotent, returns the version.

    `create_all` makes missing tables but never alters existing ones; the columns added since
    are added here with `ALTER TABLE ... ADD COLUMN` when absent (checked by inspection, so a
    crash between two statements is repaired by the next start)."""
    from sqlalchemy import inspect, text

    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        row = conn.execute(select(SchemaVersion.version).where(SchemaVersion.id == 1)).first()
        have = row[0] if row else 1
        if have >= SCHEMA_VERSION:
            return have
        for v in range(have + 1, SCHEMA_VERSION + 1):
            for table, column, sqltype in _ADDED_COLUMNS.get(v, []):
                cols = {c["name"] for c in inspect(conn).get_columns(table)}
                if column not in cols:
                    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {sqltype}"))
        if row:
            conn.execute(
                SchemaVersion.__table__.update()
                .where(SchemaVersion.id == 1)
                .values(version=SCHEMA_VERSION)
            )
        else:
            conn.execute(SchemaVersion.__table__.insert().values(id=1, version=SCHEMA_VERSION))
    return SCHEMA_VERSION


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # SQLite ignores foreign keys unless asked; WAL lets readers run during a write.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA journal_mode=WAL")
    # WAL + NORMAL: a commit survives a crash of the process (not of the OS before the next
    # checkpoint); one fsync per checkpoint instead of per commit, for many small writes.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


class Database:
    """An engine plus a session factory; `create_all` on open (idempotent)."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict = {}
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            # Handlers run in a thread pool; each connection is used by one thread at a time.
            # Writers queue for the lock up to 30 s (the default 5 s fails under load).
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30.0}
        self.engine: Engine = create_engine(url, **kwargs)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        migrate(self.engine)
        sqlite = self.engine.dialect.name == "sqlite"
        self._turn = threading.RLock() if sqlite else contextlib.nullcontext()
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose writes commit together on success and roll back on any error.

        On SQLite (one writer at a time) transactions of this process take turns on a lock
        instead of racing for the file lock, whose busy handler sleeps and retries: under many
        concurrent requests that wait, not the work, dominated (bench/coordinator)."""
        with self._turn, self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A transaction that only reads: no turn to wait for (SQLite's WAL lets readers run
        beside the writer, each seeing the last commit). Writes in it are a bug."""
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()

    def describe(self) -> str:
        """The URL without its password, for logs."""
        return self.engine.url.render_as_string(hide_password=True)
