"""The server (coordinator) side of SecAgg+ as an explicit state machine.

Stages (Bonawitz et al. 2017; Bell et al. 2020):
  ADVERTISE -> SHARE_KEYS -> MASKED_INPUT -> CONSISTENCY -> UNMASKING -> DONE (or ABORTED)
In each stage the server collects one kind of client message with `receive(state, msg)` (e.g.
one per HTTP request; an invalid message raises and leaves the state as it was) and closes the
stage with `advance(state)`, which decides who dropped, checks every neighbourhood still meets
the threshold (else AbortError and stage ABORTED), and returns the messages to send. The stage
functions `advertise_keys`, `share_keys`, `masked_input_collection`, `consistency_check` and
`unmasking` do both for a batch. The server only ever holds masked vectors and their running
sum (`acc`); `to_json` / `from_json` make the state restartable mid-round.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from secagg import crypto, encoding, packing, shamir, wire
from secagg.errors import AbortError, CryptoError, ProtocolError, SecAggError, WireError
from secagg.params import RoundParams
from secagg.server_state import COLLECTS, AggregateResult, ServerStage, ServerState

__all__ = [
    "ServerStage",
    "ServerState",
    "AggregateResult",
    "new_server",
    "receive",
    "advance",
    "advertise_keys",
    "share_keys",
    "masked_input_collection",
    "consistency_check",
    "unmasking",
    "finish",
]


def new_server(params: RoundParams, identities: Mapping[int, bytes]) -> ServerState:
    missing = [c for c in params.cohort if c not in identities]
    if missing:
        raise ProtocolError(f"no enrolled identity key for cohort members {missing}")
    return ServerState(ServerStage.ADVERTISE, params, {c: identities[c] for c in params.cohort})


def _send(state: ServerState, body: wire.Body, to: int) -> bytes:
    return wire.encode(body, state.params.round_id, wire.SERVER, to)


def _abort(state: ServerState, why: str) -> AbortError:
    return AbortError(f"round {state.params.round_id.hex()} aborted at {state.stage.value}: {why}")


# -- receiving one message --------------------------------------------------------------


def receive(state: ServerState, message: bytes) -> ServerState:
    """Validate one client message for the current stage and fold it into a new state.

    Raises ProtocolError (wrong stage, round, sender or content), WireError (bad bytes) or
    CryptoError (bad signature); the given state is then unchanged and usable. On success use
    the returned state from then on: for speed the masked-sum accumulator is shared between
    the two and updated in place.
    """
    return _receive(state, message, copy=True)


def _receive(state: ServerState, message: bytes, copy: bool) -> ServerState:
    if state.stage not in COLLECTS:
        raise ProtocolError(f"server in stage {state.stage.value} accepts no client messages")
    p = state.params
    expected = COLLECTS[state.stage]
    kind = wire.peek(message).type
    if kind != expected:
        raise ProtocolError(
            f"server in stage {state.stage.value} refuses a {kind.name} message; "
            f"it collects {expected.name}"
        )
    h, body = wire.decode(message, expected, p.round_id, p.max_message_bytes(), len(p.cohort))
    u = h.sender
    if h.receiver != wire.SERVER or u not in state.identities:
        raise ProtocolError(f"{expected.name} from {u} to {h.receiver}: not a cohort member")
    if u in state.inbox:
        raise ProtocolError(f"{expected.name} from client {u}: duplicate message")
    allowed = {
        ServerStage.ADVERTISE: state.identities,
        ServerStage.SHARE_KEYS: state.adverts,
        ServerStage.MASKED_INPUT: state.routed,
        ServerStage.CONSISTENCY: state.signers_wanted,
        ServerStage.UNMASKING: state.requests,
    }[state.stage]
    if u not in allowed:
        raise ProtocolError(f"{expected.name} from client {u}, who dropped out earlier")
    acc = state.acc
    nb = p.neighbours[u]
    if isinstance(body, wire.Advert):
        if body.client != u:
            raise ProtocolError(f"advert from client {u} names client {body.client}")
        if not crypto.verify(state.identities[u], body.signed_bytes(p.round_id), body.signature):
            raise CryptoError(f"advert of client {u} has a bad signature (forged or replayed)")
    if isinstance(body, wire.Shares):
        want = {v for v in nb if v in state.adverts}
        got = [r for r, _ in body.entries]
        if len(set(got)) != len(got) or set(got) != want:
            raise ProtocolError(
                f"shares from client {u} go to {sorted(got)}, expected its live neighbours "
                f"{sorted(want)}"
            )
    elif isinstance(body, wire.MaskedInput):
        spec = p.spec
        if body.width != spec.width or body.length != spec.length:
            raise WireError(
                f"masked input from client {u} is {body.length} x {body.width} bits, "
                f"expected {spec.length} x {spec.width}"
            )
        if len(body.payload) != spec.packed_bytes:
            raise WireError(
                f"masked input from client {u} has {len(body.payload)} payload bytes, "
                f"expected {spec.packed_bytes}"
            )
        # Fold in at once: the server keeps only the running sum of masked vectors.
        acc = np.zeros(spec.length, spec.dtype) if acc is None else acc
        packing.unpack_add(acc, body.payload, spec.width)
        body = None
    elif isinstance(body, wire.ConsistencySignature):
        if not crypto.verify(state.identities[u], state.signers_wanted[u], body.signature):
            raise CryptoError(f"consistency signature of client {u} does not verify")
    elif isinstance(body, wire.UnmaskShares):
        smp, kp = state.requests[u]
        want = {(v, wire.SELF_MASK) for v in smp} | {(v, wire.KEY_SHARE) for v in kp}
        got = [(v, k) for v, k, _ in body.entries]
        if len(set(got)) != len(got) or set(got) != want:
            raise ProtocolError(f"unmask shares from client {u} do not match what was requested")
    if copy:
        state = dataclasses.replace(
            state, inbox=dict(state.inbox), adverts=dict(state.adverts), signers=dict(state.signers)
        )
    if acc is not state.acc:
        state = dataclasses.replace(state, acc=acc)
    if isinstance(body, wire.Advert):
        state.adverts[u] = body
        body = None
    elif isinstance(body, wire.ConsistencySignature):
        state.signers[u] = body.signature
        body = None
    state.inbox[u] = body
    return state


# -- closing a stage --------------------------------------------------------------------


def _need(state: ServerState, who: list[int], among: set[int], what: str) -> None:
    t = state.params.threshold
    for v in who:
        n = sum(1 for w in state.params.neighbours[v] if w in among)
        if n < t:
            raise _abort(state, f"client {v} has {n} {what}, threshold {t}")


def advance(state: ServerState) -> tuple[ServerState, dict[int, bytes]]:
    """Close the current stage: drop the silent, check thresholds, emit the next messages."""
    handler = {
        ServerStage.ADVERTISE: _close_advertise,
        ServerStage.SHARE_KEYS: _close_share_keys,
        ServerStage.MASKED_INPUT: _close_masked_input,
        ServerStage.CONSISTENCY: _close_consistency,
    }.get(state.stage)
    if handler is None:
        raise ProtocolError(f"server cannot advance from stage {state.stage.value} this way")
    try:
        return handler(state)
    except AbortError as e:
        raise _aborted(state, e) from e


def _aborted(state: ServerState, e: AbortError) -> AbortError:
    """The same error, carrying the ABORTED state (all masked data dropped) for persistence."""
    err = AbortError(str(e))
    err.state = dataclasses.replace(
        state, stage=ServerStage.ABORTED, aborted=str(e), acc=None, inbox={}
    )
    return err


def _close_advertise(state: ServerState) -> tuple[ServerState, dict[int, bytes]]:
    p = state.params
    u1 = sorted(state.adverts)
    if len(u1) < max(p.threshold + 1, p.config.min_contributors):
        raise _abort(state, f"only {len(u1)} clients advertised keys")
    _need(state, u1, set(u1), "neighbours that advertised keys")
    out = {
        u: _send(
            state,
            wire.AdvertSet(tuple(state.adverts[v] for v in p.neighbours[u] if v in state.adverts)),
            u,
        )
        for u in u1
    }
    return dataclasses.replace(state, stage=ServerStage.SHARE_KEYS, inbox={}), out


def _close_share_keys(state: ServerState) -> tuple[ServerState, dict[int, bytes]]:
    u2 = sorted(state.inbox)
    _need(state, u2, set(u2), "neighbours that sent shares")
    routed: dict[int, list[tuple[int, int, bytes]]] = {u: [] for u in u2}
    for s in u2:
        for r, ct in state.inbox[s].entries:
            if r in routed:  # shares for clients that dropped are discarded
                routed[r].append((s, r, ct))
    out = {u: _send(state, wire.RoutedShares(tuple(routed[u])), u) for u in u2}
    return dataclasses.replace(
        state, stage=ServerStage.MASKED_INPUT, inbox={}, shared=tuple(u2)
    ), out


def _close_masked_input(state: ServerState) -> tuple[ServerState, dict[int, bytes]]:
    u3 = sorted(state.inbox)
    if len(u3) < state.params.config.min_contributors:
        raise _abort(state, f"only {len(u3)} masked inputs arrived")
    _need(state, list(state.shared), set(u3), "neighbours left after MaskedInputCollection")
    req = wire.ConsistencyRequest(tuple(u3))
    out = {u: _send(state, req, u) for u in u3}
    return dataclasses.replace(
        state, stage=ServerStage.CONSISTENCY, inbox={}, survivors=tuple(u3)
    ), out


def _close_consistency(state: ServerState) -> tuple[ServerState, dict[int, bytes]]:
    p = state.params
    u4 = set(state.signers)
    _need(state, list(state.shared), u4, "neighbours left after ConsistencyCheck")
    shared, survivors = set(state.shared), set(state.survivors)
    out, requests = {}, {}
    for u in sorted(u4):
        nb = [v for v in p.neighbours[u] if v in shared]
        # Only self-mask shares of survivors and key shares of dropouts: never both of one.
        smp = tuple(v for v in nb if v in survivors)
        kp = tuple(v for v in nb if v not in survivors)
        sigs = tuple((v, state.signers[v]) for v in p.neighbours[u] if v in u4)
        requests[u] = (smp, kp)
        out[u] = _send(state, wire.UnmaskRequest(sigs, smp, kp), u)
    new = dataclasses.replace(state, stage=ServerStage.UNMASKING, inbox={}, requests=requests)
    return new, out


def finish(state: ServerState, workers: int = 1) -> tuple[ServerState, AggregateResult]:
    """Close Unmasking: reconstruct and verify secrets, remove all masks, decode the sum.

    workers > 1 regenerates the masks in that many threads, split by coordinate range.
    """
    if state.stage != ServerStage.UNMASKING:
        raise ProtocolError(f"server cannot finish in stage {state.stage.value}")
    p = state.params
    t, rid = p.threshold, p.round_id
    self_shares: dict[int, list[tuple[int, bytes]]] = {}
    key_shares: dict[int, list[tuple[int, bytes]]] = {}
    for u, body in state.inbox.items():
        for v, kind, share in body.entries:
            d = self_shares if kind == wire.SELF_MASK else key_shares
            d.setdefault(v, []).append((u + 1, share))
    survivors = set(state.survivors)
    dropped = [v for v in state.shared if v not in survivors]
    try:
        b_seeds = [
            shamir.recover(
                self_shares.get(v, []),
                t,
                lambda s, v=v: crypto.commit(rid, v, s) == state.adverts[v].b_commit,
                f"self-mask seed of client {v}",
            )
            for v in state.survivors
        ]
        plus, minus = [], []  # pairwise masks to remove: the opposite of what survivors added
        for v in dropped:
            sk_raw = shamir.recover(
                key_shares.get(v, []),
                t,
                lambda s, v=v: crypto.x25519_public(s) == state.adverts[v].mask_pk,
                f"mask key of dropped client {v}",
            )
            sk = crypto.x25519_key(sk_raw)
            for w in p.neighbours[v]:
                if w in survivors:
                    a, b = min(v, w), max(v, w)
                    seed = crypto.agree(sk, state.adverts[w].mask_pk, rid, b"mask", a, b)
                    (minus if w < v else plus).append(seed)
    except SecAggError as e:
        raise _aborted(state, _abort(state, str(e))) from e
    spec = p.spec
    total = state.acc.copy()
    crypto.apply_masks(total, plus=plus, minus=b_seeds + minus, workers=workers)
    total &= spec.dtype.type((1 << spec.width) - 1)
    vec, counters = encoding.decode(total, spec, len(state.survivors))
    result = AggregateResult(total, vec, counters, state.survivors)
    return dataclasses.replace(state, stage=ServerStage.DONE, inbox={}, acc=None), result


# -- one function per stage (batch form) --------------------------------------------------


def _batch(
    state: ServerState, stage: ServerStage, msgs: Mapping[int, bytes] | list[bytes]
) -> ServerState:
    if state.stage != stage:
        raise ProtocolError(
            f"server stage function for {stage.value} called in stage {state.stage.value}"
        )
    state = dataclasses.replace(
        state, inbox=dict(state.inbox), adverts=dict(state.adverts), signers=dict(state.signers)
    )
    for m in msgs.values() if isinstance(msgs, Mapping) else msgs:
        state = _receive(state, m, copy=False)
    return state


def advertise_keys(
    state: ServerState, msgs: Mapping[int, bytes] | list[bytes]
) -> tuple[ServerState, dict[int, bytes]]:
    return advance(_batch(state, ServerStage.ADVERTISE, msgs))


def share_keys(
    state: ServerState, msgs: Mapping[int, bytes] | list[bytes]
) -> tuple[ServerState, dict[int, bytes]]:
    return advance(_batch(state, ServerStage.SHARE_KEYS, msgs))


def masked_input_collection(
    state: ServerState, msgs: Mapping[int, bytes] | list[bytes]
) -> tuple[ServerState, dict[int, bytes]]:
    return advance(_batch(state, ServerStage.MASKED_INPUT, msgs))


def consistency_check(
    state: ServerState, msgs: Mapping[int, bytes] | list[bytes]
) -> tuple[ServerState, dict[int, bytes]]:
    return advance(_batch(state, ServerStage.CONSISTENCY, msgs))


def unmasking(
    state: ServerState, msgs: Mapping[int, bytes] | list[bytes], workers: int = 1
) -> tuple[ServerState, AggregateResult]:
    return finish(_batch(state, ServerStage.UNMASKING, msgs), workers)
