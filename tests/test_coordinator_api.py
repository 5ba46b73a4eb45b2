"""The HTTP API in-process (FastAPI TestClient): happy paths, traffic, privacy, bad input."""

import base64
import logging

import pytest
from fastapi.testclient import TestClient

from coordinator import db, testing, traffic
from coordinator.app import create_app
from coordinator.service import Coordinator

MARKER = "zqxjmarker7731 private words"


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def env(tmp_path):
    clock = FakeClock()
    cfg = testing.fresh_config(tmp_path, rate_per_second=1.0, rate_burst=50)
    coord = Coordinator.open(cfg)
    with TestClient(create_app(cfg, coord, clock=clock)) as client:
        yield client, coord, clock
    coord.close()


def _key_b64() -> str:
    return base64.b64encode(testing.new_public_key()).decode()


def enrol(client, device_id="phone-1", mode="on_device") -> dict:
    r = client.post(
        "/v1/devices", json={"device_id": device_id, "public_key": _key_b64(), "mode": mode}
    )
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def assert_error(r, status: int, error: str, detail: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == error
    assert detail in body["detail"]


def test_enrol_checkin_and_downloads(env):
    client, coord, _ = env
    h = enrol(client)
    r = client.post("/v1/checkin", json={}, headers=h)
    assert r.status_code == 200
    c = r.json()
    v = coord.registry.current()
    assert c["version"] == v.id and c["base"]["sha256"] == v.base.sha256
    assert c["base"]["download"] and c["device_part"]["download"]
    assert c["training"] == {"eligible": True, "learning_rate": 0.01, "steps": 2}
    model = client.get(c["base"]["url"], headers=h)
    assert model.content == coord.registry.model_bytes(v.id)
    part = client.get(c["device_part"]["url"], headers=h)
    assert part.content == coord.registry.device_part_bytes(v.id)
    # A device that holds the current files is told there is nothing to download.
    r = client.post(
        "/v1/checkin", json={"version": v.id, "base_sha256": v.base.sha256}, headers=h
    ).json()
    assert not r["base"]["download"] and not r["device_part"]["download"]
    with coord.db.transaction() as s:
        row = s.get(db.Device, "phone-1")
        assert row.model_version == v.id and row.last_seen is not None
    kinds = {(k, d): n for _, d, n, k in traffic.for_device(coord.db, "phone-1")}
    assert kinds[("model_download", "out")] == v.base.size
    assert kinds[("device_part", "out")] == v.device_part.size


def test_cloud_prediction_records_size_never_text(env, caplog):
    client, coord, _ = env
    caplog.set_level(logging.DEBUG)
    h = enrol(client, "cloud-1", "cloud")
    typed = f"{MARKER} how are "
    r = client.post("/v1/predict", json={"text": typed}, headers=h)
    assert r.status_code == 200
    assert r.json() == {"version": 1, "suggestions": ["you", "your", "it"]}
    r = client.post("/v1/predict", json={"text": "tha"}, headers=h)
    assert all(w.startswith("tha") for w in r.json()["suggestions"])
    assert coord.predictor.loaded_versions() == [1]  # loaded once, reused
    assert traffic.raw_text_totals(coord.db) == {
        "devices": 1,
        "requests": 2,
        "bytes": len(typed.encode()) + 3,
    }
    stats = client.get("/v1/stats").json()
    assert stats["raw_text"]["bytes"] == len(typed.encode()) + 3
    assert stats["traffic"]["raw_text"]["in"] > len(typed)
    # The text itself is nowhere: not in any row (whatever the database), not in any file the
    # coordinator wrote, not in the logs.
    assert MARKER not in repr(testing.snapshot(coord.db))
    coord.db.close()  # flush SQLite's write-ahead log into the files we grep
    for f in coord.config.data_dir.rglob("*"):
        if f.is_file():
            assert MARKER.encode() not in f.read_bytes(), f
    assert MARKER not in caplog.text
    assert "cloud-1" in caplog.text  # the logs were captured (enrolment is logged)


def test_on_device_mode_may_not_use_cloud_prediction(env):
    client, coord, _ = env
    h = enrol(client)
    before = testing.snapshot(coord.db)
    r = client.post("/v1/predict", json={"text": "hello "}, headers=h)
    assert_error(r, 403, "wrong_mode", "cloud only")
    assert testing.snapshot(coord.db) == before


def test_health_stats_and_openapi(env):
    client, coord, _ = env
    enrol(client, "a", "cloud")
    enrol(client, "b")
    assert client.get("/v1/health").json() == {
        "status": "ok",
        "database": coord.db.dialect,
        "current_version": 1,
    }
    stats = client.get("/v1/stats").json()
    assert stats["devices"] == {"on_device": 1, "cloud": 1}
    assert stats["current_version"] == 1 and stats["versions"][0]["metrics"]["source"]
    schema = client.get("/openapi.json").json()
    assert {"/v1/devices", "/v1/checkin", "/v1/predict", "/v1/models/{sha256}"} <= set(
        schema["paths"]
    )
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


UNAUTH = [
    ("post", "/v1/checkin", {"json": {}}),
    ("get", "/v1/models/" + "0" * 64, {}),
    ("get", "/v1/versions/1/device_part", {}),
    ("post", "/v1/predict", {"json": {"text": "hi"}}),
]


@pytest.mark.parametrize(("method", "url", "kw"), UNAUTH)
def test_device_endpoints_need_a_valid_token(env, method, url, kw):
    client, coord, _ = env
    enrol(client)
    before = testing.snapshot(coord.db)
    r = getattr(client, method)(url, **kw)
    assert_error(r, 401, "unauthorized", "Bearer")
    r = getattr(client, method)(url, headers={"Authorization": "Bearer not-a-token"}, **kw)
    assert_error(r, 401, "unauthorized", "unknown token")
    r = getattr(client, method)(url, headers={"Authorization": "Basic abc"}, **kw)
    assert r.status_code == 401
    assert testing.snapshot(coord.db) == before


def _enrol_body(**over) -> dict:
    return {"device_id": "phone-9", "public_key": _key_b64(), "mode": "on_device", **over}


BAD_ENROL = [
    (
        {"content": b'{"device_id": "x",', "headers": {"content-type": "application/json"}},
        400,
        "malformed_json",
        "not valid JSON",
    ),
    ({"json": _enrol_body(device_id=7)}, 422, "invalid_request", "device_id: Input should be"),
    ({"json": _enrol_body(device_id="bad id/..")}, 422, "invalid_request", "device_id"),
    ({"json": _enrol_body(public_key="***")}, 422, "invalid_request", "not valid base64"),
    (
        {"json": _enrol_body(public_key=base64.b64encode(b"k" * 16).decode())},
        422,
        "invalid_request",
        "must be 32 bytes (Ed25519), got 16",
    ),
    (
        {"json": _enrol_body(public_key=base64.b64encode(b"\x02" + b"\xff" * 31).decode())},
        422,
        "invalid_request",
        "not a valid Ed25519 point",
    ),
    ({"json": _enrol_body(mode="telepathy")}, 422, "invalid_request", "mode"),
    ({"json": {**_enrol_body(), "extra": 1}}, 422, "invalid_request", "extra"),
    ({"json": {"public_key": _key_b64()}}, 422, "invalid_request", "device_id: Field required"),
]


@pytest.mark.parametrize(("kw", "status", "error", "detail"), BAD_ENROL)
def test_bad_enrolment_is_rejected_and_changes_nothing(env, kw, status, error, detail):
    client, coord, _ = env
    before = testing.snapshot(coord.db)
    r = client.post("/v1/devices", **kw)
    assert_error(r, status, error, detail)
    assert testing.snapshot(coord.db) == before


def test_duplicate_enrolment_is_409(env):
    client, coord, _ = env
    enrol(client, "phone-1")
    before = testing.snapshot(coord.db)
    r = client.post("/v1/devices", json=_enrol_body(device_id="phone-1"))
    assert_error(r, 409, "conflict", "already enrolled")
    assert testing.snapshot(coord.db) == before


def test_oversized_bodies_get_413(env):
    client, coord, _ = env
    h = enrol(client, "c", "cloud")
    before = testing.snapshot(coord.db)
    big = {"text": "a " * coord.config.max_request_bytes}
    assert_error(
        client.post("/v1/predict", json=big, headers=h), 413, "payload_too_large", "exceeds"
    )

    def chunks():  # no Content-Length: the limit must hold on the streamed body too
        for _ in range(100):
            yield b"x" * 1024

    r = client.post("/v1/devices", content=chunks())
    assert_error(r, 413, "payload_too_large", f"{coord.config.max_request_bytes} bytes")
    long = {"text": "a" * (coord.config.max_predict_chars + 1)}
    assert_error(client.post("/v1/predict", json=long, headers=h), 422, "invalid_request", "text")
    assert testing.snapshot(coord.db) == before


def test_bad_checkin_and_predict_bodies(env):
    client, coord, _ = env
    h = enrol(client, "c", "cloud")
    before = testing.snapshot(coord.db)
    r = client.post("/v1/checkin", json={"version": "one"}, headers=h)
    assert_error(r, 422, "invalid_request", "version")
    r = client.post("/v1/checkin", json={"base_sha256": "xyz"}, headers=h)
    assert_error(r, 422, "invalid_request", "base_sha256")
    r = client.post("/v1/predict", json={"text": ["not", "a", "string"]}, headers=h)
    assert_error(r, 422, "invalid_request", "text: Input should be a valid string")
    assert "not" not in r.json()["detail"].replace("not a", "")  # input is never echoed
    assert testing.snapshot(coord.db) == before


def test_unknown_versions_and_hashes_are_404(env):
    client, coord, _ = env
    h = enrol(client)
    before = testing.snapshot(coord.db)
    assert_error(client.get("/v1/models/" + "ab" * 32, headers=h), 404, "not_found", "sha256")
    assert_error(client.get("/v1/versions/77/device_part", headers=h), 404, "not_found", "77")
    r = client.post("/v1/checkin", json={"version": 77}, headers=h)
    assert_error(r, 404, "not_found", "no version 77")
    assert_error(client.get("/v1/models/XYZ", headers=h), 422, "invalid_request", "sha256")
    assert_error(client.get("/v1/nowhere"), 404, "not_found", "Not Found")
    assert testing.snapshot(coord.db) == before


def test_rate_limit_is_per_device_and_refills(tmp_path):
    clock = FakeClock()
    cfg = testing.fresh_config(tmp_path, rate_per_second=1.0, rate_burst=3)
    with TestClient(create_app(cfg, clock=clock)) as client:
        coord = client.app.state.coordinator
        h1, h2 = enrol(client, "one"), enrol(client, "two")
        url = "/v1/versions/1/device_part"
        assert [client.get(url, headers=h1).status_code for _ in range(3)] == [200] * 3
        before = testing.snapshot(coord.db)
        r = client.get(url, headers=h1)
        assert_error(r, 429, "rate_limited", "3 requests")
        assert r.headers["Retry-After"] == "1"
        assert testing.snapshot(coord.db) == before
        assert client.get(url, headers=h2).status_code == 200  # another device is unaffected
        clock.t += 1.0
        assert client.get(url, headers=h1).status_code == 200


def test_a_server_fault_is_a_json_500_and_not_accounted(tmp_path):
    cfg = testing.fresh_config(tmp_path)
    with TestClient(create_app(cfg), raise_server_exceptions=False) as client:
        coord = client.app.state.coordinator
        h = enrol(client)
        coord.registry.file_path(coord.registry.get(1).device_part.sha256).unlink()  # disk fault
        before = testing.snapshot(coord.db)
        r = client.get("/v1/versions/1/device_part", headers=h)
        assert_error(r, 500, "internal_error", "see its log")
        assert testing.snapshot(coord.db) == before
