"""The phone's background work: learn when idle and charging, contribute, keep the model fresh.

A phone does not ask its user before it learns: when the (simulated) idle-and-charging
condition holds and enough new text has been typed, it trains its device part locally and
marks the update as waiting to be contributed (`Device.pending_contribution`, persisted). When
the coordinator puts it in a round it takes part through the secure-aggregation client
(`keyboard.contribute`); until then, and for as long as the coordinator is unreachable, the
update simply waits (across restarts too) and the keyboard keeps predicting and learning.
Network failures back off exponentially; the UI shows the connection state and what waits.

`Background.tick` is one step, safe to call from a test with a fake clock; `run` loops it in a
thread of the device process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import httpx
import numpy as np

from keyboard import contribute
from keyboard.device import Device
from keyboard.transport import Transport, TransportError

__all__ = ["Connection", "Background"]

log = logging.getLogger(__name__)


@dataclass
class Connection:
    """What the UI shows about the coordinator."""

    state: str = "unknown"  # online, offline, or none (no coordinator configured)
    last_error: str | None = None
    last_contact: float | None = None  # time of the last answered request
    retry_at: float = 0.0  # no request before this time (backoff while offline)
    backoff_s: float = 0.0
    last_round: dict | None = None  # outcome of the last round taken part in


class Background:
    """One phone's background worker over its `Device` and (optional) `Transport`."""

    def __init__(
        self,
        device: Device,
        transport: Transport | None,
        rng: np.random.Generator,
        clock: Callable[[], float] = time.time,
        check_every_s: float = 15.0,  # how often to ask for a new global version
        round_timeout_s: float = 180.0,  # longest wait inside one round
        max_backoff_s: float = 60.0,
    ) -> None:
        self.device, self.transport, self.rng, self.clock = device, transport, rng, clock
        self.check_every_s, self.round_timeout_s = check_every_s, round_timeout_s
        self.max_backoff_s = max_backoff_s
        self.connection = Connection(state="none" if transport is None else "unknown")
        self._next_check = 0.0
        self._reported: int | None = None  # version last reported ready (buffered rounds)

    def status(self) -> dict:
        """For the UI: connection state and whether an update waits to be contributed."""
        c = asdict(self.connection)
        c["pending_contribution"] = self.device.pending_contribution
        return c

    # -- one step -------------------------------------------------------------------------
    def tick(self) -> list[str]:
        """Do what is due now; returns what happened (for logs and tests)."""
        d, did = self.device, []
        if not d.on_device:
            return did  # cloud mode: no local learning, nothing to contribute
        if d.train_if_eligible(d.idle_and_charging, self.rng) is not None:
            did.append("trained")
        if self.transport is None or self.clock() < self.connection.retry_at:
            return did
        try:
            did += self._talk()
        except (httpx.HTTPError, OSError) as e:
            self._offline(f"coordinator unreachable: {e}")
            did.append("offline")
        except TransportError as e:
            if e.status < 500 and e.status != 429:
                raise  # our request was wrong: a bug to see, not a network to wait for
            self._offline(str(e))
            did.append("offline")
        return did

    def _talk(self) -> list[str]:
        d, t, did = self.device, self.transport, []
        assert t is not None
        now = self.clock()
        if now >= self._next_check:
            if t.update():
                did.append(f"installed v{d.version}")
            self._next_check = now + self.check_every_s
            self._online()
        pending = d.pending_contribution
        if pending is not None and pending != d.version:
            # The global model moved on while the update waited: it was computed against an
            # older version, so learn the same text again from the new one (nothing is lost).
            if d.idle_and_charging and d.train(self.rng) is not None:
                did.append("retrained")
            return did
        if pending is None or not d.idle_and_charging:
            return did
        if pending and self._reported != pending:  # version 0 is the shipped model
            did += self._report_ready(pending)
        task = t.round_task()
        self._online()
        if task["round_id"] is None or task["stage"] != "advertise":
            return did  # not (yet) in a round's cohort: the update keeps waiting
        outcome = contribute.contribute(d, t, self.rng, timeout_s=self.round_timeout_s)
        self.connection.last_round = asdict(outcome)
        if outcome.status == "done":
            d.set_pending_contribution(None)
            self._reported = None
        log.info("round %s: %s (%s)", outcome.round_id, outcome.status, outcome.reason or "ok")
        did.append(f"round {outcome.status}")
        return did

    def _report_ready(self, version: int) -> list[str]:
        """Buffered rounds (FedBuff): say which version the waiting update was trained from.
        A synchronous coordinator answers 409 and samples its cohort itself; that is fine."""
        assert self.transport is not None
        try:
            contribute.report_ready(self.transport, version)
        except TransportError as e:
            if e.status != 409:
                raise
            self._reported = version  # sync mode, or already waiting: nothing more to say
            return []
        self._reported = version
        return ["ready"]

    def _online(self) -> None:
        c = self.connection
        c.state, c.last_error, c.last_contact, c.backoff_s = "online", None, self.clock(), 0.0

    def _offline(self, why: str) -> None:
        c = self.connection
        if c.state != "offline":
            log.warning("%s: working offline, contributions wait", why)
        c.backoff_s = min(self.max_backoff_s, max(2.0, 2 * c.backoff_s))
        c.state, c.last_error, c.retry_at = "offline", why, self.clock() + c.backoff_s

    # -- the loop -------------------------------------------------------------------------
    def run(self, stop: threading.Event, interval_s: float = 2.0) -> None:
        """Tick until `stop` is set; an unexpected error is logged and the loop goes on."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # a bug in one step must not silently end background learning
                log.exception("background step failed")
            stop.wait(interval_s)

    def start(self, interval_s: float = 2.0) -> tuple[threading.Thread, threading.Event]:
        stop = threading.Event()
        thread = threading.Thread(
            target=self.run, args=(stop, interval_s), name="keyboard-background", daemon=True
        )
        thread.start()
        return thread, stop
