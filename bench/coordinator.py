"""bench/coordinator: coordinator throughput with 100 and 1,000 simulated devices over HTTP.

N devices are enrolled and all of them poll; each round samples a cohort of
min(N, COHORT) = 100 of them (the default `round_cohort_size`), so at N = 1,000 the other 900
keep polling for a task while the round runs (their load is part of what is measured).

The coordinator runs as it does in production (uvicorn on loopback, SQLite, the service's own
round logic), in its own process (`coordinator.server.running` there), so the simulated devices
do not share its interpreter lock. The devices are lightweight asyncio tasks in this process
over one httpx client: each enrols (Ed25519 identity key), then for every round polls
`/v1/rounds/current` until it is in the cohort and runs the real secagg client
(`secagg.client`: X25519 keys, Shamir shares, masks, signatures) through the real round
routes, polling each stage's inbox and finally the round status. They do not train: the
update is a small random vector (DIM float32 values instead of the 133,812 of the default
device part; the server's per-round work that grows with the dimension, the masked sum and
unmasking, is measured by `bench/secagg`). Rounds are opened by the operator route
(`POST /v1/admin/rounds` with the operator token), one after another.

Reported per population size N (no over-selection, no dropouts):
  rounds_per_min      completed rounds per minute of wall time (open to done, back to back)
  round_s             mean seconds per round
  latency_ms          p50 / p95 of every device request of the rounds (polls included), and
                      per route (poll for a task, inbox polls, uploads, status)
  requests_per_round  device requests per round (polls included)
  enrol_latency_ms    p50 / p95 of the N enrolments
Devices waiting for a task poll every max(0.5, N / 200) s (0.5 s at N = 100, 5 s at
N = 1,000), so idle polling stays near 200 requests/s at both sizes; devices in a round poll
their inbox and the round status every 0.5 s; +-50% jitter on both. ROUNDS rounds per size, to
keep the bench near 10 minutes on 2 cores. Writes bench/results/coordinator.json.

    ./dev bench coordinator             # N = 100 and 1,000
    ./dev bench coordinator --quick     # N = 100 only, one round
"""

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

# This file is named like the package: make `import coordinator` find the package, not this.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

OUT = _HERE / "results" / "coordinator.json"
DIM = 10_000
ROUNDS = {100: 2, 1000: 2}
IN_ROUND_POLL_S = 0.5
COHORT = 100
STAGES = ("share_keys", "masked_input", "consistency", "unmasking")


def _config(data_dir: Path, n: int):
    import dataclasses

    from coordinator.config import CoordinatorConfig
    from model.checkpoint import atomic_write_bytes

    part = data_dir.parent / "device_part.npz"
    import io

    buf = io.BytesIO()
    np.savez(buf, w=np.zeros(DIM, np.float32))
    atomic_write_bytes(part, buf.getvalue())
    return dataclasses.replace(
        CoordinatorConfig.default(),
        port=0,
        data_dir=data_dir,
        base_device_part=part,
        eval_targets=0,
        round_cohort_size=min(n, COHORT),
        round_overselect=0.0,
        round_stage_timeout_s=600.0,
        round_masked_input_timeout_s=600.0,
        round_tick_s=1.0,
        rate_per_second=1e6,
        rate_burst=1_000_000,
    )


