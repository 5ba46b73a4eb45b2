"""Rounds in-process (no HTTP): dropouts closed by timeouts, aborts, replays, restarts, and a
database that never holds one device's unmasked update."""

import base64
import dataclasses
from datetime import timedelta

import numpy as np
import pytest

from coordinator import db, devices, round_result, rounds, server_opt, testing
from coordinator.errors import Conflict, Invalid
from coordinator.service import Coordinator
from secagg import client, crypto, encoding, packing
from secagg.config import DPConfig
from secagg.params import RoundParams, make_round_id

N = 5


@pytest.fixture
def coord(tmp_path):
    c = Coordinator.open(testing.fresh_config(tmp_path, round_cohort_size=N, round_overselect=0))
    yield c
    c.close()


def _enrol(coord, n=N):
    sks = {}
    for i in range(n):
        sk, pk = crypto.new_identity()
        devices.enrol(coord.db, f"d{i}", pk, "on_device")
        sks[f"d{i}"] = sk
    return sks


class Phones:
    """Secagg clients of a round, driven stage by stage through `coordinator.rounds`."""

    def __init__(self, coord, rid, sks, seed=0):
        self.coord, self.rid, self.states, self.ids = coord, rid, {}, {}
        for d, sk in sks.items():
            v = rounds.current_for(coord, d)
            self.ids[d] = v.client_id
            self.states[d] = client.new_client(
                RoundParams.from_json(v.params), v.client_id, sk, v.identities
            )
        self.params = RoundParams.from_json(v.params)
        dim = self.params.dim
        rng = np.random.default_rng(seed)
        self.deltas = {d: rng.normal(0, 0.01, dim).astype(np.float32) for d in sks}
        self.enc = {}
        self.sent = {}  # (device, stage) -> message bytes

    def stage(self, name, who):
        for d in who:
            st = self.states[d]
            if name == "advertise":
                st, msg = client.advertise_keys(st)
            else:
                got = rounds.inbox(self.coord, self.rid, d, name)
                assert got is not None, (d, name)
                if name == "share_keys":
                    st, msg = client.share_keys(st, got)
                elif name == "masked_input":
                    rng = np.random.default_rng(self.ids[d])
                    self.enc[d] = encoding.encode(self.deltas[d], self.params.spec, rng, (1, 2, 3))
                    st, msg = client.masked_input(st, got, self.enc[d])
                elif name == "consistency":
                    st, msg = client.consistency_check(st, got)
                else:
                    st, msg = client.unmasking(st, got)
            self.states[d] = st
            self.sent[d, name] = msg
            rounds.submit(self.coord, self.rid, d, name, msg)

    def expected_average(self, who):
        clipped = [encoding.clip(self.deltas[d], self.params.config.clip_norm) for d in who]
        return np.mean(clipped, axis=0)


def _new_part(coord, version):
    return server_opt.flatten(coord.registry.device_part(version))


def test_dropout_after_share_keys_closes_on_timeout_and_averages_survivors(coord):
    sks = _enrol(coord)
    rid = rounds.open_round(coord, np.random.default_rng(1))
    ph = Phones(coord, rid, sks)
    all_d = sorted(sks)
    ph.stage("advertise", all_d)
    ph.stage("share_keys", all_d)
    survivors = all_d[1:]  # d0 goes silent after ShareKeys
    ph.stage("masked_input", survivors)
    assert rounds.status(coord, rid)["stage"] == "masked_input"  # waits for d0
    later = db.utcnow() + timedelta(seconds=coord.config.round_masked_input_timeout_s + 1)
    assert rounds.tick(coord, later) == [rid]
    with pytest.raises(Conflict, match="moved past"):
        rounds.inbox(coord, rid, "d0", "masked_input")
    ph.stage("consistency", survivors)
    ph.stage("unmasking", survivors)
    st = rounds.status(coord, rid)
    assert st["status"] == "done" and st["dropouts"]["masked_input"] == 1
    v = coord.registry.get(st["result_version"])
    assert v.metrics["contributors"] == 4 and v.metrics["fed_words"] == 4 * 3
    got = _new_part(coord, v.id) - _new_part(coord, v.parent)
    want = ph.expected_average(survivors)
    step = 2 * coord.config.secagg.clip_norm / 255  # one quantisation level
    assert np.abs(got - want).max() < step
    assert np.corrcoef(got, want)[0, 1] > 0.5
    assert all(s["bytes_in"] > 0 for s in st["stages"])


