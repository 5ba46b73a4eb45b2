"""An in-process driver: one full SecAgg+ round for a cohort, with chosen dropouts per stage.

No network: the messages the state machines return are handed straight to the other side, as
bytes, exactly as a transport would. Tests and bench/secagg.py use it; a population simulator
can too. Each client is timed individually (all its stages, including encoding), the server per
stage; masked inputs are folded into the server one at a time as they are produced, so memory
stays at one vector per party however large the cohort.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from secagg import client, crypto, encoding, server
from secagg.params import RoundParams

__all__ = ["Dropouts", "RoundReport", "enroll", "run_round"]

ClientInput = tuple[np.ndarray, Sequence[int]]  # (float update, extra_ints counters)


@dataclass(frozen=True)
class Dropouts:
    """Clients that go silent at a stage (and stay silent for the rest of the round)."""

    advertise: frozenset[int] = frozenset()  # never advertise keys
    share_keys: frozenset[int] = frozenset()  # advertise, never send shares
    masked_input: frozenset[int] = frozenset()  # share keys, never send the masked input
    consistency: frozenset[int] = frozenset()  # send the masked input, never sign
    unmasking: frozenset[int] = frozenset()  # sign, never return unmasking shares

    @classmethod
    def fractions(
        cls,
        cohort: Sequence[int],
        rng: np.random.Generator,
        after_share_keys: float = 0.0,
        at_unmasking: float = 0.0,
    ) -> Dropouts:
        """round(f * n) random clients (at least one if f > 0) drop after ShareKeys, then
        others at Unmasking."""
        order = [int(c) for c in rng.permutation(np.asarray(cohort))]

        def count(f: float) -> int:
            return max(1, round(f * len(order))) if f > 0 else 0

        a, b = count(after_share_keys), count(at_unmasking)
        return cls(masked_input=frozenset(order[:a]), unmasking=frozenset(order[a : a + b]))


@dataclass
class RoundReport:
    result: server.AggregateResult
    expected_field_sum: np.ndarray  # exact sum of the encoded vectors of those who sent inputs
    client_ms: dict[int, float] = field(default_factory=dict)  # all stages incl. encoding
    mask_ms: dict[int, float] = field(default_factory=dict)  # MaskedInput stage incl. encoding
    server_ms: dict[str, float] = field(default_factory=dict)  # per stage
    upload_bytes: dict[int, int] = field(default_factory=dict)  # all messages a client sent
    masked_input_bytes: int = 0  # size of one MaskedInput message


def enroll(cohort: Iterable[int]) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """Identity keys as at enrolment: (private seeds by id, public keys by id)."""
    sks, pks = {}, {}
    for c in cohort:
        sks[c], pks[c] = crypto.new_identity()
    return sks, pks


def run_round(
    params: RoundParams,
    inputs: Callable[[int], ClientInput],
    dropouts: Dropouts = Dropouts(),
    seed: int = 0,
    weights: Callable[[int], float] | None = None,
    enrolment: tuple[dict[int, bytes], dict[int, bytes]] | None = None,
    on_server_state: Callable[[str, server.ServerState], None] | None = None,
) -> RoundReport:
    """Run one round. inputs(u) gives client u's update and counters; weights(u) its public
    staleness weight; each client's stochastic rounding uses Generator(PCG64([seed, u])).
    on_server_state(stage, state) sees the server state after every stage (for inspection).
    Raises AbortError (from whichever side detects it) if too many clients drop.
    """
    sks, pks = enrolment if enrolment is not None else enroll(params.cohort)
    spec = params.spec
    rep_client: dict[int, float] = dict.fromkeys(params.cohort, 0.0)
    up: dict[int, int] = dict.fromkeys(params.cohort, 0)
    server_ms: dict[str, float] = {}
    hook = on_server_state or (lambda _s, _st: None)

    last_ms = [0.0]

    def timed(u: int, fn: Callable, *args):
        t = time.perf_counter()
        st, msg = fn(*args)
        last_ms[0] = (time.perf_counter() - t) * 1e3
        rep_client[u] += last_ms[0]
        up[u] += len(msg)
        return st, msg

    def server_stage(name: str, fn: Callable, st: server.ServerState, msgs: dict[int, bytes]):
        t = time.perf_counter()
        out = fn(st, msgs)
        server_ms[name] = server_ms.get(name, 0.0) + (time.perf_counter() - t) * 1e3
        hook(name, out[0])
        return out

    states = {u: client.new_client(params, u, sks[u], pks) for u in params.cohort}
    srv = server.new_server(params, pks)
    hook("new", srv)

    msgs = {}
    for u in params.cohort:
        if u not in dropouts.advertise:
            states[u], msgs[u] = timed(u, client.advertise_keys, states[u])
    srv, out = server_stage("advertise_keys", server.advertise_keys, srv, msgs)

    msgs = {}
    for u, m in out.items():
        if u not in dropouts.share_keys:
            states[u], msgs[u] = timed(u, client.share_keys, states[u], m)
    srv, out = server_stage("share_keys", server.share_keys, srv, msgs)

    # Masked inputs stream into the server one at a time, as they would over HTTP.
    expected = np.zeros(spec.length, np.uint64)
    mask_ms: dict[int, float] = {}
    agg_ms = 0.0
    masked_bytes = 0
    for u, m in out.items():
        if u in dropouts.masked_input:
            continue
        x, extra = inputs(u)
        w = 1.0 if weights is None else weights(u)
        t = time.perf_counter()
        enc = encoding.encode(x, spec, np.random.Generator(np.random.PCG64([seed, u])), extra, w)
        enc_ms = (time.perf_counter() - t) * 1e3
        states[u], msg = timed(u, client.masked_input, states[u], m, enc)
        rep_client[u] += enc_ms
        mask_ms[u] = enc_ms + last_ms[0]
        expected += enc
        masked_bytes = len(msg)
        t = time.perf_counter()
        srv = server.receive(srv, msg)
        agg_ms += (time.perf_counter() - t) * 1e3
    srv, out = server_stage("masked_input", lambda st, _m: server.advance(st), srv, {})
    server_ms["masked_input"] += agg_ms

    msgs = {}
    for u, m in out.items():
        if u not in dropouts.consistency:
            states[u], msgs[u] = timed(u, client.consistency_check, states[u], m)
    srv, out = server_stage("consistency_check", server.consistency_check, srv, msgs)

    msgs = {}
    for u, m in out.items():
        if u not in dropouts.unmasking:
            states[u], msgs[u] = timed(u, client.unmasking, states[u], m)
    srv, result = server_stage("unmasking", server.unmasking, srv, msgs)

    mod = np.uint64(1 << spec.width)
    return RoundReport(
        result=result,
        expected_field_sum=expected % mod,
        client_ms=rep_client,
        mask_ms=mask_ms,
        server_ms=server_ms,
        upload_bytes=up,
        masked_input_bytes=masked_bytes,
    )
