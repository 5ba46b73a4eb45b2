"""End-to-end rounds, dropouts, aborts, stage guards and adversarial messages (tiny cohorts)."""

import base64
import json

import numpy as np
import pytest

from secagg import (
    SecAggConfig,
    client,
    crypto,
    encoding,
    new_round,
    packing,
    server,
    simulate,
    wire,
)
from secagg.errors import AbortError, CryptoError, InputError, ProtocolError, WireError
from secagg.server import ServerStage

IDS = list(range(1, 11))  # ten clients, degree 4, threshold 3: a genuinely sparse graph
DIM = 37


def _cfg(**kw):
    return SecAggConfig(
        **{"max_cohort": 16, "degree": 4, "num_counters": 2, "counter_bits": 16} | kw
    )


def _far_pair(p):
    """Two clients with no neighbour in common: dropping both leaves every hood 3 of 4."""
    nb = p.neighbours
    for u in IDS:
        for v in IDS:
            if u < v and v not in nb[u] and not set(nb[v]) & set(nb[u]):
                return u, v
    raise AssertionError("no such pair")


class Round:
    """Drives one round stage by stage so tests can intercept and tamper with messages."""

    def __init__(self, label="round-1", ids=IDS, enrolment=None, cfg=None, serialise=False):
        self.p = new_round(cfg or _cfg(), label, ids, DIM)
        self.sks, self.pks = enrolment or simulate.enroll(ids)
        self.c = {u: client.new_client(self.p, u, self.sks[u], self.pks) for u in ids}
        self.s = server.new_server(self.p, self.pks)
        rng = np.random.default_rng(5)
        self.x = {u: rng.standard_normal(DIM).astype(np.float32) * 0.2 for u in ids}
        self.enc = {
            u: encoding.encode(self.x[u], self.p.spec, np.random.default_rng(u), [u, 1000 * u])
            for u in ids
        }
        self.serialise = serialise
        self.out: dict[int, bytes] = {}
        self.sent: dict[str, dict[int, bytes]] = {}
        self.states: dict[str, server.ServerState] = {"advertise": self.s}
        self.cstates: dict[str, client.ClientState] = {"new": self.c[ids[0]]}

    def _restart(self):
        if self.serialise:  # a coordinator restart: state through JSON text and back
            self.s = server.ServerState.from_json(json.loads(json.dumps(self.s.to_json())))
            self.c = {
                u: client.ClientState.from_json(json.loads(json.dumps(st.to_json())))
                for u, st in self.c.items()
            }

    def _clients(self, name, fn, drop, *extra):
        msgs = {}
        for u, m in self.out.items() if self.out else ((u, None) for u in self.c):
            if u in drop:
                continue
            args = (m,) if m is not None else ()
            args += tuple(e[u] for e in extra)
            self.c[u], msgs[u] = fn(self.c[u], *args)
        self.sent[name] = msgs
        first = next(iter(self.c))
        self.cstates[name] = self.c[first]
        return msgs

    def advertise(self, drop=()):
        msgs = self._clients("advert", client.advertise_keys, drop)
        self.s, self.out = server.advertise_keys(self.s, msgs)
        self.states["share_keys"] = self.s
        self._restart()

    def share(self, drop=()):
        msgs = self._clients("shares", client.share_keys, drop)
        self.s, self.out = server.share_keys(self.s, msgs)
        self.states["masked_input"] = self.s
        self._restart()

    def masked(self, drop=()):
        msgs = self._clients("masked", client.masked_input, drop, self.enc)
        self.s, self.out = server.masked_input_collection(self.s, msgs)
        self.states["consistency"] = self.s
        self._restart()

    def consistency(self, drop=()):
        msgs = self._clients("signature", client.consistency_check, drop)
        self.s, self.out = server.consistency_check(self.s, msgs)
        self.states["unmasking"] = self.s
        self._restart()

    def unmask(self, drop=()):
        msgs = self._clients("unmask", client.unmasking, drop)
        self.s, result = server.unmasking(self.s, msgs)
        self.states["done"] = self.s
        return result

    def run(self, drops=None):
        drops = drops or {}
        self.advertise(drops.get("advertise", ()))
        self.share(drops.get("share_keys", ()))
        self.masked(drops.get("masked_input", ()))
        self.consistency(drops.get("consistency", ()))
        return self.unmask(drops.get("unmasking", ()))

    def expected(self, contributors):
        return sum(self.enc[u].astype(np.int64) for u in contributors) % (1 << self.p.spec.width)


