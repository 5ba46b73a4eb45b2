"""`dashboard.queries` on a database filled by a real short federated run (two synchronous
rounds done, one with a dropout, one aborted, then a buffered round with a stale phone; a
cloud-mode phone), checked against what the devices sent."""

import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from coordinator import db, server_opt
from coordinator.registry import Registry
from dashboard import queries as q
from dashboard import sample
from secagg import dp
from secagg.params import RoundParams


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return sample.run(tmp_path_factory.mktemp("dash") / "data")


@pytest.fixture(scope="module")
def engine(run):
    e = q.connect(run.url)
    q.check(e)
    yield e
    e.dispose()


def test_sample_run_did_what_the_tests_rely_on(run):
    assert run.rounds == {1: "done", 2: "done", 3: "aborted", 4: "done"}


def test_quality_per_version_from_public_and_federated_evaluation(run, engine):
    df = q.quality(engine)
    assert df["version"].tolist() == [1, 2, 3, 4]
    assert df["source"].tolist() == ["shipped base", "round 1", "round 2", "round 4"]
    assert df["public_targets"].tolist() == [50, 50, 50, 50]
    assert df["public_top1"].between(0, 1).all() and df["public_top3"].notna().all()
    # Keystroke savings and perplexity as the coordinator stored them for each version.
    reg = Registry(db.Database(run.url), run.data_dir)
    for v in df["version"]:
        m = reg.get(int(v)).metrics
        row = df.set_index("version").loc[v]
        assert row["public_keystroke_savings"] == m["public_keystroke_savings"]
        assert 0 < row["public_keystroke_savings"] < 1
    # The shipped base has a finite perplexity; the sample's random, noised updates wreck
    # the model (the coordinator stores None rather than an infinite perplexity).
    assert 1 < df.loc[0, "public_perplexity"] < 10_000
    # Each phone's counters (1, 2, 4) ride in the masked sum: 4, 3 then 4 contributors.
    fed = df.iloc[1:]
    assert fed["fed_hits_at_1"].tolist() == [4, 3, 4]
    assert fed["fed_hits_at_3"].tolist() == [8, 6, 8]
    assert fed["fed_words"].tolist() == [16, 12, 16]
    assert fed["fed_top1"].tolist() == [0.25] * 3 and fed["fed_top3"].tolist() == [0.5] * 3
    assert fed["contributors"].tolist() == [4, 3, 4]
    assert df["fed_top1"].isna().tolist() == [True, False, False, False]


def test_rounds_status_cohort_dropouts_and_duration(engine):
    df = q.rounds(engine).set_index("round")
    assert df["mode"].tolist() == ["sync", "sync", "sync", "buffered"]
    assert df["status"].tolist() == ["done", "done", "aborted", "done"]
    assert df["cohort"].tolist() == [4, 4, 4, 4]
    assert df.loc[[1, 2, 4], "result_version"].tolist() == [2, 3, 4]
    assert df["result_version"].isna().loc[3]
    assert df.loc[[1, 2, 4], "contributors"].tolist() == [4, 3, 4]
    assert df["dropped_masked_input"].tolist() == [0, 1, 0, 0]
    assert df["dropped_advertise"].tolist() == [0, 0, 4, 0]  # nobody answered round 3
    assert df["dropped_total"].tolist() == [0, 1, 4, 0]
    assert "advertised keys" in df.loc[3, "reason"] and df.loc[[1, 2, 4], "reason"].isna().all()
    # Buffered round 4: phone0 trained from version 2, the others from 3 (the round's version).
    assert (df.loc[4, "staleness_mean"], df.loc[4, "staleness_max"]) == (0.25, 1)
    assert df.loc[[1, 2, 3], "staleness_mean"].isna().all()
    # Round 2 really waited for the masked-input timeout of the phone that dropped.
    assert df.loc[2, "duration_s"] >= sample.MASKED_INPUT_TIMEOUT_S
    g = q.stages(engine)
    assert g[g["round"] == 1]["stage"].tolist() == list(q.STAGES)
    assert g[g["round"] == 3][["stage", "status"]].values.tolist() == [["advertise", "aborted"]]
    for rid in (1, 2, 4):  # the stages tile the round
        assert g[g["round"] == rid]["duration_s"].sum() == pytest.approx(
            df.loc[rid, "duration_s"], abs=1e-3
        )
    r2 = g[g["round"] == 2].set_index("stage")
    assert r2.loc["masked_input", "duration_s"] >= sample.MASKED_INPUT_TIMEOUT_S


def test_stage_bytes_are_the_secagg_messages_the_phones_posted(run, engine):
    g = q.stages(engine)
    for rid in (1, 2, 4):
        sent = sum(up for up, _ in run.round_bytes[rid].values())
        assert g[g["round"] == rid]["bytes_in"].sum() == sent