def test_too_many_dropouts_abort_cleanly_without_a_new_version(coord):
    sks = _enrol(coord)
    rid = rounds.open_round(coord, np.random.default_rng(2))
    ph = Phones(coord, rid, sks)
    all_d = sorted(sks)
    ph.stage("advertise", all_d)
    ph.stage("share_keys", all_d)
    ph.stage("masked_input", all_d[:1])  # only one input: a sum of one must never be released
    later = db.utcnow() + timedelta(seconds=coord.config.round_masked_input_timeout_s + 1)
    rounds.tick(coord, later)
    st = rounds.status(coord, rid)
    assert st["status"] == "aborted" and "masked inputs arrived" in st["reason"]
    assert [v.id for v in coord.registry.versions()] == [1]
    with pytest.raises(Conflict, match="aborted"):
        rounds.submit(coord, rid, "d1", "masked_input", b"x")
    with coord.db.transaction() as s:
        assert s.get(db.Round, rid).server_state["acc"] is None  # masked data dropped


def test_replayed_and_out_of_order_messages_change_nothing(coord):
    sks = _enrol(coord)
    rid = rounds.open_round(coord, np.random.default_rng(3))
    ph = Phones(coord, rid, sks)
    ph.stage("advertise", ["d0"])
    before = testing.snapshot(coord.db)
    with pytest.raises(Conflict, match="duplicate"):
        rounds.submit(coord, rid, "d0", "advertise", ph.sent["d0", "advertise"])
    with pytest.raises(Conflict, match="stage advertise"):
        rounds.submit(coord, rid, "d1", "share_keys", ph.sent["d0", "advertise"])
    with pytest.raises(Conflict, match="sender"):  # d1 replaying d0's message as its own
        rounds.submit(coord, rid, "d1", "advertise", ph.sent["d0", "advertise"])
    with pytest.raises(Invalid):
        rounds.submit(coord, rid, "d1", "advertise", b"not a secagg message")
    # d1's genuine advert, but for another round (same cohort and keys, another round id).
    other = dataclasses.replace(ph.params, round_id=make_round_id("another round"))
    pks = {ph.ids[d]: devices.get(coord.db, d).public_key for d in sks}
    st = client.new_client(other, ph.ids["d1"], sks["d1"], pks)
    _, foreign = client.advertise_keys(st)
    with pytest.raises((Conflict, Invalid), match="round"):
        rounds.submit(coord, rid, "d1", "advertise", foreign)
    assert testing.snapshot(coord.db) == before


def test_restart_mid_round_resumes_from_the_stored_state(tmp_path):
    cfg = testing.fresh_config(tmp_path, round_cohort_size=N, round_overselect=0)
    c1 = Coordinator.open(cfg)
    sks = _enrol(c1)
    rid = rounds.open_round(c1, np.random.default_rng(4))
    ph = Phones(c1, rid, sks)
    all_d = sorted(sks)
    ph.stage("advertise", all_d)
    ph.stage("share_keys", all_d)
    ph.stage("masked_input", all_d[:3])
    c1.close()
    c2 = Coordinator.open(cfg)  # same database: the round carries on where it stopped
    ph.coord = c2
    ph.stage("masked_input", all_d[3:])
    ph.stage("consistency", all_d)
    ph.stage("unmasking", all_d)
    st = rounds.status(c2, rid)
    assert st["status"] == "done"
    got = _new_part(c2, st["result_version"]) - _new_part(c2, 1)
    assert np.abs(got - ph.expected_average(all_d)).max() < 2 / 255
    c2.close()


