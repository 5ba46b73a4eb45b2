"""Fixed binary layouts of every protocol message, with strict validation and size limits.

No pickle, no self-describing formats that could execute code: each message is a 29-byte header
(magic "SAG1", type, 16-byte round id, sender, receiver; integers little-endian) and a body of
counted fixed-size records. `decode` checks magic, type, round, sizes and that every byte is
consumed, and raises WireError naming the message, the sender and what was wrong. Client ids are
uint32 below SERVER (0xFFFFFFFF), which stands for the coordinator.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from secagg.crypto import AEAD_OVERHEAD
from secagg.errors import ProtocolError, WireError
from secagg.shamir import SHARE_BYTES

__all__ = [
    "SERVER",
    "MsgType",
    "Header",
    "Advert",
    "AdvertSet",
    "Shares",
    "RoutedShares",
    "MaskedInput",
    "ConsistencyRequest",
    "ConsistencySignature",
    "UnmaskRequest",
    "UnmaskShares",
    "SHARE_PLAINTEXT_BYTES",
    "SHARE_CIPHERTEXT_BYTES",
    "encode",
    "decode",
    "peek",
]

SERVER = 0xFFFFFFFF
MAGIC = b"SAG1"
_HEADER = struct.Struct("<4sB16sII")
MAX_PEERS = 1 << 20  # no list in any message may be longer (config.max_cohort is smaller)
SHARE_PLAINTEXT_BYTES = 4 + 4 + 2 * SHARE_BYTES  # sender, receiver, key share, self-mask share
SHARE_CIPHERTEXT_BYTES = SHARE_PLAINTEXT_BYTES + AEAD_OVERHEAD
KEY, SIG = 32, 64
SELF_MASK, KEY_SHARE = 0, 1  # share kinds revealed at Unmasking


class MsgType(IntEnum):
    ADVERT = 1  # client -> server: signed fresh public keys (AdvertiseKeys)
    ADVERT_SET = 2  # server -> client: the neighbours' adverts
    SHARES = 3  # client -> server: encrypted Shamir shares, one per neighbour (ShareKeys)
    ROUTED_SHARES = 4  # server -> client: the shares addressed to it
    MASKED_INPUT = 5  # client -> server: the packed masked vector (MaskedInputCollection)
    CONSISTENCY_REQUEST = 6  # server -> client: the set of survivors (ConsistencyCheck)
    CONSISTENCY_SIGNATURE = 7  # client -> server: signature over that set
    UNMASK_REQUEST = 8  # server -> client: which share of which peer to reveal (Unmasking)
    UNMASK_SHARES = 9  # client -> server: the revealed shares


@dataclass(frozen=True)
class Header:
    type: MsgType
    round_id: bytes
    sender: int
    receiver: int


@dataclass(frozen=True)
class Advert:
    client: int
    enc_pk: bytes  # X25519, for the share channel
    mask_pk: bytes  # X25519, for pairwise masks
    b_commit: bytes  # SHA-256 commitment to the self-mask seed
    signature: bytes  # Ed25519 by the enrolled identity key over signed_bytes(round_id)

    SIZE = 4 + 3 * KEY + SIG

    def signed_bytes(self, round_id: bytes) -> bytes:
        return (
            b"secagg/advert"
            + round_id
            + _u32(self.client)
            + self.enc_pk
            + self.mask_pk
            + self.b_commit
        )


@dataclass(frozen=True)
class AdvertSet:
    adverts: tuple[Advert, ...]


@dataclass(frozen=True)
class Shares:
    entries: tuple[tuple[int, bytes], ...]  # (receiver, ciphertext)


@dataclass(frozen=True)
class RoutedShares:
    entries: tuple[tuple[int, int, bytes], ...]  # (sender, receiver, ciphertext)


@dataclass(frozen=True)
class MaskedInput:
    width: int
    length: int
    payload: bytes | memoryview  # packing.pack(masked, width)


@dataclass(frozen=True)
class ConsistencyRequest:
    survivors: tuple[int, ...]  # sorted ids that sent masked inputs

    def signed_bytes(self, round_id: bytes) -> bytes:
        return b"secagg/consistency" + round_id + np.asarray(self.survivors, "<u4").tobytes()


@dataclass(frozen=True)
class ConsistencySignature:
    signature: bytes


@dataclass(frozen=True)
class UnmaskRequest:
    signatures: tuple[tuple[int, bytes], ...]  # neighbours' consistency signatures
    self_mask_peers: tuple[int, ...]  # survivors: reveal their self-mask seed shares
    key_peers: tuple[int, ...]  # dropped: reveal their mask-key shares


@dataclass(frozen=True)
class UnmaskShares:
    entries: tuple[tuple[int, int, bytes], ...]  # (peer, SELF_MASK | KEY_SHARE, share)


Body = (
    Advert
    | AdvertSet
    | Shares
    | RoutedShares
    | MaskedInput
    | ConsistencyRequest
    | ConsistencySignature
    | UnmaskRequest
    | UnmaskShares
)
_TYPES: dict[type, MsgType] = {
    Advert: MsgType.ADVERT,
    AdvertSet: MsgType.ADVERT_SET,
    Shares: MsgType.SHARES,
    RoutedShares: MsgType.ROUTED_SHARES,
    MaskedInput: MsgType.MASKED_INPUT,
    ConsistencyRequest: MsgType.CONSISTENCY_REQUEST,
    ConsistencySignature: MsgType.CONSISTENCY_SIGNATURE,
    UnmaskRequest: MsgType.UNMASK_REQUEST,
    UnmaskShares: MsgType.UNMASK_SHARES,
}


def _u32(x: int) -> bytes:
    return struct.pack("<I", x)


def _ids(ids: tuple[int, ...]) -> bytes:
    return _u32(len(ids)) + np.asarray(ids, "<u4").tobytes()


def encode(body: Body, round_id: bytes, sender: int, receiver: int) -> bytes:
    if len(round_id) != 16:
        raise ValueError("round_id must be 16 bytes")
    head = _HEADER.pack(MAGIC, _TYPES[type(body)], round_id, sender, receiver)
    match body:
        case Advert():
            rest = _u32(body.client) + body.enc_pk + body.mask_pk + body.b_commit + body.signature
        case AdvertSet():
            rest = _u32(len(body.adverts)) + b"".join(
                _u32(a.client) + a.enc_pk + a.mask_pk + a.b_commit + a.signature
                for a in body.adverts
            )
        case Shares():
            rest = _u32(len(body.entries)) + b"".join(_u32(r) + c for r, c in body.entries)
        case RoutedShares():
            rest = _u32(len(body.entries)) + b"".join(
                _u32(s) + _u32(r) + c for s, r, c in body.entries
            )
        case MaskedInput():
            rest = struct.pack("<BI", body.width, body.length) + body.payload
        case ConsistencyRequest():
            rest = _ids(body.survivors)
        case ConsistencySignature():
            rest = body.signature
        case UnmaskRequest():
            rest = (
                _u32(len(body.signatures))
                + b"".join(_u32(u) + s for u, s in body.signatures)
                + _ids(body.self_mask_peers)
                + _ids(body.key_peers)
            )
        case UnmaskShares():
            rest = _u32(len(body.entries)) + b"".join(
                _u32(p) + bytes([k]) + s for p, k, s in body.entries
            )
    return head + rest


class _Reader:
    def __init__(self, buf: bytes, what: str) -> None:
        self.buf, self.pos, self.what = memoryview(buf), 0, what

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise WireError(f"{self.what}: truncated at byte {self.pos}, needs {n} more")
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out

    def rest(self) -> memoryview:
        out = self.buf[self.pos :]
        self.pos = len(self.buf)
        return out

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def count(self, record: int, limit: int) -> int:
        n = self.u32()
        if n > limit or n * record > len(self.buf) - self.pos:
            raise WireError(f"{self.what}: list of {n} records exceeds the limit or the message")
        return n

    def ids(self, limit: int) -> tuple[int, ...]:
        n = self.count(4, limit)
        ids = tuple(struct.unpack(f"<{n}I", self.take(4 * n)))
        if any(b <= a for a, b in zip(ids, ids[1:], strict=False)):
            raise WireError(f"{self.what}: id list is not strictly increasing")
        return ids

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise WireError(f"{self.what}: {len(self.buf) - self.pos} trailing bytes")


def peek(buf: bytes) -> Header:
    """The validated header alone (to route a message before decoding its body)."""
    if not isinstance(buf, bytes | bytearray | memoryview):
        raise WireError(f"message must be bytes, got {type(buf).__name__}")
    if len(buf) < _HEADER.size:
        raise WireError(f"message of {len(buf)} bytes is shorter than the header")
    magic, t, rid, s, r = _HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise WireError(f"bad magic {magic!r}: not a SecAgg message")
    try:
        mt = MsgType(t)
    except ValueError:
        raise WireError(f"unknown message type {t}") from None
    return Header(mt, rid, s, r)


def decode(
    buf: bytes, expected: MsgType, round_id: bytes, max_bytes: int, limit: int = MAX_PEERS
) -> tuple[Header, Body]:
    """Parse and validate one message of type `expected` for `round_id` (at most max_bytes)."""
    if len(buf) > max_bytes:
        raise WireError(f"{expected.name}: {len(buf)} bytes exceeds the limit of {max_bytes}")
    h = peek(buf)
    what = f"{h.type.name} from {'server' if h.sender == SERVER else f'client {h.sender}'}"
    if h.type != expected:
        raise ProtocolError(f"expected a {expected.name} message, got {what}")
    if h.round_id != round_id:
        raise ProtocolError(
            f"{what} belongs to round {h.round_id.hex()}, not this round {round_id.hex()} (replay?)"
        )
    r = _Reader(buf, what)
    r.take(_HEADER.size)
    body: Body
    match expected:
        case MsgType.ADVERT:
            body = _advert(r)
        case MsgType.ADVERT_SET:
            body = AdvertSet(tuple(_advert(r) for _ in range(r.count(Advert.SIZE, limit))))
        case MsgType.SHARES:
            n = r.count(4 + SHARE_CIPHERTEXT_BYTES, limit)
            body = Shares(tuple((r.u32(), r.take(SHARE_CIPHERTEXT_BYTES)) for _ in range(n)))
        case MsgType.ROUTED_SHARES:
            n = r.count(8 + SHARE_CIPHERTEXT_BYTES, limit)
            body = RoutedShares(
                tuple((r.u32(), r.u32(), r.take(SHARE_CIPHERTEXT_BYTES)) for _ in range(n))
            )
        case MsgType.MASKED_INPUT:
            width, length = struct.unpack("<BI", r.take(5))
            body = MaskedInput(width, length, r.rest())  # zero-copy view of the payload
        case MsgType.CONSISTENCY_REQUEST:
            body = ConsistencyRequest(r.ids(limit))
        case MsgType.CONSISTENCY_SIGNATURE:
            body = ConsistencySignature(r.take(SIG))
        case MsgType.UNMASK_REQUEST:
            n = r.count(4 + SIG, limit)
            sigs = tuple((r.u32(), r.take(SIG)) for _ in range(n))
            body = UnmaskRequest(sigs, r.ids(limit), r.ids(limit))
        case MsgType.UNMASK_SHARES:
            n = r.count(5 + SHARE_BYTES, limit)
            entries = []
            for _ in range(n):
                peer, kind = r.u32(), r.take(1)[0]
                if kind not in (SELF_MASK, KEY_SHARE):
                    raise WireError(f"{what}: unknown share kind {kind} for peer {peer}")
                entries.append((peer, kind, r.take(SHARE_BYTES)))
            body = UnmaskShares(tuple(entries))
    r.done()
    return h, body


def _advert(r: _Reader) -> Advert:
    return Advert(r.u32(), r.take(KEY), r.take(KEY), r.take(KEY), r.take(SIG))
