"""The population simulator: its clock and speed profile (exact values), the in-process
transport, and (slow) a short simulation over real HTTP with dropouts."""

import dataclasses

import numpy as np
import pytest

from coordinator import db, testing
from coordinator.service import Coordinator
from keyboard import population
from keyboard.device import Device, DeviceConfig
from keyboard.sim_clock import SimClock, SpeedProfile, slowdowns, sync_round, training_seconds
from keyboard.sim_transport import InProcessTransport
from keyboard.transport import TransportError

# Binary-exact figures, so the arithmetic can be checked with ==.
PROFILE = SpeedProfile(straggler_share=0.3, straggler_slowdown=10.0, step_time_s=0.125,
                       latency_s=0.25)  # fmt: skip


def test_slowdowns_make_exactly_the_configured_share_of_stragglers():
    got = slowdowns(10, PROFILE, np.random.default_rng(0))
    assert sorted(got.tolist()) == [1.0] * 7 + [10.0] * 3
    again = slowdowns(10, PROFILE, np.random.default_rng(0))
    assert got.tolist() == again.tolist()  # seeded: the same phones are slow every run
    none = dataclasses.replace(PROFILE, straggler_share=0.0)
    assert slowdowns(10, none, np.random.default_rng(1)).tolist() == [1.0] * 10


def test_training_time_is_steps_times_step_time_times_slowdown():
    assert training_seconds(8, 1.0, PROFILE) == 1.0
    assert training_seconds(8, 10.0, PROFILE) == 10.0
    assert training_seconds(0, 10.0, PROFILE) == 0.0


def test_sync_round_waits_for_the_slowest_on_time_device():
    t = sync_round({"a": 1.0, "b": 2.5}, set(), PROFILE, 4.0, 10.0)
    assert t.seconds == 4 * 0.25 + 2.5 + 0.25
    assert t.on_time == ("a", "b") and t.late == ()


def test_sync_round_a_straggler_past_the_deadline_is_late_and_the_stage_waits():
    t = sync_round({"a": 1.0, "b": 2.5, "c": 25.0}, set(), PROFILE, 4.0, 10.0)
    assert t.seconds == 4 * 0.25 + 4.0  # masked input closes at the deadline
    assert t.on_time == ("a", "b") and t.late == ("c",)
    # 3.75 + latency 0.25 is exactly the deadline: still on time.
    assert sync_round({"a": 3.75}, set(), PROFILE, 4.0, 10.0).late == ()


def test_sync_round_a_silent_stage_costs_its_timeout():
    t = sync_round({"a": 2.5}, {"advertise", "unmasking"}, PROFILE, 4.0, 10.0)
    assert t.seconds == 2 * 0.25 + 2 * 10.0 + 2.5 + 0.25
    t = sync_round({"a": 1.0}, {"masked_input"}, PROFILE, 4.0, 10.0)
    assert t.seconds == 4 * 0.25 + 4.0


def test_sim_clock_only_moves_forward():
    c = SimClock()
    assert c.advance(1.5) == 1.5 and c.advance(0.25) == 1.75 and c.now() == 1.75
    with pytest.raises(ValueError):
        c.advance(-1)


def test_population_config_validates_and_has_presets():
    tiny = population.PopulationConfig.tiny()
    assert (tiny.devices, tiny.cohort_size, tiny.rounds, tiny.transport) == (6, 4, 2, "http")
    assert tiny.typing == 2  # text arrives over the rounds
    assert population.PopulationConfig.default().devices == 822
    with pytest.raises(ValueError, match="dropout"):
        population.PopulationConfig(dropout={"lunch": 0.1})
    with pytest.raises(ValueError, match="transport"):
        population.PopulationConfig(transport="carrier pigeon")
    with pytest.raises(ValueError):
        SpeedProfile(straggler_share=1.5)


def test_coordinator_config_fits_the_cohort(tmp_path):
    cfg = population.PopulationConfig(cohort_size=30, overselect=0.3)
    c = population.coordinator_config(cfg, tmp_path)
    assert c.round_cohort_size == 30 and c.secagg.max_cohort == 39  # ceil(30 * 1.3)
    assert c.data_dir == tmp_path and c.port == 0