def test_graph_is_sparse_in_the_tiny_round():
    r = Round()
    assert r.p.degree == 4 and r.p.threshold == 3
    assert all(len(nb) == 4 for nb in r.p.neighbours.values())


def test_sum_is_exact_without_dropouts():
    r = Round()
    res = r.run()
    assert res.contributors == tuple(IDS)
    assert np.array_equal(res.field_sum.astype(np.int64), r.expected(IDS))
    assert res.counters == (sum(IDS), 1000 * sum(IDS))
    truth = sum(encoding.clip(r.x[u], 1.0).astype(np.float64) for u in IDS)
    step = 2 * r.p.spec.bound / 255
    assert np.abs(res.vector_sum - truth).max() <= len(IDS) * step  # quantisation only
    assert r.s.stage == ServerStage.DONE and r.s.acc is None


@pytest.mark.parametrize(
    "stage,dropped",
    [
        ("advertise", {3}),
        ("share_keys", {4}),
        ("masked_input", {5}),
        ("consistency", {6}),
        ("unmasking", {7}),
        ("masked_input", "two"),
        ("unmasking", "two"),
    ],
)
def test_sum_is_exact_with_dropouts_at_each_stage(stage, dropped):
    r = Round()
    if dropped == "two":
        dropped = set(_far_pair(r.p))
    res = r.run({stage: dropped})
    before_input = stage in ("advertise", "share_keys", "masked_input")
    contributors = [u for u in IDS if not (before_input and u in dropped)]
    assert res.contributors == tuple(contributors)
    assert np.array_equal(res.field_sum.astype(np.int64), r.expected(contributors))
    assert res.counters == (sum(contributors), 1000 * sum(contributors))


def test_simulator_round_with_dropouts_and_weights():
    p = new_round(_cfg(), "sim", IDS, DIM)
    rng = np.random.default_rng(0)
    xs = {u: rng.standard_normal(DIM).astype(np.float32) for u in IDS}
    a, b = _far_pair(p)
    drops = simulate.Dropouts(masked_input=frozenset({a}), unmasking=frozenset({b}))
    rep = simulate.run_round(p, lambda u: (xs[u], [u, 1]), drops, weights=lambda u: 0.5)
    assert rep.result.contributors == tuple(u for u in IDS if u != a)
    assert np.array_equal(rep.result.field_sum.astype(np.uint64), rep.expected_field_sum)
    assert rep.masked_input_bytes == 29 + 5 + p.spec.packed_bytes
    truth = sum(0.5 * encoding.clip(xs[u], 1.0).astype(np.float64) for u in IDS if u != a)
    assert np.abs(rep.result.vector_sum - truth).max() < 9 * 2 / 255


def test_too_many_dropouts_abort_cleanly():
    r = Round()
    r.advertise()
    r.share()
    nb = r.p.neighbours[1]
    with pytest.raises(AbortError, match=r"threshold 3") as e:
        r.masked(drop=set(nb[:2]))  # client 1 keeps 2 of 4 neighbours: below threshold
    assert e.value.state.stage == ServerStage.ABORTED
    assert e.value.state.acc is None  # nothing of the masked inputs is kept


def test_too_many_dropouts_at_unmasking_abort():
    r = Round()
    r.advertise()
    r.share()
    r.masked()
    r.consistency()
    with pytest.raises(AbortError, match=r"shares returned, threshold is 3"):
        r.unmask(drop=set(IDS[:6]))


def test_state_survives_json_round_trips_at_every_stage():
    r = Round(serialise=True)
    a, b = _far_pair(r.p)
    res = r.run({"masked_input": {a}, "unmasking": {b}})
    contributors = [u for u in IDS if u != a]
    assert np.array_equal(res.field_sum.astype(np.int64), r.expected(contributors))


def _full_round():
    r = Round()
    r.run({"masked_input": {5}})
    return r


def test_every_invalid_client_transition_is_refused():
    r = _full_round()
    calls = {
        "new": lambda st: client.advertise_keys(st),
        "advert": lambda st: client.share_keys(st, b""),
        "shares": lambda st: client.masked_input(st, b"", r.enc[1]),
        "masked": lambda st: client.consistency_check(st, b""),
        "signature": lambda st: client.unmasking(st, b""),
    }
    stages = ["new", "advert", "shares", "masked", "signature", "unmask"]
    for held in stages:
        state = r.cstates[held]
        for name, call in calls.items():
            if name == held:
                continue
            with pytest.raises(ProtocolError, match="not allowed in stage"):
                call(state)
    assert r.cstates["unmask"].stage == client.ClientStage.DONE


