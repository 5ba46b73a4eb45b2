"""The client (device) side of SecAgg+ as an explicit state machine.

Stages (Bonawitz et al. 2017, Fig. 4; neighbourhoods from Bell et al. 2020):
  NEW -advertise_keys-> ADVERTISED -share_keys-> SHARED -masked_input-> MASKED
      -consistency_check-> CONFIRMED -unmasking-> DONE
Each stage function takes the state and the server's message (bytes) and returns the new state
and the client's reply (bytes). A call in any other stage raises ProtocolError and leaves the
state unchanged. States are immutable and serialise with `to_json` / `from_json` (they hold
the round's secret keys: keep them in the device's encrypted store).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from secagg import crypto, packing, shamir, wire
from secagg.errors import AbortError, CryptoError, InputError, ProtocolError
from secagg.params import RoundParams

__all__ = [
    "ClientStage",
    "ClientState",
    "new_client",
    "advertise_keys",
    "share_keys",
    "masked_input",
    "consistency_check",
    "unmasking",
]


class ClientStage(StrEnum):
    NEW = "new"
    ADVERTISED = "advertised"
    SHARED = "shared"
    MASKED = "masked"
    CONFIRMED = "confirmed"
    DONE = "done"


@dataclass(frozen=True)
class ClientState:
    stage: ClientStage
    params: RoundParams
    client_id: int
    identity_sk: bytes  # enrolled Ed25519 identity (long-term)
    peer_identities: dict[int, bytes]  # neighbours' enrolled Ed25519 public keys
    enc_sk: bytes = b""  # fresh X25519 key of the share channel
    mask_sk: bytes = b""  # fresh X25519 key of the pairwise masks
    b_seed: bytes = b""  # fresh self-mask seed
    peers: dict[int, tuple[bytes, bytes, bytes]] = field(default_factory=dict)  # live adverts
    held: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # (key, self-mask) shares
    survivors: tuple[int, ...] = ()  # the survivor set this client signed
    revealed: dict[int, int] = field(default_factory=dict)  # peer -> kind of share revealed

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage.value,
            "params": self.params.to_json(),
            "client_id": self.client_id,
            "identity_sk": self.identity_sk.hex(),
            "peer_identities": {str(k): v.hex() for k, v in self.peer_identities.items()},
            "enc_sk": self.enc_sk.hex(),
            "mask_sk": self.mask_sk.hex(),
            "b_seed": self.b_seed.hex(),
            "peers": {str(k): [x.hex() for x in v] for k, v in self.peers.items()},
            "held": {str(k): [x.hex() for x in v] for k, v in self.held.items()},
            "survivors": list(self.survivors),
            "revealed": {str(k): v for k, v in self.revealed.items()},
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClientState:
        h = bytes.fromhex
        return cls(
            stage=ClientStage(d["stage"]),
            params=RoundParams.from_json(d["params"]),
            client_id=int(d["client_id"]),
            identity_sk=h(d["identity_sk"]),
            peer_identities={int(k): h(v) for k, v in d["peer_identities"].items()},
            enc_sk=h(d["enc_sk"]),
            mask_sk=h(d["mask_sk"]),
            b_seed=h(d["b_seed"]),
            peers={int(k): tuple(h(x) for x in v) for k, v in d["peers"].items()},
            held={int(k): tuple(h(x) for x in v) for k, v in d["held"].items()},
            survivors=tuple(int(x) for x in d["survivors"]),
            revealed={int(k): int(v) for k, v in d["revealed"].items()},
        )


def _guard(state: ClientState, expected: ClientStage, action: str) -> None:
    if state.stage != expected:
        raise ProtocolError(
            f"client {state.client_id}: {action} is not allowed in stage {state.stage.value}; "
            f"it needs stage {expected.value}"
        )


def _decode(state: ClientState, buf: bytes, t: wire.MsgType) -> Any:
    p = state.params
    h, body = wire.decode(buf, t, p.round_id, p.max_message_bytes(), len(p.cohort))
    if h.sender != wire.SERVER or h.receiver != state.client_id:
        raise ProtocolError(
            f"client {state.client_id}: {t.name} from {h.sender} to {h.receiver} is not "
            f"from the server to this client"
        )
    return body


def _send(state: ClientState, body: wire.Body) -> bytes:
    return wire.encode(body, state.params.round_id, state.client_id, wire.SERVER)


def new_client(
    params: RoundParams, client_id: int, identity_sk: bytes, identities: dict[int, bytes]
) -> ClientState:
    """A client of the round; `identities` maps enrolled ids to Ed25519 public keys (a PKI)."""
    if client_id not in params.cohort:
        raise ProtocolError(f"client {client_id} is not in the round's cohort")
    nb = params.neighbours[client_id]
    missing = [v for v in nb if v not in identities]
    if missing:
        raise InputError(f"client {client_id}: no enrolled identity key for neighbours {missing}")
    return ClientState(
        ClientStage.NEW, params, client_id, identity_sk, {v: identities[v] for v in nb}
    )


def advertise_keys(state: ClientState) -> tuple[ClientState, bytes]:
    """Fresh X25519 keys and self-mask seed; a signed advert of the public parts."""
    _guard(state, ClientStage.NEW, "AdvertiseKeys")
    enc_sk, enc_pk = crypto.new_x25519()
    mask_sk, mask_pk = crypto.new_x25519()
    b_seed = crypto.random_bytes(32)
    rid, u = state.params.round_id, state.client_id
    ad = wire.Advert(u, enc_pk, mask_pk, crypto.commit(rid, u, b_seed), b"")
    ad = dataclasses.replace(ad, signature=crypto.sign(state.identity_sk, ad.signed_bytes(rid)))
    new = dataclasses.replace(
        state, stage=ClientStage.ADVERTISED, enc_sk=enc_sk, mask_sk=mask_sk, b_seed=b_seed
    )
    return new, _send(state, ad)


def _share_aad(rid: bytes, sender: int, receiver: int) -> bytes:
    return b"secagg/share" + rid + sender.to_bytes(4, "little") + receiver.to_bytes(4, "little")


def share_keys(state: ClientState, advert_set: bytes) -> tuple[ClientState, bytes]:
    """Verify the neighbours' adverts; send each an encrypted share of mask_sk and b_seed."""
    _guard(state, ClientStage.ADVERTISED, "ShareKeys")
    p, u = state.params, state.client_id
    body: wire.AdvertSet = _decode(state, advert_set, wire.MsgType.ADVERT_SET)
    peers: dict[int, tuple[bytes, bytes, bytes]] = {}
    for ad in body.adverts:
        if ad.client not in state.peer_identities:
            raise ProtocolError(f"client {u}: ShareKeys got an advert of non-neighbour {ad.client}")
        if ad.client in peers:
            raise ProtocolError(f"client {u}: ShareKeys got two adverts of client {ad.client}")
        if not crypto.verify(
            state.peer_identities[ad.client], ad.signed_bytes(p.round_id), ad.signature
        ):
            raise CryptoError(
                f"client {u}: the advert of client {ad.client} has a bad signature "
                f"(forged, or from another round)"
            )
        peers[ad.client] = (ad.enc_pk, ad.mask_pk, ad.b_commit)
    if len(peers) < p.threshold:
        raise AbortError(
            f"client {u}: ShareKeys with {len(peers)} live neighbours, threshold {p.threshold}"
        )
    order = sorted(peers)
    xs = [v + 1 for v in order]  # Shamir point of holder v is v + 1 (never zero)
    k_shares = shamir.split(state.mask_sk, xs, p.threshold)
    b_shares = shamir.split(state.b_seed, xs, p.threshold)
    entries = []
    enc_key = crypto.x25519_key(state.enc_sk)
    for v, (_, ks), (_, bs) in zip(order, k_shares, b_shares, strict=True):
        key = crypto.agree(enc_key, peers[v][0], p.round_id, b"share", u, v)
        plain = u.to_bytes(4, "little") + v.to_bytes(4, "little") + ks + bs
        entries.append((v, crypto.aead_encrypt(key, plain, _share_aad(p.round_id, u, v))))
    new = dataclasses.replace(state, stage=ClientStage.SHARED, peers=peers)
    return new, _send(state, wire.Shares(tuple(entries)))


