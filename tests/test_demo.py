"""The demo's background population loop and its settings (no servers started)."""

import threading

from keyboard.population import RoundReport
from sotto import demo


def _report(rid: int, status: str, reason: str | None = None) -> RoundReport:
    return RoundReport(
        rid, status, rid + 1 if status == "done" else None, 11, 9, 2, 0, 0,
        9 if status == "done" else 0, 50, 1.0, 1.0, 5.0, 5.0 * rid, 1.0, reason,
    )  # fmt: skip


class _FakePopulation:
    def __init__(self, reports):
        self.reports = list(reports)
        self.calls = 0

    def run_round(self):
        self.calls += 1
        return self.reports.pop(0)


def test_population_pauses_for_good_once_the_privacy_budget_is_spent(capsys):
    pop = _FakePopulation(
        [_report(1, "done"), _report(2, "aborted", "privacy budget exhausted: epsilon 10.2")]
    )
    demo._rounds_forever(pop, threading.Event(), every_s=0.0)  # returns by itself
    assert pop.calls == 2
    out = capsys.readouterr().out
    assert "round 1: done, version 2, 9 of 11" in out and "privacy budget spent" in out


def test_population_loop_stops_when_asked_and_survives_a_failed_round():
    stop = threading.Event()

    class Flaky(_FakePopulation):
        def run_round(self):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("a phone fell in the river")
            stop.set()
            return _report(2, "done")

    pop = Flaky([])
    demo._rounds_forever(pop, stop, every_s=0.0)
    assert pop.calls == 2 and stop.is_set()


def test_demo_population_is_small_and_over_http():
    cfg = demo.demo_population()
    assert (cfg.devices, cfg.cohort_size, cfg.transport) == (40, 8, "http")
    assert cfg.typing == 3 and demo.ROUND_EVERY_S == 45.0
    assert demo.DEMO_NOISE_MULTIPLIER == 1.0 and demo.DEMO_EPSILON_LIMIT == 10.0
