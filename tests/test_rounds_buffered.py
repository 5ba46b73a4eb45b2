"""Buffered semi-asynchronous rounds (FedBuff): devices report ready with the version they
trained from, a round opens over the ready devices, each update is weighted by its public
staleness weight and the server divides by the survivors' total weight. Over real HTTP with
phones, and in-process across a restart; every rejected request is a clear 4xx."""

import threading
import time
from datetime import timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient
from phones import type_habits

from coordinator import admin, buffered, db, devices, rounds, scheduler, server_opt, testing
from coordinator.app import create_app
from coordinator.errors import Conflict, Forbidden, Invalid
from coordinator.service import Coordinator
from keyboard.contribute import contribute, flatten_delta, report_ready
from keyboard.device import Device, DeviceConfig
from keyboard.transport import Transport
from model.vocab import build_vocabulary
from secagg import client, crypto, encoding
from secagg.params import RoundParams

BUFFERED = {
    "round_mode": "buffered",
    "round_buffer_size": 3,
    "round_overselect": 0,
    "server_optimizer": "sgd",  # FedAvg at rate 1: the new version is exactly old + the
    "server_learning_rate": 1.0,  # weighted average
    "server_momentum": 0.0,
    "rate_per_second": 1e4,
    "rate_burst": 10_000,
}


@pytest.fixture(scope="module")
def vocab():
    return build_vocabulary(10_000)


def _train(dev, i, round_no):
    type_habits(dev, i, offset=round_no)  # different habits per phone and round
    assert dev.train_if_eligible(True, np.random.default_rng(10 * round_no + i)) is not None


def _phone(tmp_path, url, vocab, i):
    cfg = DeviceConfig(tmp_path / f"phone{i}", min_new_words=10, local_epochs=1, lr=1e-2)
    dev = Device.open(cfg, vocab)
    tr = Transport(dev, url)
    tr.enrol(f"phone{i}")
    assert tr.update() and dev.version == 1
    _train(dev, i, 0)
    return dev, tr


