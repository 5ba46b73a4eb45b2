"""One SecAgg+ round over real HTTP: five phones on the shipped LiteRT model train locally,
take part through `keyboard.contribute`, and install the version the round produced."""

import contextlib
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from phones import type_habits

from coordinator import db, devices, rounds, server_opt, testing, traffic
from coordinator.app import create_app
from keyboard.contribute import contribute, evaluate_global, flatten_delta
from keyboard.device import Device, DeviceConfig
from keyboard.transport import Transport
from model.vocab import build_vocabulary
from secagg import client, crypto, encoding, subsample
from secagg.params import RoundParams

N = 5


@pytest.fixture(scope="module")
def vocab():
    return build_vocabulary(10_000)


@contextlib.contextmanager
def serving(tmp_path, **overrides):
    """A real uvicorn server on a free loopback port, in a thread, stopped cleanly."""
    cfg = testing.fresh_config(
        tmp_path,
        **{"round_cohort_size": N, "round_overselect": 0, "rate_per_second": 1e4,
           "rate_burst": 10_000, **overrides},
    )  # fmt: skip
    with testing.live_server(cfg) as served:
        yield served


@pytest.fixture
def live(tmp_path):
    with serving(tmp_path) as served:
        yield served


def _run(phones, stop_after=None):
    outcomes = [None] * len(phones)

    def run(i):
        dev, tr = phones[i]
        outcomes[i] = contribute(
            dev, tr, np.random.default_rng(100 + i), 60, 0.02, stop_after=(stop_after or {}).get(i)
        )

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(phones))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    return outcomes


def _phone(tmp_path, url, vocab, i):
    cfg = DeviceConfig(tmp_path / f"phone{i}", min_new_words=10, local_epochs=1, lr=1e-2)
    dev = Device.open(cfg, vocab)
    tr = Transport(dev, url)
    tr.enrol(f"phone{i}")
    assert tr.update() and dev.version == 1  # the coordinator's version 1 replaces the shipped
    type_habits(dev, i)  # different habits per phone; every 5th message is held back
    assert dev.train_if_eligible(True, np.random.default_rng(i)) is not None
    return dev, tr


def test_round_over_http_averages_clipped_deltas_and_phones_install_it(tmp_path, live, vocab):
    url, coord = live
    phones = [_phone(tmp_path, url, vocab, i) for i in range(N)]
    deltas = [flatten_delta(d.delta()) for d, _ in phones]
    assert all(np.any(x) for x in deltas)
    global1 = server_opt.flatten(coord.registry.device_part(1))
    counters = [evaluate_global(d) for d, _ in phones]  # what each phone will report

    rid = rounds.open_round(coord, np.random.default_rng(0))
    outcomes = _run(phones)
    assert [o.status for o in outcomes] == ["done"] * N, outcomes
    assert [o.installed_version for o in outcomes] == [2] * N

    # Exactly global + the average of the phones' clipped, quantised deltas: the same
    # stochastic rounding replayed here (the rng drives nothing else on the phone).
    spec = RoundParams.from_json(_params(coord, rid)).spec
    field = sum(
        encoding.encode(x, spec, np.random.default_rng(100 + i), (0, 0, 0)).astype(np.int64)
        for i, x in enumerate(deltas)
    )
    vec, _ = encoding.decode(field.astype(spec.dtype), spec, N)
    new = server_opt.flatten(coord.registry.device_part(2))
    np.testing.assert_allclose(new, global1 + vec / N, atol=1e-5)
    plain = np.mean([encoding.clip(x, spec.clip_norm) for x in deltas], axis=0)
    step = 2 * spec.bound / ((1 << spec.value_bits) - 1)
    assert np.abs(new - global1 - plain).max() <= step

    # Metrics: contributors, no dropouts, federated evaluation counters summed exactly.
    v2 = coord.registry.get(2)
    assert v2.metrics["contributors"] == N and v2.parent == 1
    assert set(v2.metrics["dropouts"].values()) == {0}
    fed = [v2.metrics[k] for k in ("fed_hits_at_1", "fed_hits_at_3", "fed_words")]
    assert fed == np.sum(counters, axis=0).tolist() and fed[2] > 0
    st = rounds.status(coord, rid)
    masked = {s["name"]: s for s in st["stages"]}["masked_input"]
    assert masked["bytes_in"] == sum(o.masked_input_bytes for o in outcomes)
    assert masked["bytes_in"] > coord.config.max_request_bytes  # the per-round upload limit

    # Phones run the new version, and each logged every request it made.
    for i, ((dev, _), o) in enumerate(zip(phones, outcomes, strict=True)):
        assert dev.version == 2
        np.testing.assert_array_equal(flatten_delta(dev.global_part), new)
        entries = dev.log.entries()
        served = traffic.for_device(coord.db, f"phone{i}")  # (in, out) rows per request
        assert len(entries) == len(served) / 2
        kinds = [e.kind for e in entries]
        assert kinds.count("masked_vector") == 1 and "secagg" in kinds
        mv = next(e for e in entries if e.kind == "masked_vector")
        assert mv.bytes_up == o.masked_input_bytes > 0
        assert dev.stats()["last_upload_bytes"] == o.bytes_up
    for _, tr in phones:
        tr.close()


