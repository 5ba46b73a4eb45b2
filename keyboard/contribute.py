"""Take part in one synchronous federated round: the device side of SecAgg+ over HTTP.

The device waits for a round task, then runs the secagg client stages against the round API
(`keyboard.transport`), polling for each of the server's messages with a timeout. Its update
is `Device.delta()` flattened in sorted-name order (as the coordinator flattens the device
part), clipped and stochastically quantised by `secagg.encoding`, with the federated
evaluation counters (hits@1, hits@3, words of the global model on the held-back text) riding
in the same masked sum. The secagg client state lives in memory for the round only: a device
that restarts mid-round has dropped out, which the protocol tolerates.

Buffered rounds (FedBuff): after training, the device calls `report_ready` with the version
it trained from, then `contribute` as usual; its round task names that version and a public
staleness weight, which `secagg.encoding.encode` applies to the clipped update before
quantising and masking.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from keyboard.device import Device
from keyboard.runtime import DeviceModel
from keyboard.transport import Transport, TransportError
from secagg import client, encoding, subsample
from secagg.params import RoundParams

__all__ = ["RoundOutcome", "flatten_delta", "evaluate_global", "report_ready", "contribute"]

log = logging.getLogger(__name__)

STAGES = ("share_keys", "masked_input", "consistency", "unmasking")


class RoundTimeout(TimeoutError):
    pass


@dataclass(frozen=True)
class RoundOutcome:
    round_id: int | None
    status: str  # done, aborted, dropped (silent or too late), skipped (wrong version)
    bytes_up: int  # every secagg message this device sent
    masked_input_bytes: int
    installed_version: int | None
    reason: str | None = None


def flatten_delta(delta: dict[str, np.ndarray]) -> np.ndarray:
    """The update as one float32 vector, arrays in sorted-name order (the wire layout)."""
    return np.concatenate([np.asarray(delta[k], np.float32).ravel() for k in sorted(delta)])


def evaluate_global(device: Device, max_words: int = 40) -> tuple[int, int, int]:
    """(hits@1, hits@3, words) of the current global model on the held-back messages."""
    model_bytes = (device.models / f"{device.model_sha256}.tflite").read_bytes()
    model = DeviceModel(model_bytes, device.vocab, device.global_part)
    hits1 = hits3 = words = 0
    for m in device.history.held_back():
        w = m.split()
        for i in range(1, len(w)):
            if words >= max_words:
                return hits1, hits3, words
            got = model.suggest(" ".join(w[:i]) + " ")
            hits1 += int(got[:1] == [w[i]])
            hits3 += int(w[i] in got)
            words += 1
    return hits1, hits3, words


def report_ready(transport: Transport, version: int) -> dict:
    """Buffered mode: tell the coordinator this device trained from `version` and can join a
    round (`POST /v1/rounds/ready`); returns its answer (ready count, staleness, round id)."""
    what = f"ready to contribute: trained from model version {version} (no data)"
    return transport.request(
        "POST", "/v1/rounds/ready", "checkin", what, json={"version": version}
    ).json()


def _wait(
    fetch: Callable[[], object], deadline: float, clock: Callable[[], float], poll: float
) -> object:
    while True:
        try:
            got = fetch()
        except TransportError as e:
            if e.status != 429:
                raise
            got = None  # rate limited: back off and ask again
            time.sleep(poll * 10)
        if got is not None:
            return got
        if clock() > deadline:
            raise RoundTimeout("the coordinator did not answer in time")
        time.sleep(poll)


def contribute(
    device: Device,
    transport: Transport,
    rng: np.random.Generator,
    timeout_s: float = 120.0,
    poll_s: float = 0.25,
    clock: Callable[[], float] = time.monotonic,
    stop_after: str | None = None,
) -> RoundOutcome:
    """Run one round end to end and install the new global version if the round succeeds.

    `rng` drives only the stochastic rounding. `stop_after` (a stage name) makes the device
    go silent after sending that stage's message, as a phone that loses its network would.
    """
    creds = transport.credentials
    if creds is None:
        raise RuntimeError("enrol the device before contributing")
    deadline = clock() + timeout_s

    def task_or_none():
        t = transport.round_task()
        return t if t["round_id"] is not None else None

    task = _wait(task_or_none, deadline, clock, poll_s)
    rid = task["round_id"]
    if task["stage"] != "advertise":
        return RoundOutcome(rid, "dropped", 0, 0, None, "joined after AdvertiseKeys")
    want = task.get("trained_from", task["model_version"])
    if want != device.version:
        # An update from another version would be weighted as if from that one: sit the round
        # out (over-selection covers it) and update before the next.
        why = f"trained from version {device.version}, round is for {want}"
        return RoundOutcome(rid, "skipped", 0, 0, None, why)
    weight = float(task.get("weight", 1.0))  # public: 1 in sync rounds
    params = RoundParams.from_json(task["params"])
    ids = {int(k): bytes.fromhex(v) for k, v in task["identities"].items()}
    st = client.new_client(params, task["client_id"], creds.identity_seed, ids)
    up = masked = 0
    st, msg = client.advertise_keys(st)
    transport.round_send(rid, "advertise", msg)
    up += len(msg)
    try:
        for stage in STAGES:
            if stop_after is not None and STAGES.index(stage) > _index(stop_after):
                return RoundOutcome(rid, "dropped", up, masked, None, f"stopped after {stop_after}")
            got = _wait(lambda s=stage: transport.round_inbox(rid, s), deadline, clock, poll_s)
            if stage == "share_keys":
                st, msg = client.share_keys(st, got)
            elif stage == "masked_input":
                x = flatten_delta(device.delta())
                if task.get("subset"):  # a random-mask round: only its coordinates go up
                    sub = task["subset"]
                    if sub["of"] != x.size:
                        raise ValueError(f"round samples from {sub['of']} values, not {x.size}")
                    x = x[subsample.indices(int(sub["seed"]), x.size, params.dim)]
                counters = evaluate_global(device)
                enc = encoding.encode(x, params.spec, rng, counters, weight=weight)
                st, msg = client.masked_input(st, got, enc)
                masked = len(msg)
            elif stage == "consistency":
                st, msg = client.consistency_check(st, got)
            else:
                st, msg = client.unmasking(st, got)
            transport.round_send(rid, stage, msg)
            up += len(msg)
    except TransportError as e:
        if e.status != 409:
            raise
        s = transport.round_status(rid)
        # Still running without us: a stage closed on its timeout before we answered.
        outcome = "dropped" if s["status"] == "running" else s["status"]
        return RoundOutcome(rid, outcome, up, masked, None, s["reason"] or str(e))
    finally:
        del st  # the round's secrets are not kept past the round
    device.record_upload(up)

    def finished():
        s = transport.round_status(rid)
        return s if s["status"] != "running" else None

    s = _wait(finished, deadline, clock, poll_s)
    installed = None
    if s["status"] == "done" and transport.update():
        installed = device.version
    return RoundOutcome(rid, s["status"], up, masked, installed, s["reason"])


def _index(stage: str) -> int:
    return -1 if stage == "advertise" else STAGES.index(stage)