def _contribute_all(phones, seeds):
    out = {}

    def run(i):
        dev, tr = phones[i]
        out[i] = contribute(dev, tr, np.random.default_rng(seeds[i]), 60, 0.02)

    threads = [threading.Thread(target=run, args=(i,)) for i in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    return out


def _round_row(coord, rid):
    with coord.db.transaction() as s:
        row = s.get(db.Round, rid)
        return row.params, dict(row.stats or {}), row.mode


def test_buffered_round_over_http_weights_stale_updates(tmp_path, vocab):
    cfg = testing.fresh_config(tmp_path, **BUFFERED)
    with testing.live_server(cfg) as (url, coord):
        phones = [_phone(tmp_path, url, vocab, i) for i in range(5)]
        # Round A: phones 0-2 trained from version 1; the third report opens the round.
        assert report_ready(phones[0][1], 1) == {
            "ready": 1, "buffer_size": 3, "staleness": 0, "round_id": None
        }  # fmt: skip
        report_ready(phones[1][1], 1)
        third = report_ready(phones[2][1], 1)
        rid_a = third["round_id"]
        assert rid_a is not None and third["ready"] == 0
        out = _contribute_all(phones, {0: 100, 1: 101, 2: 102})
        assert [out[i].status for i in range(3)] == ["done"] * 3
        assert all(phones[i][0].version == 2 for i in range(3))

        # Round B: phone 3 still trained from version 1 (staleness 1), phones 0 and 1
        # retrained on version 2 (staleness 0). Phone 4 reports last and waits for the next.
        _train(phones[0][0], 0, 1)
        _train(phones[1][0], 1, 1)
        stale = {3: 1, 0: 2, 1: 2}
        deltas = {i: flatten_delta(phones[i][0].delta()) for i in stale}
        for i, v in stale.items():
            got = report_ready(phones[i][1], v)
        rid_b = got["round_id"]
        assert rid_b == rid_a + 1
        task = phones[3][1].round_task()
        assert (task["mode"], task["trained_from"], task["staleness"]) == ("buffered", 1, 1)
        assert task["weight"] == pytest.approx(2**-0.5) and task["model_version"] == 2
        assert report_ready(phones[4][1], 1)["round_id"] is None  # a round is running
        seeds = {3: 203, 0: 200, 1: 201}
        out = _contribute_all(phones, seeds)
        assert [out[i].status for i in stale] == ["done"] * 3, out

        # Version 3 = version 2 + sum(w_i * clip(x_i)) / sum(w_i), quantised: replayed
        # exactly here (the rng drives only the stochastic rounding on the phone).
        params, stats, mode = _round_row(coord, rid_b)
        spec = RoundParams.from_json(params).spec
        w = {i: (1 + 2 - v) ** -0.5 for i, v in stale.items()}
        field = sum(
            encoding.encode(deltas[i], spec, np.random.default_rng(seeds[i]), (0, 0, 0),
                            weight=w[i]).astype(np.int64)
            for i in stale
        )  # fmt: skip
        vec, _ = encoding.decode(field.astype(spec.dtype), spec, 3)
        v2 = server_opt.flatten(coord.registry.device_part(2))
        v3 = server_opt.flatten(coord.registry.device_part(3))
        total = sum(w.values())
        np.testing.assert_allclose(v3, v2 + vec / total, atol=1e-5)
        plain = sum(w[i] * encoding.clip(deltas[i], spec.clip_norm) for i in stale) / total
        step = 2 * spec.bound / ((1 << spec.value_bits) - 1)
        assert np.abs(v3 - v2 - plain).max() <= 3 * step / total
        # Closer to the weighted than to the unweighted mean: the weights mattered.
        unweighted = np.mean([encoding.clip(deltas[i], spec.clip_norm) for i in stale], axis=0)
        got = v3 - v2
        assert np.linalg.norm(got - plain) < np.linalg.norm(got - unweighted)

        # Stored per round: mode, staleness and weights, histograms; metrics of the version.
        assert mode == "buffered" and sorted(stats["staleness"].values()) == [0, 0, 1]
        assert sorted(stats["weights"].values()) == pytest.approx([2**-0.5, 1.0, 1.0])
        assert rounds.status(coord, rid_b)["staleness"] == [0, 0, 1]
        assert sum(stats["masked_hist"]["counts"]) == spec.length
        assert stats["masked_hist"]["hi"] == 2**spec.width
        assert sum(stats["aggregate_hist"]["counts"]) == spec.dim
        m = coord.registry.get(3).metrics
        assert m["mode"] == "buffered" and m["total_weight"] == pytest.approx(total)
        assert m["contributors"] == 3
        assert rounds.status(coord, rid_a)["staleness"] == [0, 0, 0]
        assert buffered.ready_count(coord) == 1  # phone 4 waits for the next round
        for _, tr in phones:
            tr.close()


def _enrol_http(http, name, mode="on_device"):
    r = http.post(
        "/v1/devices",
        json={"device_id": name, "public_key": _b64(crypto.new_identity()[1]), "mode": mode},
    )
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def _b64(b):
    import base64

    return base64.b64encode(b).decode()


def test_ready_requests_get_clear_4xx_and_change_nothing(tmp_path):
    cfg = testing.fresh_config(tmp_path, **{**BUFFERED, "max_staleness": 1})
    with TestClient(create_app(cfg)) as http:
        coord = http.app.state.coordinator
        h = {n: _enrol_http(http, n) for n in ("a", "b", "c", "d")}
        cloud = _enrol_http(http, "thin", "cloud")
        part = coord.registry.device_part(1)
        for _ in range(2):  # versions 2 and 3: version 1 is now 2 behind
            coord.registry.register(coord.registry.model_bytes(1), part, {}, parent=1)
        assert http.post("/v1/rounds/ready", json={"version": 3}, headers=h["a"]).json() == {
            "ready": 1, "buffer_size": 3, "staleness": 0, "round_id": None
        }  # fmt: skip
        before = testing.snapshot(coord.db)
        cases = [
            ({"version": 3}, h["a"], 409, "already ready"),
            ({"version": 1}, h["b"], 409, "too stale"),
            ({"version": 9}, h["b"], 400, "no version 9"),
            ({"version": 3}, cloud, 403, "cloud-mode"),
            ({"version": "3"}, h["b"], 422, "version"),
            ({}, h["b"], 422, "version"),
            ({"version": 3}, {}, 401, "Bearer"),
            ({"version": 3}, {"Authorization": "Bearer nope"}, 401, "unknown token"),
        ]
        for body, hdr, code, word in cases:
            r = http.post("/v1/rounds/ready", json=body, headers=hdr)
            assert r.status_code == code, (body, r.status_code, r.text)
            assert word in r.json()["detail"], r.json()
        assert testing.snapshot(coord.db) == before
        # A version-2 update (staleness 1) is accepted; the third report opens the round.
        assert http.post("/v1/rounds/ready", json={"version": 2}, headers=h["b"]).status_code == 200
        rid = http.post("/v1/rounds/ready", json={"version": 3}, headers=h["c"]).json()["round_id"]
        assert rounds.status(coord, rid)["staleness"] == [0, 0, 1]
        r = http.post("/v1/rounds/ready", json={"version": 3}, headers=h["a"])
        assert r.status_code == 409 and f"running round {rid}" in r.json()["detail"]
        # A device that never reported ready is not in the round: no task, uploads refused.
        assert http.get("/v1/rounds/current", headers=h["d"]).json() == {"round_id": None}
        r = http.post(f"/v1/rounds/{rid}/advertise", content=b"x", headers=h["d"])
        assert r.status_code == 409 and "not in the cohort" in r.json()["detail"]


def test_ready_in_sync_mode_is_refused(tmp_path):
    cfg = testing.fresh_config(tmp_path)
    with TestClient(create_app(cfg)) as http:
        hdr = _enrol_http(http, "a")
        r = http.post("/v1/rounds/ready", json={"version": 1}, headers=hdr)
        assert r.status_code == 409 and "synchronous" in r.json()["detail"]


def _identities(coord, names):
    sks = {}
    for n in names:
        sk, pk = crypto.new_identity()
        devices.enrol(coord.db, n, pk, "on_device")
        sks[n] = sk
    return sks


def _drive(coord, rid, sks, names, stage, st, deltas, weights):
    for d in names:
        if stage == "advertise":
            st[d], msg = client.advertise_keys(st[d])
        else:
            got = rounds.inbox(coord, rid, d, stage)
            assert got is not None, (d, stage)
            if stage == "share_keys":
                st[d], msg = client.share_keys(st[d], got)
            elif stage == "masked_input":
                spec = st[d].params.spec
                enc = encoding.encode(
                    deltas[d], spec, np.random.default_rng(7), (0, 0, 0), weight=weights[d]
                )
                st[d], msg = client.masked_input(st[d], got, enc)
            elif stage == "consistency":
                st[d], msg = client.consistency_check(st[d], got)
            else:
                st[d], msg = client.unmasking(st[d], got)
        rounds.submit(coord, rid, d, stage, msg)


def test_restart_mid_buffered_round_recovers(tmp_path):
    cfg = testing.fresh_config(tmp_path, **{**BUFFERED, "round_buffer_size": 4})
    c1 = Coordinator.open(cfg)
    names = ["d0", "d1", "d2", "d3"]
    sks = _identities(c1, names)
    part = c1.registry.device_part(1)
    c1.registry.register(c1.registry.model_bytes(1), part, {}, parent=1)  # version 2
    trained = {"d0": 1, "d1": 2, "d2": 2, "d3": 1}
    for d in names[:2]:
        buffered.ready(c1, d, trained[d])
    c1.close()
    c2 = Coordinator.open(cfg)  # the buffer survives a restart
    assert buffered.ready_count(c2) == 2
    buffered.ready(c2, "d2", 2)
    rid = buffered.ready(c2, "d3", 1)["round_id"]
    assert rid is not None
    st, weights = {}, {}
    for d in names:
        v = rounds.current_for(c2, d)
        assert v.trained_from == trained[d] and v.staleness == 2 - trained[d]
        weights[d] = v.weight
        st[d] = client.new_client(RoundParams.from_json(v.params), v.client_id, sks[d],
                                  v.identities)  # fmt: skip
    assert sorted(weights.values()) == pytest.approx([2**-0.5, 2**-0.5, 1, 1])
    dim = st["d0"].params.dim
    rng = np.random.default_rng(0)
    deltas = {d: rng.normal(0, 0.01, dim).astype(np.float32) for d in names}
    for stage in ("advertise", "share_keys"):
        _drive(c2, rid, sks, names, stage, st, deltas, weights)
    _drive(c2, rid, sks, names[:2], "masked_input", st, deltas, weights)
    c2.close()
    c3 = Coordinator.open(cfg)  # killed mid masked-input: the round carries on
    assert rounds.status(c3, rid)["stage"] == "masked_input"
    _drive(c3, rid, sks, names[2:], "masked_input", st, deltas, weights)
    for stage in ("consistency", "unmasking"):
        _drive(c3, rid, sks, names, stage, st, deltas, weights)
    s = rounds.status(c3, rid)
    assert s["status"] == "done" and s["mode"] == "buffered"
    got = server_opt.flatten(c3.registry.device_part(s["result_version"]))
    got -= server_opt.flatten(c3.registry.device_part(2))
    spec = st["d0"].params.spec
    want = sum(weights[d] * encoding.clip(deltas[d], spec.clip_norm) for d in names)
    want /= sum(weights.values())
    step = 2 * spec.bound / ((1 << spec.value_bits) - 1)
    assert np.abs(got - want).max() <= 4 * step / sum(weights.values())
    assert c3.registry.get(s["result_version"]).parent == 2  # applied to the current version
    c3.close()


def test_waiting_devices_that_became_too_stale_leave_the_buffer(tmp_path):
    cfg = testing.fresh_config(tmp_path, **{**BUFFERED, "max_staleness": 0})
    c = Coordinator.open(cfg)
    _identities(c, ["a", "b", "c"])
    buffered.ready(c, "a", 1)
    buffered.ready(c, "b", 1)
    c.registry.register(c.registry.model_bytes(1), c.registry.device_part(1), {}, parent=1)
    assert buffered.ready(c, "c", 2)["round_id"] is None  # a and b are now 1 behind
    assert buffered.ready_count(c) == 1
    with pytest.raises(Conflict, match="too stale"):
        buffered.ready(c, "a", 1)
    with pytest.raises(Invalid, match="at least 2"):
        scheduler.open_now(c)
    c.close()


def test_cloud_device_and_unknown_device_cannot_be_ready(tmp_path):
    c = Coordinator.open(testing.fresh_config(tmp_path, **BUFFERED))
    devices.enrol(c.db, "thin", crypto.new_identity()[1], "cloud")
    with pytest.raises(Forbidden):
        buffered.ready(c, "thin", 1)
    c.close()


def test_scheduler_opens_sync_rounds_on_its_interval(tmp_path):
    cfg = testing.fresh_config(
        tmp_path, round_interval_s=60.0, round_min_devices=3, round_cohort_size=3
    )
    c = Coordinator.open(cfg)
    _identities(c, ["a", "b"])
    t0 = db.utcnow()
    assert scheduler.schedule(c, t0) is None  # 2 < 3 devices enrolled
    _identities(c, ["c"])
    rid = scheduler.schedule(c, t0, np.random.default_rng(0))
    assert rid is not None and rounds.status(c, rid)["mode"] == "sync"
    assert scheduler.schedule(c, t0) is None  # one runs
    later = t0 + timedelta(seconds=cfg.round_stage_timeout_s + 1)  # it times out (no adverts)
    assert scheduler.schedule(c, later) is None  # ended, but 60 s since it started? not yet
    assert rounds.status(c, rid)["status"] == "aborted"
    assert scheduler.schedule(c, t0 + timedelta(seconds=61)) == rid + 1
    c.close()


def test_scheduler_opens_a_buffered_round_when_the_buffer_fills_after_a_round(tmp_path):
    cfg = testing.fresh_config(tmp_path, **{**BUFFERED, "round_buffer_size": 2})
    c = Coordinator.open(cfg)
    _identities(c, ["a", "b", "c", "d"])
    first = buffered.ready(c, "a", 1) and buffered.ready(c, "b", 1)["round_id"]
    assert buffered.ready(c, "c", 1)["round_id"] is None
    assert buffered.ready(c, "d", 1)["round_id"] is None  # full buffer, but a round runs
    later = db.utcnow() + timedelta(seconds=cfg.round_stage_timeout_s + 1)
    assert scheduler.schedule(c, later) == first + 1  # the silent round ended; c and d go
    c.close()


def test_admin_endpoint_needs_the_operator_token(tmp_path):
    cfg = testing.fresh_config(tmp_path)
    with TestClient(create_app(cfg)) as http:
        coord = http.app.state.coordinator
        path = cfg.data_dir / admin.TOKEN_FILE
        assert path.stat().st_mode & 0o777 == 0o600
        token = path.read_text().strip()
        assert len(token) == 64
        _identities(coord, ["a", "b", "c"])
        before = testing.snapshot(coord.db)
        for hdr, code in [
            ({}, 401),
            ({"Authorization": "Bearer wrong"}, 403),
            ({"Authorization": f"Bearer {token}x"}, 403),
        ]:
            r = http.post("/v1/admin/rounds", headers=hdr)
            assert r.status_code == code and "operator token" in r.json()["detail"]
            assert http.get("/v1/admin/rounds", headers=hdr).status_code == code
        assert testing.snapshot(coord.db) == before
        ok = {"Authorization": f"Bearer {token}"}
        r = http.post("/v1/admin/rounds", headers=ok)
        assert r.status_code == 201 and r.json()["status"] == "running"
        assert r.json()["cohort"] == 3 and r.json()["mode"] == "sync"
        again = http.post("/v1/admin/rounds", headers=ok)
        assert again.status_code == 409 and "already running" in again.json()["detail"]
        st = http.get("/v1/admin/rounds", headers=ok).json()
        assert st["mode"] == "sync" and st["running"] == r.json()["round_id"]
        assert [x["round_id"] for x in st["rounds"]] == [r.json()["round_id"]]
    # The same token on the next start (not a new one).
    with TestClient(create_app(cfg)):
        assert path.read_text().strip() == token


def test_sotto_round_cli_opens_and_reports(tmp_path, capsys):
    import json

    from sotto import cli

    cfg = testing.fresh_config(tmp_path)
    with testing.live_server(cfg) as (url, coord):
        _identities(coord, ["a", "b"])
        cli.main(["round", "open", "--url", url, "--data-dir", str(cfg.data_dir)])
        opened = json.loads(capsys.readouterr().out)
        assert opened["status"] == "running" and opened["cohort"] == 2
        cli.main(["round", "status", "--url", url, "--data-dir", str(cfg.data_dir)])
        st = json.loads(capsys.readouterr().out)
        assert st["running"] == opened["round_id"] and st["ready"] == 0
        with pytest.raises(SystemExit) as e:
            cli.main(["round", "open", "--url", url, "--data-dir", str(cfg.data_dir)])
        assert e.value.code == 2 and "already running" in capsys.readouterr().err


def test_the_service_opens_a_sync_round_on_its_own(tmp_path):
    cfg = testing.fresh_config(
        tmp_path, round_interval_s=3600.0, round_min_devices=3, round_tick_s=0.05
    )
    with TestClient(create_app(cfg)) as http:
        coord = http.app.state.coordinator
        _identities(coord, ["a", "b", "c"])
        deadline = time.monotonic() + 10
        while scheduler.overview(coord)["running"] is None:  # no request asks for it
            assert time.monotonic() < deadline, "the service never opened a round"
            time.sleep(0.05)
        time.sleep(0.3)  # several more ticks: still one round (one runs; interval not over)
        ov = scheduler.overview(coord)
        assert [r["mode"] for r in ov["rounds"]] == ["sync"] and ov["rounds"][0]["cohort"] == 3
