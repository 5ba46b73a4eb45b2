"""The server's round state: stages, the serialisable ServerState, and the round's result.

ServerState is immutable except for `acc`, the running sum of masked vectors (updated in place
for speed, see `secagg.server.receive`). `to_json` / `from_json` carry it through a database or
a restart: the accumulator is stored packed at the field width (base64), everything else as hex.
"""

from __future__ import annotations

import base64
import functools
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from secagg import packing, wire
from secagg.params import RoundParams

__all__ = ["ServerStage", "ServerState", "AggregateResult", "COLLECTS"]


class ServerStage(StrEnum):
    ADVERTISE = "advertise"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    CONSISTENCY = "consistency"
    UNMASKING = "unmasking"
    DONE = "done"
    ABORTED = "aborted"


COLLECTS = {  # the client message each collecting stage accepts
    ServerStage.ADVERTISE: wire.MsgType.ADVERT,
    ServerStage.SHARE_KEYS: wire.MsgType.SHARES,
    ServerStage.MASKED_INPUT: wire.MsgType.MASKED_INPUT,
    ServerStage.CONSISTENCY: wire.MsgType.CONSISTENCY_SIGNATURE,
    ServerStage.UNMASKING: wire.MsgType.UNMASK_SHARES,
}


@dataclass(frozen=True)
class AggregateResult:
    field_sum: np.ndarray  # exact sum of the survivors' encoded vectors in Z_{2^width}
    vector_sum: np.ndarray  # decoded float64 sum of their (clipped, weighted) updates
    counters: tuple[int, ...]  # exact sums of the extra_ints counters
    contributors: tuple[int, ...]  # ids whose inputs are in the sum

    @property
    def num_contributors(self) -> int:
        return len(self.contributors)


@dataclass(frozen=True)
class ServerState:
    stage: ServerStage
    params: RoundParams
    identities: dict[int, bytes]  # enrolled Ed25519 public keys of the cohort
    adverts: dict[int, wire.Advert] = field(default_factory=dict)  # U1 and their keys
    inbox: dict[int, Any] = field(default_factory=dict)  # this stage's validated messages
    shared: tuple[int, ...] = ()  # U2: sent their shares
    survivors: tuple[int, ...] = ()  # U3: sent masked inputs
    signers: dict[int, bytes] = field(default_factory=dict)  # U4: consistency signatures
    requests: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    acc: np.ndarray | None = None  # running sum of masked vectors (mod 2^width); never one input
    aborted: str = ""

    @functools.cached_property
    def routed(self) -> frozenset[int]:
        return frozenset(self.shared)

    @functools.cached_property
    def signers_wanted(self) -> dict[int, bytes]:
        """What each survivor must sign at ConsistencyCheck (the same bytes for all)."""
        signed = wire.ConsistencyRequest(self.survivors).signed_bytes(self.params.round_id)
        return dict.fromkeys(self.survivors, signed)

    # -- serialisation ------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        inbox: dict[str, Any] = {}
        for k, v in self.inbox.items():
            if isinstance(v, wire.Shares):
                inbox[str(k)] = [[r, c.hex()] for r, c in v.entries]
            elif isinstance(v, wire.UnmaskShares):
                inbox[str(k)] = [[p, kind, s.hex()] for p, kind, s in v.entries]
            else:  # adverts and masked inputs are folded in on receipt
                inbox[str(k)] = None
        acc = None
        if self.acc is not None:
            w = self.params.spec.width
            acc = base64.b64encode(packing.pack(self.acc & self.acc.dtype.type((1 << w) - 1), w))
        return {
            "stage": self.stage.value,
            "params": self.params.to_json(),
            "identities": {str(k): v.hex() for k, v in self.identities.items()},
            "adverts": {
                str(k): [a.enc_pk.hex(), a.mask_pk.hex(), a.b_commit.hex(), a.signature.hex()]
                for k, a in self.adverts.items()
            },
            "inbox": inbox,
            "shared": list(self.shared),
            "survivors": list(self.survivors),
            "signers": {str(k): v.hex() for k, v in self.signers.items()},
            "requests": {str(k): [list(a), list(b)] for k, (a, b) in self.requests.items()},
            "acc": None if acc is None else acc.decode(),
            "aborted": self.aborted,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ServerState:
        h = bytes.fromhex
        params = RoundParams.from_json(d["params"])
        stage = ServerStage(d["stage"])
        inbox: dict[int, Any] = {}
        for k, v in d["inbox"].items():
            if stage == ServerStage.SHARE_KEYS:
                inbox[int(k)] = wire.Shares(tuple((int(r), h(c)) for r, c in v))
            elif stage == ServerStage.UNMASKING:
                inbox[int(k)] = wire.UnmaskShares(tuple((int(p), int(t), h(s)) for p, t, s in v))
            else:
                inbox[int(k)] = None
        acc = None
        if d["acc"] is not None:
            acc = packing.unpack(base64.b64decode(d["acc"]), params.spec.width, params.spec.length)
        return cls(
            stage=stage,
            params=params,
            identities={int(k): h(v) for k, v in d["identities"].items()},
            adverts={
                int(k): wire.Advert(int(k), h(a[0]), h(a[1]), h(a[2]), h(a[3]))
                for k, a in d["adverts"].items()
            },
            inbox=inbox,
            shared=tuple(d["shared"]),
            survivors=tuple(d["survivors"]),
            signers={int(k): h(v) for k, v in d["signers"].items()},
            requests={int(k): (tuple(a), tuple(b)) for k, (a, b) in d["requests"].items()},
            acc=acc,
            aborted=d["aborted"],
        )