def test_http_errors_are_json_4xx_and_change_nothing(tmp_path, live, vocab):
    url, coord = live
    (dev, tr), (dev1, tr1) = [_phone(tmp_path, url, vocab, i) for i in range(2)]
    rid = rounds.open_round(coord, np.random.default_rng(0))
    task = tr.round_task()
    assert task["round_id"] == rid and task["stage"] == "advertise" and task["pending"] is None
    params = RoundParams.from_json(task["params"])
    ids = {int(k): bytes.fromhex(v) for k, v in task["identities"].items()}
    st = client.new_client(params, task["client_id"], tr.credentials.identity_seed, ids)
    st, msg = client.advertise_keys(st)
    tr.round_send(rid, "advertise", msg)
    before = testing.snapshot(coord.db)
    h = {"Authorization": f"Bearer {tr.credentials.token}"}
    h1 = {"Authorization": f"Bearer {tr1.credentials.token}"}
    with httpx.Client(base_url=url) as c:
        cases = [
            (c.post(f"/v1/rounds/{rid}/advertise", content=msg, headers=h), 409, "duplicate"),
            (c.post(f"/v1/rounds/{rid}/share_keys", content=msg, headers=h), 409, "stage"),
            (c.post(f"/v1/rounds/{rid}/advertise", content=msg, headers=h1), 409, "sender"),
            (c.post(f"/v1/rounds/{rid + 1}/advertise", content=msg, headers=h), 404, "round"),
            (c.post(f"/v1/rounds/{rid}/advertise", content=b"junk", headers=h1), 400, ""),
            (c.post(f"/v1/rounds/{rid}/advertise", content=b"x" * 10**6, headers=h1), 413, ""),
            (c.post(f"/v1/rounds/{rid}/advertise", content=msg), 401, ""),
        ]
    for r, code, word in cases:
        assert r.status_code == code, (r.status_code, r.text)
        assert "error" in r.json() and word in r.json()["detail"]
    assert testing.snapshot(coord.db) == before
    dev1.version = 0  # e.g. it never installed version 1: it must not send a stale update
    out = contribute(dev1, tr1, np.random.default_rng(0), 5, 0.02)
    assert out.status == "skipped" and out.bytes_up == 0 and "version 0" in out.reason
    tr.close()
    tr1.close()


def test_cloud_predictor_logs_the_typed_text_verbatim(tmp_path, live, vocab):
    url, _ = live
    dev = Device.open(DeviceConfig(tmp_path / "thin"), vocab)
    with Transport(dev, url) as tr:
        tr.enrol("thin", mode="cloud")
        dev.set_on_device(False)
        dev.cloud_predict = tr.cloud_predictor()
        assert "you" in dev.suggest("how are ")
    e = dev.log.entries()[-1]
    assert (e.kind, e.endpoint, e.contents, e.bytes_up) == (
        "raw_text",
        "/v1/predict",
        "how are ",
        len(b'{"text":"how are "}'),
    )


