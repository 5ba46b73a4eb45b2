"""The keyboard's web API over a real device (shipped LiteRT model), through FastAPI."""

import pytest
from fastapi.testclient import TestClient

from keyboard.device import Device, DeviceConfig
from keyboard.web import MAX_TEXT, create_app


@pytest.fixture
def client(tmp_path):
    dev = Device.open(DeviceConfig(tmp_path / "phone", min_new_words=10))
    with TestClient(create_app(dev)) as c:
        yield c


def test_page_and_suggestions_on_every_keystroke(client):
    page = client.get("/")
    assert page.status_code == 200 and "Process on device" in page.text
    assert "you" in client.post("/api/suggest", json={"text": "how are "}).json()["suggestions"]
    words = client.post("/api/suggest", json={"text": "how are yo"}).json()["suggestions"]
    assert words and all(w.startswith("yo") for w in words)
    for typed in ("i will see you ", "", "ok. "):  # <eos>/<unk> are likely here, never shown
        shown = client.post("/api/suggest", json={"text": typed}).json()["suggestions"]
        assert len(shown) == 3 and not [w for w in shown if w.startswith("<")]


def test_commit_train_toggle_forget(client):
    for _ in range(4):
        r = client.post("/api/commit", json={"text": "see you at the zebra crossing tonight"})
        assert r.json()["kept"]
    out = client.post("/api/train", json={"idle_and_charging": True}).json()
    assert out["trained"] and out["stats"]["local_training_steps"] == out["report"]["steps"]
    assert client.post("/api/toggle", json={"on_device": False}).json()["on_device"] is False
    r = client.post("/api/commit", json={"text": "not kept in cloud mode"})
    assert r.json()["kept"] is False
    offline = client.post("/api/suggest", json={"text": "how are "}).json()
    assert offline["offline"] and offline["suggestions"] == []
    stats = client.post("/api/forget").json()
    assert stats["messages"] == 0 and stats["local_training_steps"] == 0
    assert client.get("/api/privacy_log").json()["entries"] == []


def test_bad_requests_get_clear_errors(client):
    assert client.post("/api/suggest", json={"txt": "x"}).status_code == 422
    assert client.post("/api/suggest", json={"text": "a" * (MAX_TEXT + 1)}).status_code == 422
    assert client.post("/api/toggle", json={"on_device": "maybe"}).status_code == 422
    assert client.get("/api/stats").json()["messages"] == 0  # nothing changed


def test_phone_on_a_coordinator_shows_raw_text_only_in_cloud_mode(tmp_path):
    from coordinator import devices, testing
    from keyboard import serve

    with testing.live_server(testing.fresh_config(tmp_path / "server")) as (url, coord):
        dev = Device.open(DeviceConfig(tmp_path / "phone"))
        transport = serve.connect(dev, url)
        assert dev.version == 1  # the coordinator's current version was installed
        with TestClient(create_app(dev, on_toggle=transport.set_mode)) as c:
            assert c.post("/api/toggle", json={"on_device": False}).json()["note"] is None
            assert devices.get(coord.db, transport.credentials.device_id).mode == "cloud"
            out = c.post("/api/suggest", json={"text": "how are "}).json()
            assert "you" in out["suggestions"]
            last = c.get("/api/privacy_log").json()["entries"][-1]
            assert (last["kind"], last["contents"], last["endpoint"]) == (
                "raw_text",
                "how are ",
                "/v1/predict",
            )
            c.post("/api/toggle", json={"on_device": True})
            before = len(c.get("/api/privacy_log").json()["entries"])
            c.post("/api/suggest", json={"text": "see you "})
            kinds = [e["kind"] for e in c.get("/api/privacy_log").json()["entries"][before:]]
            assert kinds == []  # on device: a suggestion sends nothing
        transport.close()


def test_phone_without_its_coordinator_keeps_working(tmp_path):
    from keyboard import serve

    dev = Device.open(DeviceConfig(tmp_path / "phone"))
    transport = serve.connect(dev, "http://127.0.0.1:9")  # nothing listens there
    with TestClient(create_app(dev, on_toggle=transport.set_mode)) as c:
        assert "you" in c.post("/api/suggest", json={"text": "how are "}).json()["suggestions"]
        assert "not told" in c.post("/api/toggle", json={"on_device": False}).json()["note"]
        out = c.post("/api/suggest", json={"text": "how are "}).json()
        assert out["offline"] and "did not answer" in out["error"]
    transport.close()