def test_in_process_transport_speaks_the_same_protocol_and_logs_it(tmp_path):
    coord = Coordinator.open(testing.fresh_config(tmp_path))
    try:
        dev = Device.open(DeviceConfig(tmp_path / "phone"))
        tr = InProcessTransport(dev, coord)
        tr.enrol("sim-0000")
        assert tr.update() and dev.version == 1  # checked in, downloaded version 1
        assert tr.round_task() == {"round_id": None}
        with pytest.raises(TransportError) as e:
            tr.round_status(7)
        assert e.value.status == 404
        kinds = [e.kind for e in dev.log.entries()]
        assert kinds == ["enrol", "checkin", "device_part_download", "secagg", "secagg"]
        enrol = dev.log.entries()[0]
        assert enrol.endpoint == "/v1/devices" and enrol.bytes_up > 0 and enrol.bytes_down > 0
        # Credentials sealed like the HTTP transport's: a new transport finds them.
        assert InProcessTransport(dev, coord).credentials.device_id == "sim-0000"
    finally:
        coord.close()


@pytest.mark.slow
def test_short_simulation_over_http_with_dropouts_makes_an_evaluated_version(tmp_path):
    cfg = population.PopulationConfig.tiny()  # 6 phones over HTTP, 20% dropout at MaskedInput
    with population.running_population(cfg, tmp_path) as (pop, url):
        assert url.startswith("http://127.0.0.1:")
        reports = pop.run(progress=False)
        versions = pop.coord.registry.versions()
    assert len(reports) == cfg.rounds
    first = reports[0]
    assert first.status == "done" and first.version == 2
    assert first.dropped >= 1 and first.contributors == first.joined - first.dropped
    m = versions[1].metrics
    assert m["contributors"] == first.contributors and sum(m["dropouts"].values()) >= 1
    assert m["public_targets"] == 50 and 0 <= m["public_top1"] <= 1  # evaluated server-side
    assert m["fed_words"] > 0  # federated evaluation counters rode in the masked sum
    assert first.upload_bytes > first.masked_bytes > 0
    # The dropout made MaskedInput wait for its (simulated) deadline; a sampled phone that sat
    # the round out (too little new text) made AdvertiseKeys wait for its timeout.
    lat = cfg.speed.latency_s
    advertise = cfg.stage_timeout_s if first.declined else lat
    assert first.sim_seconds == pytest.approx(advertise + 3 * lat + cfg.masked_deadline_s)
    assert reports[-1].sim_time == pytest.approx(sum(r.sim_seconds for r in reports))


@pytest.mark.slow
def test_buffered_simulation_rounds_take_the_first_ready_devices_with_stale_weights(tmp_path):
    # 8 in-process phones, 4 training at once, rounds of the first 3 ready; half of the phones
    # are 10x stragglers, so later rounds mix fresh and stale updates.
    cfg = dataclasses.replace(
        population.PopulationConfig.tiny(), devices=8, transport="inprocess", rounds=4,
        round_mode="buffered", buffer_size=3, concurrency=4, dropout={},
        speed=dataclasses.replace(PROFILE, straggler_share=0.5),
    )  # fmt: skip
    with population.running_population(cfg, tmp_path) as (pop, _):
        assert pop.coord.config.round_mode == "buffered"
        reports = pop.run(progress=False)
        versions = pop.coord.registry.versions()
        with pop.coord.db.transaction() as s:
            stats = [r.stats or {} for r in s.query(db.Round).order_by(db.Round.id)]
    assert [r.status for r in reports] == ["done"] * 4
    assert [r.version for r in reports] == [2, 3, 4, 5]
    assert all(r.contributors == 3 for r in reports)
    assert all(v.metrics["mode"] == "buffered" for v in versions[1:])
    # Simulated time only moves forward, and each round ends after its members were ready.
    times = [r.sim_time for r in reports]
    assert times == sorted(times) and times[0] > 0
    # Some later round took an update trained from an older version: weight below 1.
    stale = [w for st in stats[1:] for w in st["weights"].values() if w < 1]
    assert stale, stats