def _serve(data_dir: str, n: int, url_q, stop) -> None:
    """The coordinator process: serve until told to stop."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    import jax.numpy as jnp

    from coordinator import server

    jnp.zeros(1).block_until_ready()  # the server optimiser's first step imports and starts JAX
    cfg = _config(Path(data_dir), n)
    with server.running(cfg, start_timeout=120) as (url, _):
        url_q.put(url)
        stop.wait()


class Recorder:
    def __init__(self) -> None:
        self.on = False
        self.lat: dict[str, list[float]] = {}

    async def call(self, http: httpx.AsyncClient, route: str, method: str, url: str, **kw):
        t = time.perf_counter()
        r = await http.request(method, url, **kw)
        if self.on:
            self.lat.setdefault(route, []).append((time.perf_counter() - t) * 1e3)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {url}: {r.status_code} {r.text[:200]}")
        return r


class Phone:
    def __init__(self, name: str) -> None:
        from secagg import crypto

        self.name = name
        self.sk, self.pk = crypto.new_identity()
        self.h: dict[str, str] = {}

    async def enrol(self, http, rec: Recorder) -> None:
        import base64

        body = {
            "device_id": self.name,
            "public_key": base64.b64encode(self.pk).decode(),
            "mode": "on_device",
        }
        r = await rec.call(http, "enrol", "POST", "/v1/devices", json=body)
        self.h = {"Authorization": f"Bearer {r.json()['token']}"}

    async def round(
        self, http, rec: Recorder, rid: int, poll: float, rng, over: asyncio.Event
    ) -> str:
        """Poll for a task until this device is in round `rid` (then take part) or the
        round is over without it ("idle")."""
        from secagg import client, encoding
        from secagg.params import RoundParams

        jitter = random.Random(self.name)
        while True:
            if over.is_set():
                return "idle"
            r = await rec.call(http, "poll_task", "GET", "/v1/rounds/current", headers=self.h)
            task = r.json()
            if task["round_id"] == rid:
                break
            await asyncio.sleep(poll * (0.5 + jitter.random()))
        params = RoundParams.from_json(task["params"])
        ids = {int(k): bytes.fromhex(v) for k, v in task["identities"].items()}
        st = client.new_client(params, task["client_id"], self.sk, ids)
        st, msg = client.advertise_keys(st)
        up = {**self.h, "Content-Type": "application/octet-stream"}
        await rec.call(http, "upload", "POST", f"/v1/rounds/{rid}/advertise", content=msg,
                       headers=up)  # fmt: skip
        for stage in STAGES:
            while True:
                r = await rec.call(
                    http, "poll_inbox", "GET", f"/v1/rounds/{rid}/inbox",
                    params={"stage": stage}, headers=self.h,
                )  # fmt: skip
                if r.status_code == 200:
                    break
                await asyncio.sleep(IN_ROUND_POLL_S * (0.5 + jitter.random()))
            got = r.content
            if stage == "share_keys":
                st, msg = client.share_keys(st, got)
            elif stage == "masked_input":
                x = rng.normal(0, 0.01, params.dim).astype(np.float32)
                enc = encoding.encode(x, params.spec, rng, (0, 0, 0))
                st, msg = client.masked_input(st, got, enc)
            elif stage == "consistency":
                st, msg = client.consistency_check(st, got)
            else:
                st, msg = client.unmasking(st, got)
            await rec.call(http, "upload", "POST", f"/v1/rounds/{rid}/{stage}", content=msg,
                           headers=up)  # fmt: skip
        while True:
            r = await rec.call(http, "status", "GET", f"/v1/rounds/{rid}", headers=self.h)
            if r.json()["status"] != "running":
                return r.json()["status"]
            await asyncio.sleep(IN_ROUND_POLL_S * (0.5 + jitter.random()))


def _pct(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs)
    return {
        "p50": round(float(np.percentile(a, 50)), 2),
        "p95": round(float(np.percentile(a, 95)), 2),
    }


async def _run_population(url: str, data_dir: Path, n: int, rounds: int) -> dict:
    from coordinator import admin

    poll = max(0.5, n / 200)
    # Idle connections expire on the client before uvicorn's 5 s keep-alive closes them: else a
    # request can go out on a connection the server is closing at that moment.
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=2.0)
    timeout = httpx.Timeout(300.0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as http:
        rec = Recorder()
        rec.on = True
        phones = [Phone(f"sim{i:04d}") for i in range(n)]
        await asyncio.gather(*(p.enrol(http, rec) for p in phones))
        enrol = rec.lat.pop("enrol")
        token = admin.read_token(data_dir)
        op = {"Authorization": f"Bearer {token}"}
        round_s, requests = [], []
        for k in range(rounds):
            rec.lat_before = sum(len(v) for v in rec.lat.values())
            t0 = time.perf_counter()
            r = await http.post("/v1/admin/rounds", headers=op)
            if r.status_code != 201:
                raise RuntimeError(f"opening a round: {r.status_code} {r.text}")
            rid, cohort = r.json()["round_id"], r.json()["cohort"]
            over, finished = asyncio.Event(), [0]

            async def one(p, g, rid=rid, cohort=cohort, over=over, finished=finished):
                status = await p.round(http, rec, rid, poll, g, over)
                if status != "idle":
                    finished[0] += 1
                    if finished[0] == cohort:
                        over.set()
                return status

            rngs = [np.random.default_rng(1000 * k + i) for i in range(n)]
            out = await asyncio.gather(*(one(p, g) for p, g in zip(phones, rngs, strict=True)))
            round_s.append(time.perf_counter() - t0)
            requests.append(sum(len(v) for v in rec.lat.values()) - rec.lat_before)
            if out.count("done") != cohort:
                raise RuntimeError(f"round {rid} ended {set(out)}")
            print(f"  N={n}: round {rid} done in {round_s[-1]:.1f} s", flush=True)
    every = [x for v in rec.lat.values() for x in v]
    return {
        "rounds": rounds,
        "rounds_per_min": round(60 * rounds / sum(round_s), 3),
        "round_s": round(float(np.mean(round_s)), 2),
        "latency_ms": _pct(every),
        "latency_ms_by_route": {k: {**_pct(v), "requests": len(v)} for k, v in rec.lat.items()},
        "requests_per_round": round(float(np.mean(requests)), 1),
        "enrol_latency_ms": _pct(enrol),
        "poll_interval_s": poll,
        "cohort": min(n, COHORT),
        "dim": DIM,
    }


def run_population(n: int, rounds: int) -> dict:
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix=f"bench-coord-{n}-") as tmp:
        data_dir = Path(tmp) / "data"
        url_q, stop = ctx.Queue(), ctx.Event()
        proc = ctx.Process(target=_serve, args=(str(data_dir), n, url_q, stop), daemon=True)
        proc.start()
        try:
            url = url_q.get(timeout=180)
            return asyncio.run(_run_population(url, data_dir, n, rounds))
        finally:
            stop.set()
            proc.join(30)
            if proc.is_alive():
                proc.terminate()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 100 only, one round")
    args = ap.parse_args()
    sizes = {100: 1} if args.quick else ROUNDS
    results = {}
    for n, rounds in sizes.items():
        t = time.perf_counter()
        load_before = os.getloadavg()[0]
        results[str(n)] = run_population(n, rounds)
        # Other jobs on the machine slow the coordinator down: the 1-minute load average
        # around the run says how shared the cores were (2 = both cores busy).
        results[str(n)]["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        print(f"N={n}: {time.perf_counter() - t:.0f} s in total", flush=True)
    doc = {
        "devices": results,
        "setup": {
            "database": "SQLite (file, WAL)",
            "transport": "HTTP/1.1 over loopback, uvicorn, one coordinator process",
            "devices": "asyncio tasks over one httpx client (64 connections), real secagg client",
            "dim": DIM,
            "secagg": "SecAggConfig.default (8-bit values, expected dropout 0.15)",
            "cohort": f"min(N, {COHORT}) sampled per round; everyone polls",
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
    }
    if not args.quick:
        OUT.write_text(json.dumps(doc, indent=2) + "\n")
    print(
        "\n| devices | cohort | rounds | rounds/min | s/round | p50 ms | p95 ms | requests/round |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n, r in results.items():
        print(
            f"| {n} | {r['cohort']} | {r['rounds']} | {r['rounds_per_min']:.2f} | "
            f"{r['round_s']:.1f} | "
            f"{r['latency_ms']['p50']:.1f} | {r['latency_ms']['p95']:.1f} | "
            f"{r['requests_per_round']:.0f} |"
        )


if __name__ == "__main__":
    main()