def _mask_seed(state: ClientState, key: object, v: int) -> bytes:
    a, b = min(state.client_id, v), max(state.client_id, v)
    return crypto.agree(key, state.peers[v][1], state.params.round_id, b"mask", a, b)


def masked_input(
    state: ClientState, routed_shares: bytes, encoded: np.ndarray
) -> tuple[ClientState, bytes]:
    """Keep the neighbours' shares; send encoded + PRG(b) + sum_v +-PRG(s_uv), packed.

    `encoded` comes from `secagg.encoding.encode` with this round's spec.
    """
    _guard(state, ClientStage.SHARED, "MaskedInputCollection")
    p, u = state.params, state.client_id
    spec = p.spec
    enc = np.asarray(encoded)
    if enc.shape != (spec.length,) or enc.dtype != spec.dtype:
        raise InputError(
            f"client {u}: encoded input must be {spec.dtype} of length {spec.length}, "
            f"got {enc.dtype} of shape {enc.shape}"
        )
    if int(enc.max(initial=0)) >> spec.value_bits:
        raise InputError(f"client {u}: encoded input has values >= 2^{spec.value_bits}")
    body: wire.RoutedShares = _decode(state, routed_shares, wire.MsgType.ROUTED_SHARES)
    held: dict[int, tuple[bytes, bytes]] = {}
    enc_key = crypto.x25519_key(state.enc_sk)
    for sender, receiver, ct in body.entries:
        if receiver != u:
            raise ProtocolError(
                f"client {u}: got a share from client {sender} addressed to client {receiver}"
            )
        if sender not in state.peers or sender in held:
            raise ProtocolError(f"client {u}: unexpected or repeated share from client {sender}")
        key = crypto.agree(enc_key, state.peers[sender][0], p.round_id, b"share", sender, u)
        try:
            plain = crypto.aead_decrypt(key, ct, _share_aad(p.round_id, sender, u))
        except CryptoError as e:
            raise CryptoError(f"client {u}: share from client {sender}: {e}") from e
        if plain[:8] != sender.to_bytes(4, "little") + u.to_bytes(4, "little"):
            raise ProtocolError(f"client {u}: share from client {sender} names another pair")
        held[sender] = (plain[8 : 8 + shamir.SHARE_BYTES], plain[8 + shamir.SHARE_BYTES :])
    if len(held) < p.threshold:
        raise AbortError(
            f"client {u}: MaskedInputCollection with {len(held)} neighbours' shares, "
            f"threshold {p.threshold}"
        )
    masked = enc.copy()
    mask_key = crypto.x25519_key(state.mask_sk)
    seeds = {v: _mask_seed(state, mask_key, v) for v in held}
    crypto.apply_masks(
        masked,
        plus=[state.b_seed] + [s for v, s in seeds.items() if u < v],
        minus=[s for v, s in seeds.items() if v < u],
    )
    masked &= spec.dtype.type((1 << spec.width) - 1)
    msg = wire.MaskedInput(spec.width, spec.length, packing.pack(masked, spec.width))
    return dataclasses.replace(state, stage=ClientStage.MASKED, held=held), _send(state, msg)


