"""The demo: a coordinator, a simulated population in rounds, your keyboard, and the dashboard.

Pretrains the base and exports its LiteRT file first if they are missing (both ship in
`assets/`). Under one data directory (default `runs/`): the coordinator's SQLite database and
model files in `coordinator/`, the simulated phones' sealed stores in `population/`, your
phone's store in `phone/`. A second run reuses all of them and carries on. In the background the
population (`keyboard.population`, over HTTP) runs a synchronous SecAgg+ round with central DP
every `ROUND_EVERY_S` seconds; the dashboard (Streamlit, a child process) shows the versions it
makes. Your phone installs the newest version when the demo starts. Ctrl-C stops everything.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import subprocess
import threading
import time
from pathlib import Path

from coordinator.server import running
from coordinator.service import Coordinator
from keyboard import serve
from model import export, paths, pipeline
from secagg.config import DPConfig

__all__ = [
    "DEMO_NOISE_MULTIPLIER",
    "ROUND_EVERY_S",
    "demo_population",
    "ensure_model",
    "run",
]

log = logging.getLogger(__name__)

# Central DP noise of the demo's rounds (z: noise std = z x clip norm on the sum); the
# privacy-utility curve of bench/federated includes this level.
DEMO_NOISE_MULTIPLIER = 1.0
DEMO_EPSILON_LIMIT = 10.0  # the population pauses once a round would exceed it
# A small clip keeps the noise small in absolute terms (std z x clip on the sum), so a cohort
# of ~10 cannot wreck the model your phone installs; it also caps how much a round can move it
# (bench/federated: at this population size DP at a useful epsilon costs the whole gain).
DEMO_CLIP_NORM = 0.05
ROUND_EVERY_S = 45.0  # a round starts this long after the previous one started (or ends)


def ensure_model(base: Path) -> None:
    if not pipeline.has_checkpoint(base):
        print(f"No pretrained base in {base}: pretraining on public users first (a few minutes).")
        pipeline.pretrain(
            base,
            pipeline.data_config("default"),
            pipeline.model_config("default"),
            pipeline.pretrain_config("default"),
        )
    if not paths.BASE_TFLITE.exists():
        print("Exporting the base to LiteRT (the model the phone runs).")
        export.export_checkpoint(base, paths.BASE_TFLITE)


def demo_population():
    """The demo's population: 40 phones over HTTP, cohorts of 8, text arriving over 3 rounds."""
    from keyboard.population import PopulationConfig

    return dataclasses.replace(
        PopulationConfig.default(),
        devices=40,
        cohort_size=8,
        rounds=40,
        overselect=0.6,  # phones with too little new text sit rounds out
        typing_rounds=3,  # a third of each user's text is there at the start
        min_new_words=10,
        transport="http",
        poll_s=0.2,
    )


def _rounds_forever(pop, stop: threading.Event, every_s: float) -> None:
    """Run rounds until `stop`; pause for good once the privacy budget is spent."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            r = pop.run_round()
        except Exception:  # keep the demo up; the next round may well work
            if stop.is_set():  # Ctrl-C: the coordinator went away under the round
                return
            log.exception("simulated round failed")
        else:
            print(
                f"[population] round {r.round_id}: {r.status}"
                + (f", version {r.version}" if r.version else f" ({r.reason})")
                + f", {r.contributors} of {r.cohort} sampled phones contributed",
                flush=True,
            )
            if r.status == "aborted" and "budget" in (r.reason or ""):
                print("[population] privacy budget spent: no more rounds.", flush=True)
                return
        stop.wait(max(1.0, every_s - (time.monotonic() - started)))


def run(
    base: Path,
    phone_dir: Path,
    host: str = "127.0.0.1",
    port: int = 8600,
    coord_port: int = 8470,
    dashboard_port: int = 8501,
    data_dir: Path | None = None,
    with_population: bool = True,
    with_dashboard: bool = True,
    every_s: float = ROUND_EVERY_S,
) -> None:
    from dashboard import launch
    from keyboard.population import Population, coordinator_config

    ensure_model(base)
    data_dir = Path(data_dir or Path(phone_dir).parent)  # runs/ by default
    pcfg = demo_population()
    asked = math.ceil(pcfg.cohort_size * (1 + pcfg.overselect))
    dp = DPConfig(
        noise_multiplier=DEMO_NOISE_MULTIPLIER,
        delta=1e-5,
        sampling_probability=min(1.0, asked / pcfg.devices),
        epsilon_limit=DEMO_EPSILON_LIMIT,
    )
    cfg = coordinator_config(
        pcfg, data_dir / "coordinator", dp=dp, host=host, port=coord_port, eval_targets=500,
        # Plain FedAvg: the DP noise dominates each release, and FedAdam would turn it into
        # full-size steps on every coordinate; FedAvg adds it unamplified.
        server_optimizer="sgd", server_learning_rate=1.0, server_momentum=0.0,
    )  # fmt: skip
    cfg = dataclasses.replace(cfg, secagg=dataclasses.replace(cfg.secagg, clip_norm=DEMO_CLIP_NORM))
    for name in ("uvicorn.access", "coordinator.app", "keyboard.device", "keyboard.population"):
        logging.getLogger(name).setLevel(logging.WARNING)  # the demo prints what matters
    coordinator = Coordinator.open(cfg)
    stop = threading.Event()
    dash = bg = None
    try:
        with running(cfg, coordinator) as (url, _):
            print(
                f"Coordinator: {url}  (API docs {url}/docs, database {coordinator.db.describe()})"
            )
            if with_population:
                print(f"Population:  enrolling {pcfg.devices} simulated phones ...", flush=True)
                pop = Population(pcfg, coordinator, data_dir / "population", url)
                pop.enrol()
                bg = threading.Thread(
                    target=_rounds_forever, args=(pop, stop, every_s), name="population",
                    daemon=True,
                )  # fmt: skip
                bg.start()
                print(
                    f"Population:  {pcfg.devices} phones, rounds of {asked} every {every_s:.0f} s"
                )
            if with_dashboard:
                dash = subprocess.Popen(
                    launch.command(host, dashboard_port),
                    env=launch.environment(cfg.db_url),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                print(f"Dashboard:   http://{host}:{dashboard_port}/")
            print(f"Keyboard:    http://{host}:{port}/  <- open this in a browser (Ctrl-C: stop)")
            try:
                serve.serve(phone_dir, host, port, url)
            finally:
                stop.set()  # before the coordinator stops: the round in flight gives up quietly
    finally:
        stop.set()
        if dash is not None:
            dash.terminate()
            try:
                dash.wait(timeout=10)
            except subprocess.TimeoutExpired:
                dash.kill()
        if bg is not None:
            bg.join(timeout=30)  # the round in flight ends (devices see the server go away)
        coordinator.close()
