"""Helpers for tests of the coordinator (and of the round protocol built on it).

`SOTTO_TEST_DATABASE_URL` points the tests at another database (e.g. PostgreSQL); by
default each test gets its own SQLite file. A shared database is emptied before each use.
"""

import dataclasses
import os
from pathlib import Path

from Crypto.PublicKey import ECC
from sqlalchemy import create_engine, select

from coordinator import db
from coordinator.config import CoordinatorConfig

__all__ = [
    "ENV_DATABASE_URL",
    "fresh_database_url",
    "fresh_config",
    "new_public_key",
    "snapshot",
    "live_server",
]

ENV_DATABASE_URL = "SOTTO_TEST_DATABASE_URL"


def fresh_database_url(tmp_path: Path) -> str:
    """The env URL (its tables dropped first, so each test starts empty), else SQLite."""
    url = os.environ.get(ENV_DATABASE_URL)
    if not url:
        return f"sqlite:///{Path(tmp_path) / 'coordinator.sqlite3'}"
    engine = create_engine(url)
    db.Base.metadata.drop_all(engine)
    engine.dispose()
    return url


def fresh_config(tmp_path: Path, **overrides) -> CoordinatorConfig:
    """The tiny preset on a fresh database and data dir; evaluation off unless overridden."""
    base = CoordinatorConfig.tiny(Path(tmp_path) / "data", fresh_database_url(tmp_path))
    return dataclasses.replace(base, **{"eval_targets": 0, **overrides})


def new_public_key() -> bytes:
    """A fresh Ed25519 public key (32 raw bytes), as a device would generate."""
    return ECC.generate(curve="Ed25519").public_key().export_key(format="raw")


def snapshot(database: db.Database) -> dict[str, list[tuple]]:
    """Every row of every table, for asserting that a rejected request changed nothing."""
    from coordinator import traffic

    traffic.flush(database)  # accounting of earlier requests is part of "before"
    out = {}
    with database.transaction() as s:
        for table in db.Base.metadata.sorted_tables:
            rows = s.execute(select(table).order_by(*table.primary_key.columns)).all()
            out[table.name] = [tuple(r) for r in rows]
    return out


def live_server(cfg: CoordinatorConfig):
    """A real uvicorn server for `cfg` on loopback, in a thread, stopped cleanly; a context
    manager yielding (base URL, the running `Coordinator`)."""
    from coordinator import server

    return server.running(cfg, start_timeout=20)
