"""Coordinator storage without HTTP: database, registry, devices, traffic, evaluation."""

import hashlib
import io
import pickle

import numpy as np
import pytest

from coordinator import db, devices, evaluation, registry, testing, traffic
from coordinator.config import CoordinatorConfig
from coordinator.errors import Conflict, Invalid, NotFound
from coordinator.ratelimit import TokenBucketLimiter
from coordinator.registry import Registry
from coordinator.service import Coordinator
from keyboard.runtime import DeviceModel
from model import paths


@pytest.fixture
def coord(tmp_path):
    c = Coordinator.open(testing.fresh_config(tmp_path))
    yield c
    c.close()


def _shipped():
    model = paths.BASE_TFLITE.read_bytes()
    with np.load(paths.BASE_TFLITE.with_suffix(".device.npz"), allow_pickle=False) as z:
        return model, {k: z[k] for k in z.files}


def test_config_defaults_are_loopback_and_sqlite_in_runs(tmp_path):
    cfg = CoordinatorConfig.default()
    assert cfg.host == "127.0.0.1"
    assert cfg.data_dir == paths.RUNS / "coordinator"
    assert cfg.db_url == f"sqlite:///{paths.RUNS / 'coordinator' / 'coordinator.sqlite3'}"
    pg = CoordinatorConfig(database_url="postgresql+psycopg://u:p@h/db")
    assert pg.db_url.startswith("postgresql+psycopg://")
    with pytest.raises(ValueError, match="port"):
        CoordinatorConfig(port=70000)
    with pytest.raises(ValueError, match="eval_preset"):
        CoordinatorConfig(eval_preset="huge")


def test_bootstrap_registers_the_shipped_model_once(coord, tmp_path):
    model, device = _shipped()
    v = coord.registry.current()
    assert v.id == 1 and v.parent is None
    assert v.base.sha256 == hashlib.sha256(model).hexdigest() and v.base.size == len(model)
    got = coord.registry.device_part(1)
    assert got.keys() == device.keys()
    assert all(np.array_equal(got[k], device[k]) for k in device)
    path = coord.registry.file_path(v.base.sha256)
    assert path.is_relative_to(coord.config.data_dir) and path.name == v.base.sha256
    # A second bootstrap (a restart) does not add a version.
    assert coord.registry.bootstrap(coord.config.base_model, coord.config.base_device_part) == v
    assert [x.id for x in coord.registry.versions()] == [1]


def test_register_is_content_addressed_and_lookups_work(coord):
    model, device = _shipped()
    changed = {**device, "head_bias": device["head_bias"] + 1.0}
    v2 = coord.registry.register(model, changed, {"note": "round 1"}, parent=1)
    v1 = coord.registry.get(1)
    assert v2.id == 2 and v2.parent == 1 and v2.metrics == {"note": "round 1"}
    assert v2.base == v1.base  # same LiteRT file: one stored copy, no re-download
    assert v2.device_part.sha256 != v1.device_part.sha256
    assert len(list((coord.config.data_dir / "files").rglob("*"))) == 3 + 3  # 3 dirs, 3 files
    assert coord.registry.current().id == 2
    assert coord.registry.file_info(v2.device_part.sha256).size == v2.device_part.size
    np.testing.assert_array_equal(coord.registry.device_part(2)["head_bias"], changed["head_bias"])
    with pytest.raises(NotFound):
        coord.registry.get(99)
    with pytest.raises(NotFound):
        coord.registry.file_info("0" * 64)


def test_failed_registration_leaves_no_rows(coord):
    model, device = _shipped()
    before = testing.snapshot(coord.db)
    with pytest.raises(NotFound, match="parent version 42"):
        coord.registry.register(model, device, parent=42)
    with pytest.raises(Invalid, match="TFL3"):
        coord.registry.register(b"not a model", device)
    assert testing.snapshot(coord.db) == before


def test_a_crash_mid_registration_leaves_no_half_version(coord, monkeypatch):
    model, device = _shipped()
    device = {**device, "head_bias": device["head_bias"] - 1.0}
    before = testing.snapshot(coord.db)

    store, calls = Registry._store, []

    def store_then_crash(self, s, payload):
        calls.append(store(self, s, payload))
        if len(calls) == 2:  # both files written and their rows added, no version row yet
            raise RuntimeError("power cut")
        return calls[-1]

    monkeypatch.setattr(Registry, "_store", store_then_crash)
    with pytest.raises(RuntimeError, match="power cut"):
        coord.registry.register(model, device, parent=1)
    assert testing.snapshot(coord.db) == before
    assert (coord.config.data_dir / "files" / calls[1].sha256[:2] / calls[1].sha256).exists()
    monkeypatch.undo()
    v = coord.registry.register(model, device, parent=1)  # the orphaned file is reused
    got = coord.registry.device_part(v.id)["head_bias"]
    np.testing.assert_array_equal(got, device["head_bias"])