def test_bytes_per_device_per_round_against_a_dense_update(run, engine):
    df = q.bytes_per_round(engine).set_index("round")
    dim = server_opt.dimension(Registry(db.Database(run.url), run.data_dir).device_part(1))
    for rid in (1, 2, 4):
        per = run.round_bytes[rid]
        ups = [up for up, _ in per.values()]
        downs = [down for _, down in per.values()]
        row = df.loc[rid]
        assert row["devices"] == 4
        assert row["bytes_up_total"] == sum(ups) and row["bytes_down_total"] == sum(downs)
        assert row["bytes_up_per_device"] == sum(ups) / 4
        assert row["bytes_down_per_device"] == sum(downs) / 4
        assert row["max_bytes_up_device"] == max(ups)
        assert row["compression_vs_full"] == 1_431_950 * 4 / max(ups)
        assert row["device_part_params"] == dim and row["dense_device_part_bytes"] == dim * 4
    assert q.DENSE_UPDATE_BYTES == 5_727_800
    # The dropped phone sent less in round 2 than a full participant.
    assert min(up for up, _ in run.round_bytes[2].values()) < df.loc[2, "max_bytes_up_device"]
    assert df.loc[3, "devices"] == 0 and df.loc[3, "bytes_up_total"] == 0


def test_traffic_by_kind_counts_masked_vectors_once(engine):
    kinds = q.traffic_by_kind(engine).set_index("kind")
    g = q.stages(engine)
    masked = g[g["stage"] == "masked_input"]["bytes_in"].sum()
    assert kinds.loc["masked_vector", "bytes_in"] == masked
    assert kinds.loc["raw_text", "bytes_in"] > 0 and kinds.loc["suggestions", "bytes_out"] > 0


def test_privacy_epsilon_per_version_and_budget_from_the_ledger(run, engine):
    ledger = json.loads((run.data_dir / "privacy_ledger.json").read_text())
    cfg = dp.DPConfig(**ledger["config"])
    p = q.privacy(engine, q.ledger_path(run.url))
    per = p["per_version"]
    assert per["version"].tolist() == [2, 3, 4]
    assert per["epsilon"].tolist() == [dp.PrivacyLedger(cfg, k).epsilon for k in (1, 2, 3)]
    assert p["epsilon_spent"] == dp.PrivacyLedger(cfg, 3).epsilon
    assert (p["epsilon_limit"], p["ledger_rounds"], p["dp"]) == (10, 3, True)
    assert (p["clip_norm"], p["noise_multiplier"], p["delta"]) == (1.0, 2.0, 1e-5)
    no_ledger = q.privacy(engine, run.data_dir / "missing.json")
    assert no_ledger["epsilon_limit"] is None and no_ledger["epsilon_spent"] == p["epsilon_spent"]


def test_devices_by_mode_versions_in_use_and_cloud_text(run, engine):
    d = q.devices(engine).set_index("device")
    assert d["mode"].to_dict() == {
        "phone0": "on_device",
        "phone1": "on_device",
        "phone2": "on_device",
        "phone3": "on_device",
        "thin": "cloud",
    }
    assert d.loc[["phone0", "phone1", "phone2", "phone3"], "model_version"].tolist() == [2, 4, 4, 4]
    assert d["last_seen"].notna().all()
    # Every round byte a phone sent is in its traffic total (plus enrolment and check-ins).
    for name in ("phone1", "phone2"):
        assert d.loc[name, "bytes_up"] > sum(run.round_bytes[r][name][0] for r in (1, 2))
    ct = q.cloud_text(engine)
    assert ct[["device", "requests", "bytes"]].values.tolist() == [
        ["thin", run.cloud_requests, run.cloud_bytes]
    ]
    assert run.cloud_bytes == sum(len(t.encode()) for t in sample.CLOUD_TEXTS) == 23
    s = q.summary(engine)
    assert s == {
        "versions": 4,
        "current_version": 4,
        "rounds": 4,
        "rounds_done": 3,
        "rounds_aborted": 1,
        "round_running": False,
        "devices": 5,
        "devices_by_mode": {"cloud": 1, "on_device": 4},
        "raw_text_bytes": 23,
        "raw_text_requests": 2,
    }


def test_staleness_per_member_of_the_buffered_round(engine):
    st = q.staleness(engine)
    # Cohort in the order the phones reported ready: phone0 (version 2) first.
    assert st.values.tolist() == [
        [4, 0, 1, 2**-0.5],
        [4, 1, 0, 1.0],
        [4, 2, 0, 1.0],
        [4, 3, 0, 1.0],
    ]