def consistency_check(state: ClientState, request: bytes) -> tuple[ClientState, bytes]:
    """Sign the server's survivor set, so neighbours can check they all saw the same one."""
    _guard(state, ClientStage.MASKED, "ConsistencyCheck")
    p, u = state.params, state.client_id
    body: wire.ConsistencyRequest = _decode(state, request, wire.MsgType.CONSISTENCY_REQUEST)
    if u not in body.survivors:
        raise ProtocolError(f"client {u}: ConsistencyCheck survivor set omits this client")
    if len(body.survivors) < p.config.min_contributors or not set(body.survivors) <= set(p.cohort):
        raise ProtocolError(f"client {u}: ConsistencyCheck survivor set is too small or foreign")
    sig = crypto.sign(state.identity_sk, body.signed_bytes(p.round_id))
    new = dataclasses.replace(state, stage=ClientStage.CONFIRMED, survivors=body.survivors)
    return new, _send(state, wire.ConsistencySignature(sig))


def unmasking(state: ClientState, request: bytes) -> tuple[ClientState, bytes]:
    """Reveal self-mask shares of surviving and key shares of dropped neighbours, never both."""
    _guard(state, ClientStage.CONFIRMED, "Unmasking")
    p, u = state.params, state.client_id
    body: wire.UnmaskRequest = _decode(state, request, wire.MsgType.UNMASK_REQUEST)
    survivors = set(state.survivors)
    signed = wire.ConsistencyRequest(state.survivors).signed_bytes(p.round_id)
    good: set[int] = set()
    for v, sig in body.signatures:
        if v not in state.peer_identities or v not in survivors:
            raise ProtocolError(f"client {u}: Unmasking carries a signature of non-neighbour {v}")
        if len(good) >= p.threshold or v in good:
            continue  # t matching views suffice (Bonawitz et al. 2017, ConsistencyCheck)
        if not crypto.verify(state.peer_identities[v], signed, sig):
            raise CryptoError(
                f"client {u}: neighbour {v} did not sign the same survivor set (inconsistent view)"
            )
        good.add(v)
    if len(good) < p.threshold:
        raise AbortError(
            f"client {u}: Unmasking with {len(good)} consistency signatures, "
            f"threshold {p.threshold}"
        )
    both = set(body.self_mask_peers) & set(body.key_peers)
    if both:
        raise ProtocolError(
            f"client {u}: Unmasking asks for both the self-mask and the key share of "
            f"client(s) {sorted(both)}; refusing"
        )
    for v in body.self_mask_peers:
        if v not in survivors or v not in state.held:
            raise ProtocolError(
                f"client {u}: self-mask share of {v} asked, but {v} did not survive"
            )
    for v in body.key_peers:
        if v in survivors or v not in state.held:
            raise ProtocolError(f"client {u}: key share of {v} asked, but {v} is not a dropout")
    kinds = {v: wire.SELF_MASK for v in body.self_mask_peers}
    kinds |= {v: wire.KEY_SHARE for v in body.key_peers}
    for v, k in kinds.items():
        if state.revealed.get(v, k) != k:
            raise ProtocolError(f"client {u}: already revealed the other share of client {v}")
    entries = tuple(
        (v, k, state.held[v][1] if k == wire.SELF_MASK else state.held[v][0])
        for v, k in sorted(kinds.items())
    )
    new = dataclasses.replace(state, stage=ClientStage.DONE, revealed={**state.revealed, **kinds})
    return new, _send(state, wire.UnmaskShares(entries))