def test_device_parts_refuse_pickles():
    payload = registry.pack_device_part({"w": np.ones((2, 2))})
    assert registry.unpack_device_part(payload)["w"].dtype == np.float32
    buf = io.BytesIO()
    np.save(buf, np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(Invalid, match="npz"):
        registry.unpack_device_part(buf.getvalue())
    with pytest.raises(Invalid, match="npz"):
        registry.unpack_device_part(pickle.dumps({"w": 1}))


def test_enrolment_stores_only_the_token_hash(coord):
    key = testing.new_public_key()
    token = devices.enrol(coord.db, "phone-1", key, "cloud")
    with coord.db.transaction() as s:
        row = s.get(db.Device, "phone-1")
        assert row.token_hash == hashlib.sha256(token.encode()).digest()
        assert row.public_key == key and row.mode == "cloud" and row.last_seen is None
    assert devices.authenticate(coord.db, token).id == "phone-1"
    assert devices.authenticate(coord.db, token + "x") is None
    with pytest.raises(Conflict):
        devices.enrol(coord.db, "phone-1", key, "cloud")
    with pytest.raises(Invalid, match="32 bytes"):
        devices.enrol(coord.db, "phone-2", key[:16], "cloud")
    with pytest.raises(Invalid, match="mode"):
        devices.enrol(coord.db, "phone-2", key, "telepathy")
    devices.checkin(coord.db, "phone-1", 1)
    info = devices.get(coord.db, "phone-1")
    assert info.model_version == 1 and info.last_seen is not None
    assert devices.count_by_mode(coord.db) == {"on_device": 0, "cloud": 1}


def test_traffic_and_raw_text_totals(coord):
    devices.enrol(coord.db, "p", testing.new_public_key(), "cloud")
    traffic.record(coord.db, "p", "/v1/predict", [("in", 30, "raw_text"), ("out", 40, "x")])
    traffic.record_raw_text(coord.db, "p", 12)
    traffic.record_raw_text(coord.db, "p", 5)
    assert traffic.totals(coord.db) == {"raw_text": {"in": 30, "out": 0}, "x": {"in": 0, "out": 40}}
    assert traffic.raw_text_totals(coord.db) == {"devices": 1, "requests": 2, "bytes": 17}
    assert traffic.for_device(coord.db, "p")[0] == ("/v1/predict", "in", 30, "raw_text")


def test_round_and_stage_tables_exist_and_link(coord):
    with coord.db.transaction() as s:
        r = db.Round(version_id=1, status="running", started_at=db.utcnow())
        s.add(r)
        s.flush()
        s.add(db.Stage(round_id=r.id, name="AdvertiseKeys", status="done", started_at=db.utcnow()))
    with coord.db.transaction() as s:
        stage = s.query(db.Stage).one()
        assert stage.name == "AdvertiseKeys" and stage.bytes_in == 0 and stage.round_id == 1


def test_evaluation_on_public_users_is_stored_as_metrics(tmp_path):
    c = Coordinator.open(testing.fresh_config(tmp_path, eval_targets=40))
    try:
        m = c.registry.current().metrics
        assert m["public_targets"] == 40 and m["eval_preset"] == "tiny"
        assert 0.05 < m["public_top1"] <= m["public_top3"] <= 1.0  # a real model, not random
        # Same files, same text: evaluation is deterministic.
        vocab, messages = evaluation.public_messages("tiny")
        again = evaluation.evaluate(
            c.registry.model_bytes(1), c.registry.device_part(1), vocab, messages, 40
        )
        assert again["top1"] == m["public_top1"]
        assert again["perplexity"] == m["public_perplexity"] > 1.0
        assert 0.0 < m["public_keystroke_savings"] < 1.0
        assert 0 < m["public_keystroke_words"] <= 40
    finally:
        c.close()


def test_keystroke_savings_and_perplexity_match_the_keyboard_on_one_message(tmp_path):
    """On "how are you": perplexity from the targets' log-probabilities, and keystroke savings
    from what the phone's own suggestion strip (`DeviceModel.suggest`) offers letter by letter."""
    c = Coordinator.open(testing.fresh_config(tmp_path))
    try:
        model, part = c.registry.model_bytes(1), c.registry.device_part(1)
        msg = np.asarray(c.vocab.encode("how are you"), np.int32)  # <bos> how are you <eos>
        got = evaluation.evaluate(model, part, c.vocab, [msg], 3)  # the three words
        dm = DeviceModel(model, c.vocab, part)
        words = ["how", "are", "you"]
        logp, saved = [], 0
        for i, w in enumerate(words):
            ids, scores = dm.top_k(words[:i], prefix=w)  # log-probs over the whole vocabulary
            logp.append(float(scores[list(ids).index(c.vocab.id(w))]))
            typed = " ".join(words[:i]) + (" " if i else "")
            p = next((p for p in range(len(w)) if w in dm.suggest(typed + w[:p])), None)
            saved += 0 if p is None else len(w) - p
        assert got["targets"] == got["keystroke_words"] == 3
        assert got["perplexity"] == pytest.approx(float(np.exp(-np.mean(logp))), rel=1e-6)
        assert got["keystroke_savings"] == saved / 12 and saved > 0  # 3 words x (3 letters + 1)
    finally:
        c.close()


def test_token_bucket_refills_with_time():
    now = [0.0]
    lim = TokenBucketLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [lim.allow("a") for _ in range(4)] == [True, True, True, False]
    assert lim.allow("b")  # buckets are per device
    assert lim.retry_after("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert lim.allow("a") and not lim.allow("a")


def test_registry_survives_reopen(tmp_path):
    cfg = testing.fresh_config(tmp_path)
    c = Coordinator.open(cfg)
    model, device = _shipped()
    c.registry.register(model, device, {"public_top1": 0.2}, parent=1)
    c.close()
    again = Registry(db.Database(cfg.db_url), cfg.data_dir)
    assert [v.id for v in again.versions()] == [1, 2]
    assert again.get(2).metrics == {"public_top1": 0.2}
    assert again.model_bytes(2) == model
    again.db.close()