def test_restart_with_an_unreadable_state_aborts_the_round(tmp_path):
    cfg = testing.fresh_config(tmp_path, round_cohort_size=N, round_overselect=0)
    c1 = Coordinator.open(cfg)
    _enrol(c1)
    rid = rounds.open_round(c1, np.random.default_rng(5))
    with c1.db.transaction() as s:
        row = s.get(db.Round, rid)
        row.server_state = {**row.server_state, "params": {}}  # e.g. written by an old release
    c1.close()
    c2 = Coordinator.open(cfg)
    st = rounds.status(c2, rid)
    assert st["status"] == "aborted" and "restarted" in st["reason"]
    rounds.open_round(c2, np.random.default_rng(6))  # the next round can start
    c2.close()


def test_database_never_holds_an_individual_unmasked_update(coord):
    sks = _enrol(coord)
    rid = rounds.open_round(coord, np.random.default_rng(7))
    ph = Phones(coord, rid, sks)
    all_d = sorted(sks)
    tables = []
    for name in ("advertise", "share_keys", "masked_input", "consistency", "unmasking"):
        ph.stage(name, all_d)
        tables.append(testing.snapshot(coord.db))
    _assert_no_plain_update(coord, tables, ph)


def _assert_no_plain_update(coord, snapshots, ph):
    """No stored bytes contain a device's encoded vector or plain delta, and no stored vector
    of the right length correlates with one device's encoded vector."""
    spec = ph.params.spec
    plains = []
    for d in ph.enc:
        plains += [ph.deltas[d].tobytes()[:4096], ph.enc[d].astype(np.uint32).tobytes()[:4096]]
        plains.append(packing.pack(ph.enc[d], spec.width)[:4096])
    blobs = []
    for snap in snapshots:
        for rows in snap.values():
            for r in rows:
                for v in r:
                    blobs.append(v if isinstance(v, bytes) else repr(v).encode())
    for f in coord.config.data_dir.rglob("*"):
        if f.is_file():
            blobs.append(f.read_bytes())
    joined = b"".join(blobs)
    for p in plains:
        assert p not in joined
    # The running sum (the only stored vector) looks nothing like any one encoded input.
    for snap in snapshots:
        for r in snap["rounds"]:
            for v in r:
                if isinstance(v, dict) and v.get("acc"):
                    acc = packing.unpack(base64.b64decode(v["acc"]), spec.width, spec.length)
                    for d in ph.enc:
                        c = np.corrcoef(acc.astype(float), ph.enc[d].astype(float))[0, 1]
                        assert abs(c) < 0.05, (d, c)


def test_open_round_over_selects_and_needs_two_devices(tmp_path):
    cfg = testing.fresh_config(tmp_path, round_cohort_size=3, round_overselect=0.5)
    c = Coordinator.open(cfg)
    with pytest.raises(Invalid, match="at least 2"):
        rounds.open_round(c, np.random.default_rng(0))
    _enrol(c, 6)
    rid = rounds.open_round(c, np.random.default_rng(0))
    assert rounds.status(c, rid)["cohort"] == 5  # ceil(3 * 1.5)
    with pytest.raises(Conflict, match="already running"):
        rounds.open_round(c, np.random.default_rng(0))
    c.close()


def _full_round(coord, sks, seed):
    rid = rounds.open_round(coord, np.random.default_rng(seed))
    ph = Phones(coord, rid, sks, seed)
    for name in rounds.STAGES:
        ph.stage(name, sorted(sks))
    return rid


