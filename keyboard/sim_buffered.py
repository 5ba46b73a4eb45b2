"""Buffered (FedBuff) rounds for the population simulator, on the simulated clock.

FedBuff (Nguyen et al. 2022) keeps `concurrency` devices training at any time, each from the
version it fetched when it started; a device that finishes reports ready, and the coordinator
opens a SecAgg+ round as soon as `round_buffer_size` are ready (`coordinator.buffered`), so
nobody waits for stragglers. Slow devices finish later and join a later round, their update
weighted down by its staleness.

Events are ordered by simulated finish time: a device starting at time t with training time s
(`keyboard.sim_clock.training_seconds`, its own speed) is ready at t + s + one round trip. The
simulator pops finishers in that order, each reports ready with the real device code through
the population's transport, and the report that fills the buffer opens the round, which the
members then run exactly as in synchronous mode (`Population._contribute`); the round's
protocol stages cost the same simulated time as in `keyboard.sim_clock.sync_round` with no one
still training. A device whose update became too stale to be accepted trains again from the
current version. Devices that contributed (or dropped) rejoin the pool of idle devices, and
new ones are started until `concurrency` are training again.
"""

from __future__ import annotations

import contextlib
import heapq
import time
from dataclasses import dataclass

import numpy as np

from keyboard import contribute, sim_clock
from keyboard.device import Device
from keyboard.population import (
    Population,
    RoundReport,
    _Member,
    _Sim,
)
from keyboard.transport import Transport, TransportError

__all__ = ["BufferedSimulation"]


@dataclass(order=True)
class _Training:
    finish: float  # simulated time the device is ready
    name: str
    steps: int = 0
    train_s: float = 0.0


class BufferedSimulation:
    """Runs `pop`'s devices in buffered rounds against its (buffered-mode) coordinator."""

    def __init__(self, pop: Population, concurrency: int) -> None:
        if pop.coord.config.round_mode != "buffered":
            raise ValueError("BufferedSimulation needs a coordinator in round_mode 'buffered'")
        if concurrency < pop.coord.config.round_buffer_size:
            raise ValueError("concurrency must be at least the buffer size")
        self.pop, self.concurrency = pop, concurrency
        self.training: list[_Training] = []  # a heap by finish time
        self.busy: set[str] = set()

    # -- devices start training -----------------------------------------------------------
    def _start(self, sim: _Sim) -> bool:
        """Start `sim` training; False if it has nothing new to learn from."""
        with self.pop._open(sim) as (dev, tr):
            self.pop._type(sim, dev)
            if not dev.history.eligible(self.pop.cfg.min_new_words):
                return False
            return self._train(sim, dev, tr)

    def _train(self, sim: _Sim, dev: Device, tr: Transport) -> bool:
        """Fetch the current version and train (really, with LiteRT); schedule the device's
        ready time on the simulated clock."""
        pop = self.pop
        tr.update()
        got = dev.train(np.random.default_rng(pop.rng.integers(1 << 63)))
        if got is None:
            return False
        train_s = sim_clock.training_seconds(got["steps"], sim.slowdown, pop.cfg.speed)
        finish = pop.clock.now() + train_s + pop.cfg.speed.latency_s
        heapq.heappush(self.training, _Training(finish, sim.name, got["steps"], train_s))
        self.busy.add(sim.name)
        return True

    def _fill(self) -> None:
        """Start idle devices (in random order) until `concurrency` are training."""
        pop = self.pop
        idle = [s for s in pop.sims if s.name not in self.busy]
        for i in pop.rng.permutation(len(idle)):
            if len(self.busy) >= self.concurrency:
                return
            if pop.rng.random() < pop.cfg.dropout.get("advertise", 0.0):
                continue  # offline when asked to train
            self._start(idle[i])

    # -- one buffered round ---------------------------------------------------------------
    def run_round(self) -> RoundReport:
        pop = self.pop
        t0 = time.monotonic()
        self._fill()
        if not self.training:
            raise RuntimeError("no device has anything to learn from: nothing can train")
        with contextlib.ExitStack() as stack:
            waiting: dict[str, tuple[_Training, Device, Transport]] = {}
            rid = None
            while rid is None:
                if not self.training:
                    raise RuntimeError("the buffer cannot fill: too few devices can train")
                job = heapq.heappop(self.training)
                pop.clock.advance(max(0.0, job.finish - pop.clock.now()))
                sim = pop.by_name[job.name]
                dev, tr = stack.enter_context(pop._open(sim))
                try:
                    answer = contribute.report_ready(tr, dev.version)
                except TransportError as e:
                    if e.status != 409:
                        raise
                    # Too stale: learn again from the current version (if that run fails, the
                    # device is idle again and may be started later).
                    self.busy.discard(sim.name)
                    self._train(sim, dev, tr)
                    continue
                waiting[sim.name] = (job, dev, tr)
                rid = answer["round_id"]
            members = []
            cohort = pop._members(rid)
            for name in cohort:
                job, dev, tr = waiting[name]
                members.append(
                    _Member(pop.by_name[name], dev, tr, job.steps, job.train_s, pop._draw_stop())
                )
            outcomes = pop._contribute(rid, members)
        for name in cohort:
            self.busy.discard(name)
        # Members finished training before the round opened: no one is waited for.
        return pop._finish_round(rid, t0, cohort, members, outcomes, dict.fromkeys(cohort, 0.0))
