"""The phone's background worker: learns when idle, waits offline, contributes when back."""

import threading
import time

import numpy as np
import pytest
from browser import free_port
from phones import type_habits

from coordinator import rounds, testing
from keyboard.background import Background
from keyboard.device import Device, DeviceConfig
from keyboard.transport import Transport
from model.vocab import build_vocabulary


@pytest.fixture(scope="module")
def vocab():
    return build_vocabulary(10_000)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_offline_phone_learns_keeps_the_update_waiting_and_backs_off(tmp_path, vocab):
    cfg = DeviceConfig(tmp_path / "phone", min_new_words=10)
    dev = Device.open(cfg, vocab)
    clock = Clock()
    tr = Transport(dev, f"http://127.0.0.1:{free_port()}", timeout=2)  # nobody listens
    bg = Background(dev, tr, np.random.default_rng(0), clock=clock)
    type_habits(dev, 0)
    assert bg.tick() == ["trained", "offline"]
    st = bg.status()
    assert st["state"] == "offline" and "unreachable" in st["last_error"]
    assert st["pending_contribution"] == 0 and st["backoff_s"] == 2.0
    assert bg.tick() == []  # within the backoff: no request at all
    clock.t += 2.5
    assert bg.tick() == ["offline"] and bg.status()["backoff_s"] == 4.0
    # Predicting goes on offline, and the waiting update survives a restart of the phone.
    assert len(dev.suggest("see you at the ")) == 3
    tr.close()
    again = Device.open(cfg, vocab)
    assert again.pending_contribution == 0
    assert any(np.any(v) for v in again.delta().values())  # the trained update itself


def test_no_learning_when_busy_or_in_cloud_mode(tmp_path, vocab):
    dev = Device.open(DeviceConfig(tmp_path / "phone", min_new_words=10), vocab)
    bg = Background(dev, None, np.random.default_rng(0))
    type_habits(dev, 1)
    dev.set_idle_and_charging(False)
    assert bg.tick() == [] and dev.pending_contribution is None
    dev.set_idle_and_charging(True)
    dev.set_on_device(False)
    assert bg.tick() == [] and dev.pending_contribution is None
    dev.set_on_device(True)
    assert bg.tick() == ["trained"] and bg.status()["state"] == "none"
    dev.forget()
    assert dev.pending_contribution is None


def test_contributions_wait_for_the_coordinator_and_resume_when_it_is_back(tmp_path, vocab):
    n = 3
    cfg = testing.fresh_config(
        tmp_path / "server", port=free_port(), round_cohort_size=n, round_overselect=0,
        rate_per_second=1e4, rate_burst=10_000,
    )  # fmt: skip
    url = f"http://127.0.0.1:{cfg.port}"
    with testing.live_server(cfg):
        phones = []
        for i in range(n):
            dev = Device.open(DeviceConfig(tmp_path / f"phone{i}", min_new_words=10), vocab)
            tr = Transport(dev, url, timeout=10)
            tr.enrol(f"phone{i}")
            phones.append((dev, tr))
    # The coordinator is down: the phones learn, find it unreachable, and keep the update.
    workers = []
    for i, (dev, tr) in enumerate(phones):
        type_habits(dev, i)
        bg = Background(dev, tr, np.random.default_rng(i), round_timeout_s=60)
        assert bg.tick() == ["trained", "offline"] and dev.pending_contribution == 0
        bg.connection.retry_at = 0.0  # skip the backoff: the coordinator is back at once
        workers.append(bg)

    with testing.live_server(cfg) as (_, coord):  # restarted on the same database
        # First contact: the phones install version 1, so their updates (made against the
        # shipped version 0) are learnt again from it, and they still wait.
        for (dev, _), bg in zip(phones, workers, strict=True):
            assert bg.tick() == ["installed v1", "retrained"] and dev.pending_contribution == 1
        rounds.open_round(coord, np.random.default_rng(0))
        done = [None] * n

        def work(i):
            done[i] = workers[i].tick()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        assert done == [["round done"]] * n
        for (dev, _), bg in zip(phones, workers, strict=True):
            assert dev.version == 2 and dev.pending_contribution is None
            st = bg.status()
            assert st["state"] == "online" and st["last_round"]["status"] == "done"
            assert dev.stats()["uploads"] == 1
        assert coord.registry.current().id == 2
    for _, tr in phones:
        tr.close()


def test_the_ui_sees_the_connection_and_switches_idle_and_charging(tmp_path, vocab):
    from fastapi.testclient import TestClient

    from keyboard.web import create_app

    dev = Device.open(DeviceConfig(tmp_path / "phone", min_new_words=10), vocab)
    tr = Transport(dev, f"http://127.0.0.1:{free_port()}", timeout=2)
    bg = Background(dev, tr, np.random.default_rng(0))
    with TestClient(create_app(dev, connection=bg.status)) as c:
        assert c.get("/api/stats").json()["connection"]["state"] == "unknown"
        for i in range(2):
            type_habits(dev, i)
        assert c.post("/api/idle", json={"idle_and_charging": False}).json()[
            "idle_and_charging"
        ] is False  # fmt: skip
        assert bg.tick() == ["offline"] and dev.pending_contribution is None  # busy: no learning
        s = c.post("/api/idle", json={"idle_and_charging": True}).json()
        assert s["idle_and_charging"] is True and s["connection"]["state"] == "offline"
        bg.connection.retry_at = 0.0
        assert bg.tick() == ["trained", "offline"]
        s = c.get("/api/stats").json()
        assert s["pending_contribution"] == 0 and s["connection"]["pending_contribution"] == 0
        assert c.post("/api/idle", json={"idle_and_charging": "maybe"}).status_code == 422
    tr.close()


def test_buffered_coordinator_phones_report_ready_and_the_round_forms_from_them(tmp_path, vocab):
    n = 3
    cfg = testing.fresh_config(
        tmp_path / "server", round_mode="buffered", round_buffer_size=n, round_cohort_size=n,
        rate_per_second=1e4, rate_burst=10_000,
    )  # fmt: skip
    with testing.live_server(cfg) as (url, coord):
        phones, workers = [], []
        for i in range(n):
            dev = Device.open(DeviceConfig(tmp_path / f"phone{i}", min_new_words=10), vocab)
            tr = Transport(dev, url, timeout=10)
            tr.enrol(f"phone{i}")
            assert tr.update() and dev.version == 1
            type_habits(dev, i)
            phones.append((dev, tr))
            workers.append(Background(dev, tr, np.random.default_rng(i), round_timeout_s=60))
        done = [[] for _ in range(n)]

        def work(i):  # the worker's loop: tick until it has taken part in a round
            for _ in range(60):
                done[i] += workers[i].tick()
                if done[i][-1:] and done[i][-1].startswith("round"):
                    return
                time.sleep(0.5)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        # Each phone trained and said it was ready; the last report opened the round.
        assert all(d[:2] == ["trained", "ready"] for d in done), done
        assert all(d[-1] == "round done" for d in done), done
        assert coord.registry.current().id == 2
        for dev, tr in phones:
            assert dev.version == 2 and dev.pending_contribution is None
            assert "checkin" in [e.kind for e in dev.log.entries()]
            tr.close()