def test_phone_that_drops_after_share_keys_over_http(tmp_path, vocab):
    """The masked-input timeout closes the stage without it; the others finish and install."""
    with serving(tmp_path, round_masked_input_timeout_s=2.0) as (url, coord):
        phones = [_phone(tmp_path, url, vocab, i) for i in range(N)]
        deltas = [flatten_delta(d.delta()) for d, _ in phones]
        rid = rounds.open_round(coord, np.random.default_rng(1))
        outcomes = _run(phones, stop_after={0: "share_keys"})
        assert [o.status for o in outcomes] == ["dropped"] + ["done"] * (N - 1)
        assert outcomes[0].masked_input_bytes == 0 and phones[0][0].version == 1
        assert all(dev.version == 2 for dev, _ in phones[1:])
        st = rounds.status(coord, rid)
        assert st["dropouts"]["masked_input"] == 1
        spec = RoundParams.from_json(_params(coord, rid)).spec
        got = server_opt.flatten(coord.registry.device_part(2)) - server_opt.flatten(
            coord.registry.device_part(1)
        )
        survivors = np.mean([encoding.clip(x, spec.clip_norm) for x in deltas[1:]], axis=0)
        assert np.abs(got - survivors).max() <= 2 * spec.bound / 255
        assert coord.registry.get(2).metrics["contributors"] == N - 1
        for _, tr in phones:
            tr.close()


def _params(coord, rid):
    with coord.db.transaction() as s:
        return s.get(db.Round, rid).params


def test_the_service_times_out_an_abandoned_round_on_its_own(tmp_path):
    cfg = testing.fresh_config(tmp_path, round_stage_timeout_s=0.2, round_tick_s=0.05)
    with TestClient(create_app(cfg)) as http:
        coord = http.app.state.coordinator
        for i in range(3):
            devices.enrol(coord.db, f"d{i}", crypto.new_identity()[1], "on_device")
        rid = rounds.open_round(coord, np.random.default_rng(0))
        deadline = time.monotonic() + 10
        while rounds.status(coord, rid)["status"] == "running":  # no request touches it
            assert time.monotonic() < deadline, "the round never timed out"
            time.sleep(0.05)
        assert "advertised keys" in rounds.status(coord, rid)["reason"]


def test_random_mask_round_uploads_a_quarter_and_moves_only_those_coordinates(tmp_path, vocab):
    with serving(tmp_path, upload_fraction=0.25) as (url, coord):
        phones = [_phone(tmp_path, url, vocab, i) for i in range(N)]
        deltas = [flatten_delta(d.delta()) for d, _ in phones]
        full = deltas[0].size
        global1 = server_opt.flatten(coord.registry.device_part(1))
        rid = rounds.open_round(coord, np.random.default_rng(0))
        outcomes = _run(phones)
        assert [o.status for o in outcomes] == ["done"] * N, outcomes
        with coord.db.transaction() as s:
            sub = s.get(db.Round, rid).stats["subset"]
        params = RoundParams.from_json(_params(coord, rid))
        new = server_opt.flatten(coord.registry.device_part(2))
    assert sub["of"] == full and params.dim == subsample.subset_size(full, 0.25)
    idx = subsample.indices(sub["seed"], full, params.dim)
    moved = np.flatnonzero(new != global1)
    assert set(moved) <= set(idx) and len(moved) > 0.9 * len(idx)
    # Those coordinates moved by the average of the phones' clipped subsets (the server adds
    # the average: FedAvg at rate 1), within one quantisation step.
    spec = params.spec
    plain = np.mean([encoding.clip(x[idx], spec.clip_norm) for x in deltas], axis=0)
    step = 2 * spec.bound / ((1 << spec.value_bits) - 1)
    assert np.abs(new[idx] - global1[idx] - plain).max() <= step
    # A quarter of the coordinates: a masked input about a quarter of a full one's size.
    assert max(o.masked_input_bytes for o in outcomes) < 0.3 * full * spec.width / 8
