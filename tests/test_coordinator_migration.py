"""Schema migrations: a database written by the first release (no schema_version table, no
rounds.mode / rounds.stats, no ready_devices) opens, is brought to the current schema, and
keeps every row; migrating again changes nothing."""

import numpy as np
from sqlalchemy import create_engine, inspect, text

from coordinator import db, devices, rounds, testing
from coordinator.service import Coordinator
from secagg import crypto


def _downgrade_to_v1(url: str) -> None:
    database = db.Database(url)
    with database.engine.begin() as conn:
        conn.execute(text("DROP TABLE schema_version"))
        conn.execute(text("DROP TABLE ready_devices"))
        conn.execute(text("ALTER TABLE rounds DROP COLUMN mode"))
        conn.execute(text("ALTER TABLE rounds DROP COLUMN stats"))
    database.close()


def test_an_old_schema_database_is_migrated_and_keeps_its_rows(tmp_path):
    cfg = testing.fresh_config(tmp_path, round_cohort_size=3, round_overselect=0)
    c1 = Coordinator.open(cfg)
    for i in range(3):
        devices.enrol(c1.db, f"d{i}", crypto.new_identity()[1], "on_device")
    rid = rounds.open_round(c1, np.random.default_rng(0))
    c1.close()
    _downgrade_to_v1(cfg.db_url)
    engine = create_engine(cfg.db_url)  # inspected without migrating
    cols = {c["name"] for c in inspect(engine).get_columns("rounds")}
    assert "mode" not in cols and "schema_version" not in inspect(engine).get_table_names()
    engine.dispose()

    c2 = Coordinator.open(cfg)  # migrates, then resumes the running round
    insp = inspect(c2.db.engine)
    assert {"mode", "stats"} <= {c["name"] for c in insp.get_columns("rounds")}
    assert "ready_devices" in insp.get_table_names()
    with c2.db.transaction() as s:
        assert s.get(db.SchemaVersion, 1).version == db.SCHEMA_VERSION == 2
    st = rounds.status(c2, rid)
    assert st["status"] == "running" and st["mode"] == "sync" and st["cohort"] == 3
    assert devices.count_by_mode(c2.db) == {"on_device": 3, "cloud": 0}
    assert [v.id for v in c2.registry.versions()] == [1]
    before = testing.snapshot(c2.db)
    assert db.migrate(c2.db.engine) == 2  # idempotent
    assert testing.snapshot(c2.db) == before
    c2.close()
