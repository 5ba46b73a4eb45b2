"""Population simulator: many phones, each one federated chitchat user, in synchronous rounds.

Every simulated device is the real device code: its user's messages are committed into its
own sealed store (`keyboard.device.Device`), it trains its device part with the LiteRT `train`
signature (`Device.train_if_eligible`), and takes part in SecAgg+ rounds with the real client
(`keyboard.contribute.contribute`) through a transport: HTTP to a running coordinator
(`keyboard.transport.Transport`, the default) or the in-process `InProcessTransport`, which
calls the coordinator's functions directly (same protocol code, no sockets, for large N).

Text arrives over time: by round r a user has typed the first (r+1)/typing_rounds of their
messages. A device joins a round it is sampled for only if it has at least `min_new_words` new
words to learn from (otherwise it sits the round out, like a phone that is not idle and
charging); before joining it checks in and installs the current global version. Dropouts are
drawn per stage, and stragglers (`keyboard.sim_clock.SpeedProfile`) whose simulated training
time misses the masked-input deadline go silent at MaskedInput. The simulator is the operator:
it opens each round in-process (`coordinator.rounds.open_round`) and, once every device that
is going to answer a stage has answered, closes the stage at once (`coordinator.rounds.
close_stage`) instead of waiting for the stage timeout in real time; the simulated clock is
charged the timeout instead (`keyboard.sim_clock.sync_round`).

Only devices sampled into a round are opened (a LiteRT interpreter each), so memory scales
with the cohort, not the population. A buffered (FedBuff) mode would replace `run_round`'s
"open, wait for the cohort, close" with a loop feeding ready devices' updates to the
coordinator's buffered rounds, using the same device preparation (`_prepare`) and the
per-device training times of `keyboard.sim_clock`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from sqlalchemy import select

from coordinator import db, rounds
from coordinator.config import CoordinatorConfig
from coordinator.errors import Conflict
from coordinator.service import Coordinator
from keyboard import sim_clock
from keyboard.contribute import STAGES, RoundOutcome, contribute
from keyboard.device import Device, DeviceConfig
from keyboard.sim_clock import SimClock, SpeedProfile
from keyboard.sim_transport import InProcessTransport
from keyboard.transport import Transport
from model import data, pipeline
from model.vocab import Vocabulary, build_vocabulary
from secagg.config import DPConfig, SecAggConfig

__all__ = [
    "PopulationConfig",
    "RoundReport",
    "Population",
    "coordinator_config",
    "federated_users",
    "format_reports",
    "running_population",
    "simulate",
]

log = logging.getLogger(__name__)

# The stage after which a device goes silent, for a dropout drawn at each stage.
_SILENT_AFTER = {
    "share_keys": "advertise",
    "masked_input": "share_keys",
    "consistency": "masked_input",
    "unmasking": "consistency",
}
ALL_STAGES = ("advertise", *STAGES)


@dataclass(frozen=True)
class PopulationConfig:
    """One simulated population and how its rounds run."""

    devices: int = 822  # federated users simulated (at most all of them)
    cohort_size: int = 30  # devices a round asks for (over-selected by `overselect`)
    overselect: float = 0.3
    rounds: int = 15
    transport: Literal["http", "inprocess"] = "http"
    speed: SpeedProfile = field(default_factory=SpeedProfile)
    # Probability that a device goes silent at each stage (before sending that stage's
    # message); "advertise" also covers sampled phones that are offline.
    dropout: dict[str, float] = field(
        default_factory=lambda: {
            "advertise": 0.05,
            "share_keys": 0.0,
            "masked_input": 0.05,
            "consistency": 0.0,
            "unmasking": 0.0,
        }
    )
    # "sync": the coordinator samples a cohort per round and waits for it; "buffered"
    # (FedBuff): `concurrency` devices train at once (None: as many as a sync round asks)
    # and a round opens as soon as `buffer_size` are ready (keyboard.sim_buffered).
    round_mode: Literal["sync", "buffered"] = "sync"
    buffer_size: int = 10
    concurrency: int | None = None
    # Simulated seconds a synchronous round waits for masked inputs, and for other stages.
    masked_deadline_s: float = 4.0
    stage_timeout_s: float = 10.0
    typing_rounds: int | None = None  # text arrives over this many rounds (None: `rounds`)
    min_new_words: int = 20  # new words a device needs before it trains and joins a round
    local_epochs: int = 1
    optimizer: str = "sgd"  # the phones' optimiser (keyboard.device.DeviceConfig)
    lr: float = 0.5  # the phones' constant rate (bench/client_optimizer)
    data_preset: str = "default"
    seed: int = 0
    poll_s: float = 0.05  # devices poll the coordinator this often (real seconds)
    round_timeout_s: float = 300.0  # real seconds a device waits for a round at most

    def __post_init__(self) -> None:
        if self.devices < 2 or self.cohort_size < 2 or self.rounds < 0:
            raise ValueError("devices and cohort_size must be >= 2, rounds >= 0")
        if self.transport not in ("http", "inprocess"):
            raise ValueError(f"transport must be 'http' or 'inprocess', got {self.transport!r}")
        if self.round_mode not in ("sync", "buffered"):
            raise ValueError(f"round_mode must be 'sync' or 'buffered', got {self.round_mode!r}")
        if self.round_mode == "buffered" and not 2 <= self.buffer_size <= self.cohort_size:
            raise ValueError(f"buffer_size must be in [2, cohort_size], got {self.buffer_size}")
        bad = set(self.dropout) - set(ALL_STAGES)
        if bad or not all(0 <= p < 1 for p in self.dropout.values()):
            raise ValueError(f"dropout: stages {ALL_STAGES} with probabilities in [0, 1)")

    @property
    def in_flight(self) -> int:
        """Buffered mode: devices training at once."""
        return self.concurrency or math.ceil(self.cohort_size * (1 + self.overselect))

    @property
    def typing(self) -> int:
        return max(1, self.typing_rounds or self.rounds)

    @staticmethod
    def default() -> PopulationConfig:
        return PopulationConfig()

    @staticmethod
    def tiny() -> PopulationConfig:
        """For tests: 6 devices, cohorts of 4, 2 rounds, a few dropouts, over HTTP."""
        return PopulationConfig(
            devices=6,
            cohort_size=4,
            overselect=0.5,
            rounds=2,
            min_new_words=5,
            data_preset="tiny",
            dropout={"advertise": 0.0, "masked_input": 0.2},
            poll_s=0.02,
            round_timeout_s=120.0,
        )


@dataclass
class RoundReport:
    """What one round did, on both clocks."""

    round_id: int
    status: str  # done / aborted
    version: int | None  # the version it produced
    cohort: int  # devices the coordinator sampled
    joined: int  # devices that advertised keys
    declined: int  # sampled but offline or nothing new to learn from
    dropped: int  # joined, then went silent (random dropouts and late stragglers)
    late: int  # stragglers whose training missed the masked-input deadline
    contributors: int  # devices whose update is in the sum
    train_steps: int  # local LiteRT training steps, all devices
    upload_bytes: float  # mean bytes a contributing device sent in the round (all stages)
    masked_bytes: float  # mean size of one masked input
    sim_seconds: float  # simulated duration of the round
    sim_time: float  # simulated clock at the end of the round
    wall_seconds: float  # real time this machine took
    reason: str | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def federated_users(preset: str) -> dict[str, list[str]]:
    """The federated split's users and their messages (chronological, capped)."""
    return data.load_chitchat(pipeline.data_config(preset))["federated"]