def test_every_invalid_server_transition_is_refused():
    r = _full_round()
    stage_fns = {
        "advertise": server.advertise_keys,
        "share_keys": server.share_keys,
        "masked_input": server.masked_input_collection,
        "consistency": server.consistency_check,
        "unmasking": server.unmasking,
    }
    kinds = {
        "advertise": r.sent["advert"][1],
        "share_keys": r.sent["shares"][1],
        "masked_input": r.sent["masked"][1],
        "consistency": r.sent["signature"][1],
        "unmasking": r.sent["unmask"][1],
    }
    aborted = server.ServerState(ServerStage.ABORTED, r.p, r.s.identities)
    states = {**r.states, "aborted": aborted}
    for held, state in states.items():
        for name, fn in stage_fns.items():
            if name != held:
                with pytest.raises(ProtocolError, match="called in stage"):
                    fn(state, {})
        for name, msg in kinds.items():
            if name != held:
                with pytest.raises(ProtocolError, match="refuses|accepts no"):
                    server.receive(state, msg)
        if held in ("unmasking", "done", "aborted"):
            with pytest.raises(ProtocolError, match="cannot advance"):
                server.advance(state)
        if held != "unmasking":
            with pytest.raises(ProtocolError, match="cannot finish"):
                server.finish(state)


def test_server_refuses_duplicates_and_dropped_clients():
    r = Round()
    r.advertise(drop={3})
    msgs = r._clients("shares", client.share_keys, ())
    st = server.receive(r.s, msgs[1])
    with pytest.raises(ProtocolError, match="duplicate"):
        server.receive(st, msgs[1])
    late = client.advertise_keys(client.new_client(r.p, 3, r.sks[3], r.pks))[1]
    with pytest.raises(ProtocolError, match="refuses a ADVERT"):
        server.receive(st, late)


def test_forged_advert_is_rejected_by_server_and_client():
    r = Round()
    _, good = client.advertise_keys(r.c[1])
    _, ad = wire.decode(good, wire.MsgType.ADVERT, r.p.round_id, 10_000)
    _, evil_pk = crypto.new_x25519()
    forged = wire.Advert(1, ad.enc_pk, evil_pk, ad.b_commit, ad.signature)  # key swapped
    with pytest.raises(CryptoError, match="advert of client 1 has a bad signature"):
        server.receive(r.s, wire.encode(forged, r.p.round_id, 1, wire.SERVER))
    # signed, but by a key that is not client 1's enrolled identity
    attacker_sk, _ = crypto.new_identity()
    unsigned = wire.Advert(1, ad.enc_pk, evil_pk, ad.b_commit, b"")
    sig = crypto.sign(attacker_sk, unsigned.signed_bytes(r.p.round_id))
    resigned = wire.Advert(1, ad.enc_pk, evil_pk, ad.b_commit, sig)
    with pytest.raises(CryptoError, match="bad signature"):
        server.receive(r.s, wire.encode(resigned, r.p.round_id, 1, wire.SERVER))
    # A server that forwards a forged advert: the neighbour refuses it.
    v = r.p.neighbours[1][0]
    st_v, _ = client.advertise_keys(r.c[v])
    aset = wire.encode(wire.AdvertSet((forged,)), r.p.round_id, wire.SERVER, v)
    with pytest.raises(CryptoError, match=f"client {v}: the advert of client 1 has a bad sig"):
        client.share_keys(st_v, aset)


def test_replayed_message_from_another_round_is_rejected():
    enrolment = simulate.enroll(IDS)
    r1 = Round("round-1", enrolment=enrolment)
    r2 = Round("round-2", enrolment=enrolment)
    r1.advertise()
    _, old = client.advertise_keys(client.new_client(r1.p, 1, r1.sks[1], r1.pks))
    with pytest.raises(ProtocolError, match="belongs to round .* not this round .*replay"):
        server.receive(r2.s, old)
    # Rewriting the round id in the header does not help: the signature covers the round.
    h, ad = wire.decode(old, wire.MsgType.ADVERT, r1.p.round_id, 10_000)
    with pytest.raises(CryptoError, match="bad signature"):
        server.receive(r2.s, wire.encode(ad, r2.p.round_id, 1, wire.SERVER))
    # A client refuses the server's messages of another round too.
    st, _ = client.advertise_keys(r2.c[1])
    with pytest.raises(ProtocolError, match="replay"):
        client.share_keys(st, r1.out[1])


