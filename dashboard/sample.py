"""A short real federated run, in-process, to fill a coordinator database for the dashboard's
tests and screenshots.

Everything goes through the coordinator's own HTTP app (FastAPI's in-process client), so the
devices, traffic, cloud-text, round, stage and version rows are the ones a live coordinator
writes: four on-device phones run SecAgg+ clients on random deltas (no local training, to stay
fast), one cloud-mode phone asks for predictions. Round 1 completes with everyone, round 2 loses
one phone after ShareKeys (the masked-input timeout closes the stage), round 3 is abandoned
and aborts. The coordinator then restarts in buffered mode (FedBuff): the four phones report
ready, phone0 with version 2 (it missed round 2: staleness 1, weight 1/sqrt(2)) and the others
with version 3, and round 4 runs over them with staleness-weighted updates.
`python -m dashboard.sample DIR` writes such a database under DIR.
"""

from __future__ import annotations

import base64
import dataclasses
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from coordinator import db, evaluation, rounds
from coordinator.app import create_app
from coordinator.config import CoordinatorConfig
from secagg import client, crypto, encoding
from secagg.config import DPConfig
from secagg.params import RoundParams

__all__ = ["SampleRun", "sample_config", "run"]

PHONES = 4
CLOUD_TEXTS = ("see you at the ", "how are ")
# Small enough that the dropout round closes quickly, large enough for a loaded machine.
MASKED_INPUT_TIMEOUT_S = 1.5


@dataclass
class SampleRun:
    """What the run did, as the devices saw it: the figures the dashboard must show."""

    url: str
    data_dir: Path
    rounds: dict[int, str] = field(default_factory=dict)  # round id -> final status
    # round id -> device -> [bytes sent, bytes received] on the round endpoints (HTTP bodies)
    round_bytes: dict[int, dict[str, list[int]]] = field(default_factory=dict)
    cloud_bytes: int = 0
    cloud_requests: int = 0


def sample_config(data_dir: Path, database_url: str | None = None) -> CoordinatorConfig:
    base = CoordinatorConfig.tiny(data_dir, database_url)
    return dataclasses.replace(
        base,
        eval_targets=50,
        round_cohort_size=PHONES,
        round_overselect=0.0,
        round_tick_s=0.0,  # the run closes stages itself (and sleeps for the one timeout)
        round_masked_input_timeout_s=MASKED_INPUT_TIMEOUT_S,
        rate_per_second=1e4,
        rate_burst=10_000,
        # Plain FedAvg on the server: each version is its parent plus the released average,
        # which the dashboard's histograms can be checked against.
        server_optimizer="sgd",
        server_learning_rate=1.0,
        dp=DPConfig(noise_multiplier=2.0, delta=1e-5, sampling_probability=1.0, epsilon_limit=10),
    )


class _Phone:
    def __init__(self, http: TestClient, name: str, mode: str, run: SampleRun) -> None:
        self.http, self.name, self.run = http, name, run
        self.sk, pk = crypto.new_identity()
        r = http.post(
            "/v1/devices",
            json={"device_id": name, "public_key": base64.b64encode(pk).decode(), "mode": mode},
        )
        r.raise_for_status()
        self.h = {"Authorization": f"Bearer {r.json()['token']}"}
        http.post("/v1/checkin", json={"version": None}, headers=self.h).raise_for_status()

    def predict(self, text: str) -> None:
        self.http.post("/v1/predict", json={"text": text}, headers=self.h).raise_for_status()
        self.run.cloud_bytes += len(text.encode())
        self.run.cloud_requests += 1

    def _count(self, rid: int, sent: int, got: int) -> None:
        acc = self.run.round_bytes.setdefault(rid, {}).setdefault(self.name, [0, 0])
        acc[0] += sent
        acc[1] += got

    def ready(self, version: int) -> dict:
        r = self.http.post("/v1/rounds/ready", json={"version": version}, headers=self.h)
        r.raise_for_status()
        return r.json()

    def join(self, rid: int, seed: int) -> None:
        r = self.http.get("/v1/rounds/current", headers=self.h)
        task = r.json()
        self._count(rid, 0, len(r.content))
        self.weight = float(task["weight"])  # public staleness weight (1 in sync rounds)
        self.params = RoundParams.from_json(task["params"])
        ids = {int(k): bytes.fromhex(v) for k, v in task["identities"].items()}
        self.state = client.new_client(self.params, task["client_id"], self.sk, ids)
        self.rng = np.random.default_rng(seed)

    def step(self, rid: int, stage: str) -> None:
        if stage == "advertise":
            self.state, msg = client.advertise_keys(self.state)
        else:
            r = self.http.get(f"/v1/rounds/{rid}/inbox", params={"stage": stage}, headers=self.h)
            r.raise_for_status()
            self._count(rid, 0, len(r.content))
            got = r.content
            if stage == "share_keys":
                self.state, msg = client.share_keys(self.state, got)
            elif stage == "masked_input":
                delta = self.rng.normal(0, 0.01, self.params.dim).astype(np.float32)
                # Federated-evaluation counters (hits@1, hits@3, words) ride in the masked sum.
                enc = encoding.encode(
                    delta, self.params.spec, self.rng, (1, 2, 4), weight=self.weight
                )
                self.state, msg = client.masked_input(self.state, got, enc)
            elif stage == "consistency":
                self.state, msg = client.consistency_check(self.state, got)
            else:
                self.state, msg = client.unmasking(self.state, got)
        r = self.http.post(
            f"/v1/rounds/{rid}/{stage}",
            content=msg,
            headers={**self.h, "Content-Type": "application/octet-stream"},
        )
        r.raise_for_status()
        self._count(rid, len(msg), len(r.content))