def coordinator_config(
    cfg: PopulationConfig, data_dir: Path, dp: DPConfig | None = None, **overrides
) -> CoordinatorConfig:
    """A coordinator fit for the population: cohort, field width and dropout tolerance."""
    asked = math.ceil(cfg.cohort_size * (1 + cfg.overselect))
    silent = sum(cfg.dropout.values()) + cfg.speed.straggler_share / 2
    secagg = SecAggConfig(
        max_cohort=max(16, asked),
        expected_dropout=min(0.45, max(0.15, silent)),
    )
    base = CoordinatorConfig(
        port=0,
        data_dir=Path(data_dir),
        eval_preset="tiny" if cfg.data_preset == "tiny" else "default",
        eval_targets=50 if cfg.data_preset == "tiny" else 2_000,
        round_cohort_size=cfg.cohort_size,
        round_overselect=cfg.overselect,
        round_mode=cfg.round_mode,
        round_buffer_size=cfg.buffer_size,
        # Real timeouts only for devices the simulator does not drive (e.g. the demo's phone).
        round_stage_timeout_s=60.0,
        round_masked_input_timeout_s=120.0,
        rate_per_second=1e4,
        rate_burst=10_000,
        secagg=secagg,
        dp=dp,
    )
    return dataclasses.replace(base, **overrides)


@dataclass
class _Sim:
    """The simulator's view of one device (its data stays in its own sealed store)."""

    name: str
    messages: list[str]
    slowdown: float
    delivered: int = 0  # messages typed so far