def test_dp_rounds_are_charged_and_refused_over_the_budget(tmp_path):
    dpc = DPConfig(noise_multiplier=2.0, delta=1e-5, sampling_probability=1.0, epsilon_limit=3.0)
    cfg = testing.fresh_config(tmp_path, round_cohort_size=N, round_overselect=0, dp=dpc)
    c = Coordinator.open(cfg)
    sks = _enrol(c)
    first = rounds.status(c, _full_round(c, sks, 1))
    assert first["status"] == "done"
    m = c.registry.get(first["result_version"]).metrics
    assert m["dp_noise_multiplier"] == 2.0 and 2.0 < m["dp_epsilon"] < 3.0
    second = rounds.status(c, _full_round(c, sks, 2))  # would bring epsilon to ~3.19
    assert second["status"] == "aborted" and "epsilon" in second["reason"]
    assert [v.id for v in c.registry.versions()] == [1, 2]
    assert round_result.ledger(c).rounds == 1
    c.close()


def test_restart_closes_a_stage_everyone_had_answered(tmp_path, monkeypatch):
    """A crash between the last message of a stage and its closing: the restart closes it."""
    cfg = testing.fresh_config(tmp_path, round_cohort_size=N, round_overselect=0)
    c1 = Coordinator.open(cfg)
    sks = _enrol(c1)
    rid = rounds.open_round(c1, np.random.default_rng(8))
    ph = Phones(c1, rid, sks)
    monkeypatch.setattr(rounds, "close_stage", lambda *a, **k: "crashed")
    ph.stage("advertise", sorted(sks))
    monkeypatch.undo()
    assert rounds.status(c1, rid)["stage"] == "advertise"
    c1.close()
    c2 = Coordinator.open(cfg)
    assert rounds.status(c2, rid)["stage"] == "share_keys"
    assert all(rounds.inbox(c2, rid, d, "share_keys") for d in sks)
    c2.close()


def test_a_round_everyone_abandoned_ends_when_the_next_one_opens(coord):
    _enrol(coord)
    rid = rounds.open_round(coord, np.random.default_rng(9))
    later = db.utcnow() + timedelta(seconds=coord.config.round_stage_timeout_s + 1)
    nxt = rounds.open_round(coord, np.random.default_rng(10), now=later)
    st = rounds.status(coord, rid)
    assert st["status"] == "aborted" and "advertised keys" in st["reason"] and nxt == rid + 1


def test_every_new_version_is_evaluated_on_public_users(tmp_path):
    cfg = testing.fresh_config(tmp_path, round_cohort_size=N, round_overselect=0, eval_targets=200)
    c = Coordinator.open(cfg)
    assert c.registry.get(1).metrics["public_targets"] == 200
    done = rounds.status(c, _full_round(c, _enrol(c), 3))
    m = c.registry.get(done["result_version"]).metrics
    assert m["public_targets"] == 200 and 0.0 <= m["public_top1"] <= m["public_top3"] <= 1.0
    c.close()


def test_rotated_round_gets_a_public_seed_from_its_label_and_averages(tmp_path):
    cfg = testing.fresh_config(tmp_path, round_cohort_size=N, round_overselect=0)
    cfg = dataclasses.replace(cfg, secagg=dataclasses.replace(cfg.secagg, rotate=True))
    c = Coordinator.open(cfg)
    try:
        sks = _enrol(c)
        rid = rounds.open_round(c, np.random.default_rng(1))
        ph = Phones(c, rid, sks)
        assert ph.params.rotation_seed is not None  # every phone derives the same signs
        for stage in ("advertise", "share_keys", "masked_input", "consistency", "unmasking"):
            ph.stage(stage, sorted(sks))
        st = rounds.status(c, rid)
        assert st["status"] == "done"
        v = c.registry.get(st["result_version"])
        got = _new_part(c, v.id) - _new_part(c, v.parent)
        want = ph.expected_average(sorted(sks))
        assert np.corrcoef(got, want)[0, 1] > 0.99  # rotation keeps quantisation error small
    finally:
        c.close()
