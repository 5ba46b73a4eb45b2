"""The coordinator as an operator runs it: restarts on the same database, a real uvicorn
server on loopback driven like a phone, and the `sotto coordinator` command."""

import base64
import io
import logging
import threading

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from coordinator import devices, server, testing, traffic
from coordinator.app import create_app
from keyboard.runtime import DeviceModel
from model.vocab import build_vocabulary
from sotto import cli


def _enrol(client, device_id: str, mode: str) -> str:
    key = base64.b64encode(testing.new_public_key()).decode()
    r = client.post("/v1/devices", json={"device_id": device_id, "public_key": key, "mode": mode})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def test_everything_survives_a_restart(tmp_path):
    cfg = testing.fresh_config(tmp_path)
    with TestClient(create_app(cfg)) as client:
        coord = client.app.state.coordinator
        tokens = {d: _enrol(client, d, m) for d, m in [("p1", "on_device"), ("p2", "cloud")]}
        h = {"Authorization": f"Bearer {tokens['p1']}"}
        assert client.post("/v1/checkin", json={"version": 1}, headers=h).status_code == 200
        v1 = coord.registry.get(1)
        part = coord.registry.device_part(1)
        part["head_bias"] = part["head_bias"] + 0.5
        v2 = coord.registry.register(coord.registry.model_bytes(1), part, {"public_top1": 0.3}, 1)
        before = testing.snapshot(coord.db)
    # A new process: new app, same database and data dir.
    with TestClient(create_app(cfg)) as client:
        coord = client.app.state.coordinator
        assert testing.snapshot(coord.db) == before
        assert [v.id for v in coord.registry.versions()] == [1, 2]
        assert coord.registry.get(2) == v2 and coord.registry.get(1) == v1
        assert coord.registry.get(2).metrics == {"public_top1": 0.3}
        assert devices.get(coord.db, "p1").model_version == 1
        assert devices.count_by_mode(coord.db) == {"on_device": 1, "cloud": 1}
        np.testing.assert_array_equal(coord.registry.device_part(2)["head_bias"], part["head_bias"])
        # Old tokens still work; the device is told about version 2 and keeps its base file.
        h = {"Authorization": f"Bearer {tokens['p2']}"}
        c = client.post(
            "/v1/checkin", json={"version": 1, "base_sha256": v1.base.sha256}, headers=h
        ).json()
        assert c["version"] == 2 and not c["base"]["download"] and c["device_part"]["download"]
        assert client.get(c["device_part"]["url"], headers=h).content == (
            coord.registry.device_part_bytes(2)
        )
        assert client.get(f"/v1/models/{v1.base.sha256}", headers=h).status_code == 200


@pytest.fixture
def live(tmp_path):
    """A real uvicorn server on a free loopback port, in a thread, stopped cleanly."""
    cfg = testing.fresh_config(tmp_path)  # port 0: the OS picks a free one
    with testing.live_server(cfg) as served:
        yield served


def test_phone_over_real_http(live):
    url, coord = live
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/v1/health").json()["status"] == "ok"
        h = {"Authorization": f"Bearer {_enrol(client, 'phone', 'on_device')}"}
        c = client.post("/v1/checkin", json={}, headers=h).json()
        model = client.get(c["base"]["url"], headers=h).content
        assert len(model) == c["base"]["size"]
        blob = client.get(c["device_part"]["url"], headers=h).content
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            part = {k: z[k] for k in z.files}
        phone = DeviceModel(model, build_vocabulary(10_000), part)
        assert "you" in phone.suggest("how are ")
        # Cloud mode: the same question asked of the server.
        hc = {"Authorization": f"Bearer {_enrol(client, 'thin', 'cloud')}"}
        r = client.post("/v1/predict", json={"text": "how are "}, headers=hc)
        assert r.json()["suggestions"] == phone.suggest("how are ")
    rows = traffic.for_device(coord.db, "phone")
    assert ("/v1/models/{sha256}", "out", len(model), "model_download") in rows
    assert ("/v1/versions/{id}/device_part", "out", len(blob), "device_part") in rows


def test_concurrent_devices_over_real_http(live):
    """Several phones at once: every write lands (no 'database is locked', no lost row)."""
    url, coord = live
    with httpx.Client(base_url=url, timeout=30) as client:
        tokens = [_enrol(client, f"p{i}", "on_device") for i in range(6)]
    statuses: list[int] = []

    def phone(token: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            h = {"Authorization": f"Bearer {token}"}
            statuses.extend(
                c.post("/v1/checkin", json={"version": 1}, headers=h).status_code for _ in range(5)
            )

    threads = [threading.Thread(target=phone, args=(t,)) for t in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert statuses == [200] * 30
    assert all(devices.get(coord.db, f"p{i}").model_version == 1 for i in range(6))
    assert (
        sum(
            1
            for i in range(6)
            for r in traffic.for_device(coord.db, f"p{i}")
            if r[3] == "checkin" and r[1] == "in"
        )
        == 30
    )


def test_sotto_coordinator_parses_and_logs_the_url(monkeypatch, tmp_path, caplog):
    seen = {}
    monkeypatch.setattr(server, "serve", lambda config: seen.setdefault("config", config))
    db_url = f"sqlite:///{tmp_path / 'x.sqlite3'}"
    cli.main(["coordinator", "--port", "9123", "--data-dir", str(tmp_path), "--db-url", db_url])
    cfg = seen["config"]
    assert (cfg.host, cfg.port, cfg.data_dir, cfg.db_url) == ("127.0.0.1", 9123, tmp_path, db_url)
    # The real `serve` announces where it listens and which database it uses.
    monkeypatch.undo()
    monkeypatch.setattr(server, "build_server", lambda *a: type("S", (), {"run": lambda s: 0})())
    caplog.set_level(logging.INFO)
    server.serve(testing.fresh_config(tmp_path / "s", port=9124))
    assert "http://127.0.0.1:9124" in caplog.text and "database " in caplog.text