@dataclass
class _Member:
    sim: _Sim
    device: Device
    transport: Transport
    steps: int
    train_s: float
    stop_after: str | None  # None: answers every stage


class Population:
    """N simulated phones against one coordinator (`coord`, in this process)."""

    def __init__(
        self,
        cfg: PopulationConfig,
        coord: Coordinator,
        data_dir: Path,
        url: str | None = None,
        vocab: Vocabulary | None = None,
        users: dict[str, list[str]] | None = None,
    ) -> None:
        if cfg.transport == "http" and url is None:
            raise ValueError("the http transport needs the coordinator's URL")
        self.cfg, self.coord, self.url = cfg, coord, url
        self.dir = Path(data_dir)
        self.vocab = vocab or build_vocabulary(coord.config.vocab_size)
        self.rng = np.random.default_rng(cfg.seed)
        self.clock = SimClock()
        users = users if users is not None else federated_users(cfg.data_preset)
        names = sorted(users)
        if len(names) < 2:
            raise ValueError(f"only {len(names)} federated users in preset {cfg.data_preset!r}")
        pick = sorted(self.rng.choice(len(names), min(cfg.devices, len(names)), replace=False))
        slow = sim_clock.slowdowns(len(pick), cfg.speed, self.rng)
        self.sims = [
            _Sim(f"sim-{i:04d}", list(users[names[j]]), float(slow[i])) for i, j in enumerate(pick)
        ]
        self.by_name = {s.name: s for s in self.sims}
        self.round_index = 0
        self._state = self.dir / "population.json"
        self._load_state()

    # -- persistent simulator state (a second demo run carries on) ----------------------
    def _load_state(self) -> None:
        if self._state.exists():
            st = json.loads(self._state.read_text())
            self.round_index = int(st["round_index"])
            self.clock.advance(float(st["sim_time"]))
            for name, n in st["delivered"].items():
                if name in self.by_name:
                    self.by_name[name].delivered = int(n)

    def _save_state(self) -> None:
        st = {
            "round_index": self.round_index,
            "sim_time": self.clock.now(),
            "delivered": {s.name: s.delivered for s in self.sims},
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        self._state.write_text(json.dumps(st))

    # -- devices --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _open(self, sim: _Sim) -> Iterator[tuple[Device, Transport]]:
        dev = Device.open(
            DeviceConfig(
                self.dir / "devices" / sim.name,
                min_new_words=self.cfg.min_new_words,
                local_epochs=self.cfg.local_epochs,
                optimizer=self.cfg.optimizer,
                lr=self.cfg.lr,
            ),
            self.vocab,
        )
        if self.cfg.transport == "inprocess":
            tr: Transport = InProcessTransport(dev, self.coord)
        else:
            tr = Transport(dev, self.url, timeout=self.cfg.round_timeout_s)
        try:
            yield dev, tr
        finally:
            tr.close()

    def enrol(self, progress: bool = False) -> int:
        """Enrol every device not enrolled yet (a sealed identity each); returns how many."""
        from tqdm import tqdm

        new = 0
        for sim in tqdm(self.sims, desc="enrolling devices", disable=not progress, leave=False):
            with self._open(sim) as (_, tr):
                if tr.credentials is None:
                    tr.enrol(sim.name)
                    new += 1
        return new

    def _type(self, sim: _Sim, dev: Device) -> None:
        """Commit the messages this user has typed by now into the device's store."""
        want = math.ceil(len(sim.messages) * min(1.0, (self.round_index + 1) / self.cfg.typing))
        for m in sim.messages[sim.delivered : want]:
            dev.commit(m)
        sim.delivered = max(sim.delivered, want)

    def _prepare(self, sim: _Sim, stack: contextlib.ExitStack) -> _Member | None:
        """Type, check in, train: a member ready to contribute, or None if it sits out."""
        cfg, rng = self.cfg, self.rng
        if rng.random() < cfg.dropout.get("advertise", 0.0):
            return None  # offline when sampled
        dev, tr = stack.enter_context(self._open(sim))
        self._type(sim, dev)
        if not dev.history.eligible(cfg.min_new_words):
            return None
        tr.update()  # the round is for the current global version
        got = dev.train_if_eligible(True, np.random.default_rng(rng.integers(1 << 63)))
        steps = got["steps"] if got else 0
        train_s = sim_clock.training_seconds(steps, sim.slowdown, cfg.speed)
        stop = self._draw_stop()
        if train_s + cfg.speed.latency_s > cfg.masked_deadline_s and (
            stop is None or ALL_STAGES.index(stop) > ALL_STAGES.index("share_keys")
        ):
            stop = "share_keys"  # still training at the deadline
        return _Member(sim, dev, tr, steps, train_s, stop)

    # -- one round ------------------------------------------------------------------------
    def _members(self, rid: int) -> list[str]:
        with self.coord.db.transaction() as s:
            m = s.scalars(select(db.Round.members).where(db.Round.id == rid)).one()
        return sorted(m["devices"].values())

    def run_round(self) -> RoundReport:
        t0 = time.monotonic()
        rid = self._open_round()
        sampled = self._members(rid)
        with contextlib.ExitStack() as stack:
            members = []
            for name in sampled:
                sim = self.by_name.get(name)
                member = self._prepare(sim, stack) if sim is not None else None
                if member is not None:
                    members.append(member)
            outcomes = self._contribute(rid, members)
        on_time = {m.sim.name: m.train_s for m in members
                   if m.stop_after is None or ALL_STAGES.index(m.stop_after) >= 2}  # fmt: skip
        return self._finish_round(rid, t0, sampled, members, outcomes, on_time)

    def _draw_stop(self) -> str | None:
        """The stage after which a member goes silent (a dropout drawn per stage), or None."""
        for stage in STAGES:
            if self.rng.random() < self.cfg.dropout.get(stage, 0.0):
                return _SILENT_AFTER[stage]
        return None

    def _finish_round(
        self, rid: int, t0: float, cohort: list[str], members: list[_Member],
        outcomes: list[RoundOutcome], train_s: dict[str, float],
    ) -> RoundReport:  # fmt: skip
        """Charge the simulated clock for a finished round (`train_s`: the training time of
        each member that means to send its masked input), save the simulator's state and
        report the round; shared by synchronous and buffered rounds."""
        cfg = self.cfg
        st = rounds.status(self.coord, rid)
        silent_at = {"advertise"} if len(members) < len(cohort) else set()
        for m in members:
            if m.stop_after is not None:
                silent_at.add(ALL_STAGES[ALL_STAGES.index(m.stop_after) + 1])
        timing = sim_clock.sync_round(
            train_s, silent_at, cfg.speed, cfg.masked_deadline_s, cfg.stage_timeout_s
        )
        self.clock.advance(timing.seconds)
        self.round_index += 1
        self._save_state()
        ok = [o for o, m in zip(outcomes, members, strict=True) if m.stop_after is None]
        done = st["status"] == "done"
        report = RoundReport(
            round_id=rid,
            status=st["status"],
            version=st["result_version"],
            cohort=len(cohort),
            joined=len(members),
            declined=len(cohort) - len(members),
            dropped=sum(m.stop_after is not None for m in members),
            late=len(timing.late),
            contributors=len(ok) if done else 0,
            train_steps=sum(m.steps for m in members),
            upload_bytes=float(np.mean([o.bytes_up for o in ok])) if ok else 0.0,
            masked_bytes=float(np.mean([o.masked_input_bytes for o in ok])) if ok else 0.0,
            sim_seconds=timing.seconds,
            sim_time=self.clock.now(),
            wall_seconds=time.monotonic() - t0,
            reason=st["reason"],
        )
        log.info("round %d: %s", rid, report)
        return report

    def _open_round(self) -> int:
        rng = np.random.default_rng(self.rng.integers(1 << 63))
        while True:
            try:
                return rounds.open_round(self.coord, rng)
            except Conflict:  # a round someone else opened is still running
                time.sleep(1.0)

    def _contribute(self, rid: int, members: list[_Member]) -> list[RoundOutcome]:
        """Every member's real secagg client in its own thread; the stages close as soon as
        everyone who will answer has answered (the simulator's fast-forward of timeouts)."""
        sent: Counter[str] = Counter()
        lock = threading.Lock()
        expect = Counter()
        for m in members:
            last = len(ALL_STAGES) - 1 if m.stop_after is None else ALL_STAGES.index(m.stop_after)
            for stage in ALL_STAGES[: last + 1]:
                expect[stage] += 1
        outcomes: list[RoundOutcome | None] = [None] * len(members)
        errors: list[BaseException] = []

        def counting(send: Callable[..., dict]) -> Callable[..., dict]:
            def wrapped(round_id: int, stage: str, message: bytes) -> dict:
                out = send(round_id, stage, message)
                with lock:
                    sent[stage] += 1
                return out

            return wrapped

        seeds = self.rng.integers(1 << 63, size=len(members))  # drawn here: threads race

        def run(i: int, m: _Member) -> None:
            m.transport.round_send = counting(m.transport.round_send)
            try:
                outcomes[i] = contribute(
                    m.device, m.transport, np.random.default_rng(seeds[i]),
                    self.cfg.round_timeout_s, self.cfg.poll_s, stop_after=m.stop_after,
                )  # fmt: skip
            except BaseException as e:  # reported below; the round itself carries on
                errors.append(e)
                outcomes[i] = RoundOutcome(rid, "error", 0, 0, None, repr(e))

        threads = [
            threading.Thread(target=run, args=(i, m), name=f"sim-{m.sim.name}", daemon=True)
            for i, m in enumerate(members)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + self.cfg.round_timeout_s
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            st = rounds.status(self.coord, rid)
            if st["status"] != "running":
                time.sleep(self.cfg.poll_s)
                continue
            stage = st["stage"]
            with lock:
                all_in = sent[stage] >= expect[stage]
            if all_in:
                rounds.close_stage(self.coord, rid, None, stage)
            time.sleep(self.cfg.poll_s)
        if not members or rounds.status(self.coord, rid)["status"] == "running":
            # Nobody will answer any more: close what is left (it aborts below threshold).
            for _ in ALL_STAGES:
                stage = rounds.status(self.coord, rid)["stage"]
                if rounds.status(self.coord, rid)["status"] != "running":
                    break
                rounds.close_stage(self.coord, rid, None, stage)
        for t in threads:
            t.join(timeout=30)
        for e in errors:
            log.warning("a simulated device failed in round %d: %r", rid, e)
        return [o or RoundOutcome(rid, "error", 0, 0, None, "no outcome") for o in outcomes]

    def run(
        self, n_rounds: int | None = None, progress: bool = True,
        on_round: Callable[[RoundReport], None] | None = None,
    ) -> list[RoundReport]:  # fmt: skip
        """Run rounds one after another; `on_round` sees each report as it lands."""
        from tqdm import tqdm

        step = self.run_round
        if self.cfg.round_mode == "buffered":
            from keyboard.sim_buffered import BufferedSimulation

            step = BufferedSimulation(self, self.cfg.in_flight).run_round
        reports = []
        n = self.cfg.rounds if n_rounds is None else n_rounds
        bar = tqdm(range(n), desc="rounds", disable=not progress, unit="round")
        for _ in bar:
            r = step()
            reports.append(r)
            bar.set_postfix(
                status=r.status, version=r.version, contributors=r.contributors,
                sim_min=f"{r.sim_time / 60:.1f}",
            )  # fmt: skip
            if on_round is not None:
                on_round(r)
        return reports


@contextlib.contextmanager
def running_population(
    cfg: PopulationConfig,
    data_dir: Path,
    coord_cfg: CoordinatorConfig | None = None,
    users: dict[str, list[str]] | None = None,
    progress: bool = False,
) -> Iterator[tuple[Population, str | None]]:
    """A coordinator (SQLite under `data_dir/coordinator`, served over HTTP when the transport
    is http) and an enrolled population; yields (population, URL or None)."""
    from coordinator.server import running

    data_dir = Path(data_dir)
    coord_cfg = coord_cfg or coordinator_config(cfg, data_dir / "coordinator")
    coord = Coordinator.open(coord_cfg)
    try:
        with contextlib.ExitStack() as stack:
            url = None
            if cfg.transport == "http":
                url, _ = stack.enter_context(running(coord_cfg, coord))
            pop = Population(cfg, coord, data_dir / "population", url, users=users)
            pop.enrol(progress)
            yield pop, url
    finally:
        coord.close()


def simulate(cfg: PopulationConfig, data_dir: Path, progress: bool = True) -> list[RoundReport]:
    """`sotto simulate`: a coordinator and the population in one process, `cfg.rounds` rounds."""
    with running_population(cfg, data_dir, progress=progress) as (pop, _):
        return pop.run(progress=progress)


def format_reports(reports: list[RoundReport]) -> str:
    """A Markdown table of the rounds (what `sotto simulate` prints)."""
    rows = [
        "| round | status | version | sampled | joined | dropped (late) | contributors "
        "| upload B/device | simulated s | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        rows.append(
            f"| {r.round_id} | {r.status} | {r.version or ''} | {r.cohort} | {r.joined} "
            f"| {r.dropped} ({r.late}) | {r.contributors} | {r.upload_bytes:,.0f} "
            f"| {r.sim_seconds:.1f} | {r.wall_seconds:.1f} |"
        )
    return "\n".join(rows)