def test_upload_histograms_masked_upload_beside_the_unmasked_aggregate(run, engine):
    h = q.upload_histograms(engine)
    assert sorted(set(h["round"])) == [1, 2, 4]  # round 3 never got a masked input
    reg = Registry(db.Database(run.url), run.data_dir)
    dim = server_opt.dimension(reg.device_part(1))
    with db.Database(run.url).transaction() as s:
        spec = RoundParams.from_json(s.get(db.Round, 1).params).spec
    for rid in (1, 2, 4):
        masked = h[(h["round"] == rid) & (h["what"] == "masked upload")]
        assert masked["bin"].tolist() == list(range(32))
        assert (masked["lo"].iloc[0], masked["hi"].iloc[-1]) == (0, 2**spec.width)
        assert masked["count"].sum() == spec.length
        # Uniform over the field: every bin within 10% of the mean (about 4,200 per bin).
        mean = spec.length / 32
        assert (abs(masked["count"] - mean) < 0.1 * mean).all()
        agg = h[(h["round"] == rid) & (h["what"] == "unmasked aggregate")]
        assert agg["count"].sum() == dim and len(agg) == 32
    # Round 1 started the server optimiser from zero momentum with learning rate 1: its
    # released average is exactly version 2 minus version 1 (up to float32 rounding).
    avg = server_opt.flatten(reg.device_part(2)) - server_opt.flatten(reg.device_part(1))
    agg = h[(h["round"] == 1) & (h["what"] == "unmasked aggregate")]
    assert agg["lo"].iloc[0] == pytest.approx(avg.min(), abs=1e-5)
    assert agg["hi"].iloc[-1] == pytest.approx(avg.max(), abs=1e-5)
    counts, _ = np.histogram(avg, bins=32, range=(agg["lo"].iloc[0], agg["hi"].iloc[-1]))
    assert np.abs(counts - agg["count"].to_numpy()).sum() <= 10  # bin-edge rounding only


def test_an_unmigrated_database_asks_for_a_coordinator_start(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    db.Database(url).close()
    e = create_engine(url)
    with e.begin() as c:
        c.execute(text("DROP TABLE schema_version"))
        c.execute(text("DROP TABLE ready_devices"))
    e.dispose()
    with pytest.raises(q.DashboardError, match="older coordinator"):
        q.check(q.connect(url))


def test_the_engine_is_read_only(engine):
    with pytest.raises(OperationalError, match="readonly"), engine.begin() as c:
        c.execute(text("DELETE FROM devices"))
    assert len(q.devices(engine)) == 5


def test_empty_database_gives_empty_frames(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    db.Database(url).close()  # the coordinator's tables, no rows
    e = q.connect(url)
    q.check(e)
    assert q.quality(e).empty and q.rounds(e).empty and q.bytes_per_round(e).empty
    assert q.devices(e).empty and q.cloud_text(e).empty and q.traffic_by_kind(e).empty
    assert q.privacy(e)["epsilon_spent"] is None and not q.privacy(e)["dp"]
    assert q.summary(e)["rounds"] == 0 and q.summary(e)["current_version"] is None


@pytest.mark.parametrize(
    "url, reason",
    [
        ("sqlite:////nonexistent-dir/sub/coordinator.sqlite3", "cannot open the database"),
        ("postgresql+psycopg://nobody@127.0.0.1:9/x", "cannot open the database"),
        ("not a url", "cannot use the database URL"),
    ],
)
def test_unreachable_databases_raise_a_readable_error(url, reason):
    with pytest.raises(q.DashboardError, match=reason):
        q.check(q.connect(url))


def test_a_database_without_sotto_tables_is_named_as_such(tmp_path):
    path = tmp_path / "other.sqlite3"
    db_other = create_engine(f"sqlite:///{path}")
    with db_other.begin() as c:
        c.execute(text("CREATE TABLE t (x INTEGER)"))
    db_other.dispose()
    with pytest.raises(q.DashboardError, match="not a Sotto coordinator database"):
        q.check(q.connect(f"sqlite:///{path}"))


def test_ledger_path_and_default_url(monkeypatch, tmp_path):
    monkeypatch.delenv(q.ENV_LEDGER, raising=False)
    monkeypatch.delenv(q.ENV_URL, raising=False)
    assert q.default_url().endswith("runs/coordinator/coordinator.sqlite3")
    assert q.ledger_path(f"sqlite:///{tmp_path}/c.sqlite3") == tmp_path / "privacy_ledger.json"
    assert q.ledger_path("postgresql+psycopg://u@h/d") is None
    monkeypatch.setenv(q.ENV_LEDGER, str(tmp_path / "l.json"))
    monkeypatch.setenv(q.ENV_URL, "postgresql+psycopg://u:secret@h/d")
    assert q.ledger_path("postgresql+psycopg://u@h/d") == tmp_path / "l.json"
    assert q.default_url() == "postgresql+psycopg://u:secret@h/d"
    assert "secret" not in q.display_url(q.default_url())


def test_reference_lines_come_from_the_bench_results(tmp_path):
    ref = q.reference_quality(Path(__file__).parent.parent / "bench/results/quality.json")
    assert ref["3-gram baseline"] == {"top1": 0.21633269649442396, "top3": 0.3551593472506966}
    assert ref["centralised (upper bound)"]["top1"] == 0.23670731010669696
    assert q.reference_quality(tmp_path / "missing.json") == {}


def test_a_database_lost_after_the_check_raises_the_same_readable_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'gone.sqlite3'}"
    db.Database(url).close()
    e = q.connect(url)
    q.check(e)
    e.dispose()
    (tmp_path / "gone.sqlite3").unlink()
    with pytest.raises(q.DashboardError, match="reading the database failed"):
        q.rounds(e)