def _round(
    coord, phones: list[_Phone], seed: int, drop_after_share: _Phone | None, rid: int | None = None
) -> int:
    rid = rid or rounds.open_round(coord, np.random.default_rng(seed))
    for i, p in enumerate(phones):
        p.join(rid, seed * 100 + i)
    for stage in rounds.STAGES:
        who = phones
        if drop_after_share is not None and stage not in ("advertise", "share_keys"):
            who = [p for p in phones if p is not drop_after_share]
        for p in who:
            p.step(rid, stage)
        if stage == "masked_input" and drop_after_share is not None:
            time.sleep(MASKED_INPUT_TIMEOUT_S + 0.1)  # really wait: stage times stay true
            rounds.tick(coord)
    return rid


def run(data_dir: Path, database_url: str | None = None) -> SampleRun:
    """Fill a fresh coordinator database (SQLite in `data_dir` unless a URL is given)."""
    cfg = sample_config(Path(data_dir), database_url)
    out = SampleRun(cfg.db_url, Path(data_dir))
    with TestClient(create_app(cfg)) as http:
        coord = http.app.state.coordinator
        phones = [_Phone(http, f"phone{i}", "on_device", out) for i in range(PHONES)]
        thin = _Phone(http, "thin", "cloud", out)
        for text in CLOUD_TEXTS:
            thin.predict(text)
        r1 = _round(coord, phones, 1, None)
        r2 = _round(coord, phones, 2, drop_after_share=phones[0])
        # Server-side evaluation of the new versions on public held-out users.
        for v in coord.registry.versions()[1:]:
            evaluation.evaluate_version(coord.registry, v.id, cfg.eval_preset, cfg.eval_targets)
        # Phones report the version they run: one missed round 2 and still runs version 2.
        for p, version in zip(phones, (2, 3, 3, 3), strict=True):
            http.post("/v1/checkin", json={"version": version}, headers=p.h).raise_for_status()
        r3 = rounds.open_round(coord, np.random.default_rng(3))  # nobody advertises
        later = db.utcnow() + timedelta(seconds=cfg.round_stage_timeout_s + 1)
        rounds.tick(coord, later)
        for rid in (r1, r2, r3):
            out.rounds[rid] = rounds.status(coord, rid)["status"]
    # The same database, restarted in buffered mode: the fourth ready report opens round 4.
    buffered = dataclasses.replace(cfg, round_mode="buffered", round_buffer_size=PHONES)
    with TestClient(create_app(buffered)) as http:
        coord = http.app.state.coordinator
        for p in phones:
            p.http = http
        answers = [p.ready(v) for p, v in zip(phones, (2, 3, 3, 3), strict=True)]
        r4 = _round(coord, phones, 4, None, rid=answers[-1]["round_id"])
        v4 = rounds.status(coord, r4)["result_version"]
        evaluation.evaluate_version(coord.registry, v4, cfg.eval_preset, cfg.eval_targets)
        for p in phones[1:]:  # phone0 stays on version 2
            http.post("/v1/checkin", json={"version": v4}, headers=p.h).raise_for_status()
        out.rounds[r4] = rounds.status(coord, r4)["status"]
    return out


if __name__ == "__main__":
    done = run(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/dashboard-sample"))
    print(f"SOTTO_DATABASE_URL={done.url}  rounds: {done.rounds}")