def test_share_for_the_wrong_recipient_is_rejected():
    r = Round()
    r.advertise()
    r.share()
    a = 1
    b = next(v for v in IDS if v != a and set(r.p.neighbours[v]) & set(r.p.neighbours[a]))
    _, body_a = wire.decode(r.out[a], wire.MsgType.ROUTED_SHARES, r.p.round_id, 10**6)
    # (1) the server delivers a's message to b
    with pytest.raises(ProtocolError, match="not from the server to this client"):
        client.masked_input(r.c[b], r.out[a], r.enc[b])
    # (2) a's share, still addressed to a, inside b's message
    sender, _, ct = body_a.entries[0]
    evil = wire.encode(wire.RoutedShares(((sender, a, ct),)), r.p.round_id, wire.SERVER, b)
    with pytest.raises(ProtocolError, match=f"addressed to client {a}"):
        client.masked_input(r.c[b], evil, r.enc[b])
    # (3) a's ciphertext relabelled as addressed to b: authentication fails
    common = next(s for s, _, _ in body_a.entries if s in r.p.neighbours[b])
    ct = next(c for s, _, c in body_a.entries if s == common)
    evil = wire.encode(wire.RoutedShares(((common, b, ct),)), r.p.round_id, wire.SERVER, b)
    with pytest.raises(CryptoError, match=f"share from client {common}.*authentication"):
        client.masked_input(r.c[b], evil, r.enc[b])


def test_malformed_masked_vectors_are_rejected():
    r = Round()
    r.advertise()
    r.share()
    spec = r.p.spec
    st = r.s
    ok = packing.pack(r.enc[1], spec.width)
    cases = {
        "is 40 x 12 bits, expected 41 x 12": wire.MaskedInput(spec.width, spec.length - 1, ok),
        "41 x 11 bits, expected 41 x 12": wire.MaskedInput(spec.width - 1, spec.length, ok),
        "payload bytes": wire.MaskedInput(spec.width, spec.length, ok[:-1]),
    }
    for match, body in cases.items():
        with pytest.raises(WireError, match=match):
            server.receive(st, wire.encode(body, r.p.round_id, 1, wire.SERVER))
    good = wire.encode(wire.MaskedInput(spec.width, spec.length, ok), r.p.round_id, 1, wire.SERVER)
    for bad, match in [
        (good[:20], "shorter than the header"),
        (b"XXXX" + good[4:], "bad magic"),
        (good + b"\0" * (r.p.max_message_bytes()), "exceeds the limit"),
        ("not bytes", "must be bytes"),
    ]:
        with pytest.raises(WireError, match=match):
            server.receive(st, bad)
    assert st.acc is None  # nothing was folded in
    # the client refuses an encoded vector of the wrong type, length or range
    for enc, match in [
        (r.enc[1][:-1], "length"),
        (r.enc[1].astype(np.uint32), "uint16"),
        (np.full(spec.length, 256, spec.dtype), ">= 2\\^8"),
    ]:
        with pytest.raises(InputError, match=match):
            client.masked_input(r.cstates["shares"], r.out.get(1, b""), enc)


def test_random_bytes_never_crash_the_parser():
    rng = np.random.default_rng(0)
    r = Round()
    st = r.s
    for n in (0, 5, 29, 40, 200):
        for _ in range(20):
            buf = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            with pytest.raises((WireError, ProtocolError)):
                server.receive(st, buf)
    # a valid header followed by a lying record count
    _, good = client.advertise_keys(r.c[1])
    r.advertise()
    bogus = good[:29] + (10**6).to_bytes(4, "little")
    with pytest.raises((WireError, ProtocolError)):
        server.receive(r.s, bogus)


def test_server_state_never_holds_an_individual_unmasked_vector():
    r = Round()
    seen = []

    def inspect(st):
        seen.append(st)
        blob = json.dumps(st.to_json())
        for u in IDS:
            packed = base64.b64encode(packing.pack(r.enc[u], r.p.spec.width)).decode()
            assert packed not in blob
            if st.acc is not None:
                assert not np.array_equal(st.acc & 0xFFF, r.enc[u])
            for v in st.__dict__.values():
                if isinstance(v, np.ndarray):
                    assert not np.array_equal(v & 0xFFF, r.enc[u])

    r.advertise()
    r.share()
    msgs = r._clients("masked", client.masked_input, (), r.enc)
    st = r.s
    for m in msgs.values():  # after every single masked input, not just at stage ends
        st = server.receive(st, m)
        inspect(st)
    r.s, r.out = server.advance(st)
    inspect(r.s)
    r.consistency()
    inspect(r.s)
    # the server asks only self-mask shares of survivors and key shares of dropouts
    for smp, kp in r.s.requests.values():
        assert set(smp) <= set(r.s.survivors) and not set(kp) & set(r.s.survivors)
    res = r.unmask()
    inspect(r.s)
    assert np.array_equal(res.field_sum.astype(np.int64), r.expected(IDS))
    assert len(seen) == len(IDS) + 3


