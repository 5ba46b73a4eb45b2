"""The privacy log: every request the device made, with exactly what it carried.

Shown to the user in the keyboard UI. Each entry says when, to where, how many bytes went up
and came down, and what the request contained: a masked vector, a model download, or — in
cloud mode — the raw text, verbatim, so the user sees exactly what left the phone. The log
holds typed text (cloud mode), so it is sealed like the rest of the local store.
"""

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args

from keyboard.store import SealedDocument

__all__ = ["Kind", "KINDS", "Entry", "PrivacyLog"]

Kind = Literal[
    "enrol",  # identity public key and device id
    "checkin",  # device id and model version: no text
    "model_download",  # a LiteRT model file came down
    "device_part_download",  # the global device part came down
    "secagg",  # key adverts, encrypted shares, unmasking shares: no text, no update
    "masked_vector",  # the device's update, masked: indistinguishable from random
    "raw_text",  # cloud mode: what was typed, in the clear (to the coordinator)
]
KINDS: tuple[str, ...] = get_args(Kind)


@dataclass(frozen=True)
class Entry:
    at: float  # unix time of the request
    method: str  # HTTP method
    endpoint: str  # path on the coordinator
    kind: str  # one of KINDS
    bytes_up: int  # request body bytes
    bytes_down: int  # response body bytes
    contents: str  # raw text verbatim for "raw_text", else a description of the payload


class PrivacyLog:
    """Append-only list of `Entry`, sealed on disk after every append."""

    def __init__(self, path: Path, key: bytes) -> None:
        self._doc = SealedDocument(path, key, default=[])
        self._entries = [Entry(**e) for e in self._doc.load()]

    def record(
        self,
        method: str,
        endpoint: str,
        kind: str,
        bytes_up: int,
        bytes_down: int,
        contents: str,
        at: float | None = None,
    ) -> Entry:
        if kind not in KINDS:
            raise ValueError(f"unknown privacy-log kind {kind!r}; known: {KINDS}")
        entry = Entry(time.time() if at is None else at, method, endpoint, kind, bytes_up,
                      bytes_down, contents)  # fmt: skip
        self._entries.append(entry)
        self._doc.save([asdict(e) for e in self._entries])
        return entry

    def entries(self) -> list[Entry]:
        return list(self._entries)

    def totals(self) -> dict[str, dict[str, int]]:
        """Requests and bytes up/down per kind."""
        out: dict[str, dict[str, int]] = {}
        for e in self._entries:
            t = out.setdefault(e.kind, {"requests": 0, "bytes_up": 0, "bytes_down": 0})
            t["requests"] += 1
            t["bytes_up"] += e.bytes_up
            t["bytes_down"] += e.bytes_down
        return out

    def wipe(self) -> None:
        self._entries = []
        self._doc.wipe()