def test_client_refuses_to_reveal_both_shares_of_one_peer():
    r = Round()
    r.advertise()
    r.share()
    r.masked(drop={IDS[-1]})
    r.consistency()
    u = IDS[0]
    _, req = wire.decode(r.out[u], wire.MsgType.UNMASK_REQUEST, r.p.round_id, 10**6)
    peer = req.self_mask_peers[0]
    for smp, kp, match in [
        (req.self_mask_peers, (peer,), "both the self-mask and the key share"),
        ((), req.self_mask_peers, "is not a dropout"),
    ]:
        evil = wire.UnmaskRequest(req.signatures, smp, kp)
        with pytest.raises(ProtocolError, match=match):
            client.unmasking(r.c[u], wire.encode(evil, r.p.round_id, wire.SERVER, u))
    # a request whose signatures are not over the same survivor set is refused
    forged = wire.UnmaskRequest(
        tuple((v, bytes(64)) for v, _ in req.signatures), req.self_mask_peers, req.key_peers
    )
    with pytest.raises(CryptoError, match="inconsistent view"):
        client.unmasking(r.c[u], wire.encode(forged, r.p.round_id, wire.SERVER, u))


def test_round_with_random_rotation_decodes_the_sum():
    cfg = _cfg(rotate=True, value_bits=10)
    p = new_round(cfg, "rot", IDS, DIM, rotation_seed=1234)
    assert p.spec.padded_dim == 64
    rng = np.random.default_rng(2)
    xs = {u: rng.standard_normal(DIM).astype(np.float32) * 0.05 for u in IDS}
    rep = simulate.run_round(p, lambda u: (xs[u], [u, 0]), simulate.Dropouts())
    assert np.array_equal(rep.result.field_sum.astype(np.uint64), rep.expected_field_sum)
    truth = sum(encoding.clip(xs[u], 1.0).astype(np.float64) for u in IDS)
    assert rep.result.vector_sum.shape == (DIM,)
    assert np.abs(rep.result.vector_sum - truth).max() < 0.05


@pytest.mark.slow
def test_larger_sparse_round_with_realistic_dropouts_is_exact():
    ids = list(range(200))
    cfg = SecAggConfig(max_cohort=256, expected_dropout=0.15, num_counters=3)
    p = new_round(cfg, "big", ids, 20_000)
    assert p.degree < len(ids) - 1  # sparse
    base = np.random.default_rng(0).standard_normal(20_000).astype(np.float32) * 0.003
    drops = simulate.Dropouts.fractions(ids, np.random.default_rng(3), 0.10, 0.05)
    rep = simulate.run_round(p, lambda u: (base * (1 + u % 3), [u, 1, 2]), drops)
    assert rep.result.num_contributors == 180
    assert np.array_equal(rep.result.field_sum.astype(np.uint64), rep.expected_field_sum)
    assert rep.result.counters[0] == sum(rep.result.contributors)


def test_server_refuses_shares_for_non_neighbours_and_unrequested_unmask_shares():
    r = Round()
    r.advertise()
    u = IDS[0]
    stranger = next(v for v in IDS if v != u and v not in r.p.neighbours[u])
    _, shares = client.share_keys(r.c[u], r.out[u])
    _, body = wire.decode(shares, wire.MsgType.SHARES, r.p.round_id, 10**6)
    bad = wire.Shares(body.entries[:-1] + ((stranger, body.entries[-1][1]),))
    with pytest.raises(ProtocolError, match="expected its live neighbours"):
        server.receive(r.s, wire.encode(bad, r.p.round_id, u, wire.SERVER))
    r.share()
    r.masked()
    r.consistency()
    _, reply = client.unmasking(r.c[u], r.out[u])
    _, body = wire.decode(reply, wire.MsgType.UNMASK_SHARES, r.p.round_id, 10**6)
    peer, _, share = body.entries[0]
    extra = wire.UnmaskShares(body.entries + ((peer, wire.KEY_SHARE, share),))
    with pytest.raises(ProtocolError, match="do not match what was requested"):
        server.receive(r.s, wire.encode(extra, r.p.round_id, u, wire.SERVER))
    server.receive(r.s, reply)  # the genuine reply is accepted
