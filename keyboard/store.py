"""The device's encrypted local store: what the user typed never rests in plaintext.

One JSON document per file, sealed with AES-256-GCM (pycryptodome) under a key that never
leaves the device (`keyboard.keys`). Each write seals the whole document under a fresh random
nonce and replaces the file atomically, so a crash leaves the previous version intact. The
file header (magic, format version, document name) is authenticated as associated data, so
a file swapped in from another store, a flipped bit or a truncation is detected and reported
as `StoreCorruptError`, never silently dropped.

Layout: MAGIC (8) | nonce (12) | tag (16) | ciphertext.
"""

import json
from pathlib import Path
from typing import Any

from Crypto.Cipher import AES
from Crypto.Random import get_random_bytes

from model.checkpoint import atomic_write_bytes

__all__ = [
    "StoreError",
    "StoreCorruptError",
    "seal_bytes",
    "open_bytes",
    "seal",
    "open_sealed",
    "SealedDocument",
]

MAGIC = b"SOTTOST1"
NONCE_LEN, TAG_LEN, KEY_LEN = 12, 16, 32


class StoreError(Exception):
    """The store cannot be used (bad key, unreadable file)."""


class StoreCorruptError(StoreError):
    """The store file exists but is truncated, tampered with, or sealed under another key."""


def seal_bytes(payload: bytes, key: bytes, name: str) -> bytes:
    """Encrypt and authenticate `payload` under the document name `name`."""
    if len(key) != KEY_LEN:
        raise StoreError(f"store key must be {KEY_LEN} bytes, got {len(key)}")
    nonce = get_random_bytes(NONCE_LEN)
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=TAG_LEN)
    cipher.update(MAGIC + name.encode())
    ct, tag = cipher.encrypt_and_digest(payload)
    return MAGIC + nonce + tag + ct


def open_bytes(blob: bytes, key: bytes, name: str, source: str = "store") -> bytes:
    """The payload `seal_bytes` sealed; `StoreCorruptError` saying what is wrong otherwise."""
    header = len(MAGIC) + NONCE_LEN + TAG_LEN
    if len(blob) < header:
        raise StoreCorruptError(f"{source}: truncated ({len(blob)} bytes, header is {header})")
    if blob[: len(MAGIC)] != MAGIC:
        raise StoreCorruptError(f"{source}: not a Sotto store (bad magic {blob[:8]!r})")
    nonce = blob[len(MAGIC) : len(MAGIC) + NONCE_LEN]
    tag = blob[len(MAGIC) + NONCE_LEN : header]
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=TAG_LEN)
    cipher.update(MAGIC + name.encode())
    try:
        return cipher.decrypt_and_verify(blob[header:], tag)
    except ValueError as e:
        raise StoreCorruptError(
            f"{source}: authentication failed (tampered, truncated, or another key)"
        ) from e


def seal(document: Any, key: bytes, name: str) -> bytes:
    """`seal_bytes` of a JSON-serialisable document."""
    return seal_bytes(json.dumps(document, separators=(",", ":")).encode(), key, name)


def open_sealed(blob: bytes, key: bytes, name: str, source: str = "store") -> Any:
    """The document `seal` wrote."""
    return json.loads(open_bytes(blob, key, name, source))


class SealedDocument:
    """A JSON document kept sealed in one file; `load` returns `default` if there is no file."""

    def __init__(self, path: Path, key: bytes, default: Any) -> None:
        self.path = Path(path)
        self.key = key
        self.default = default
        self.name = self.path.name

    def load(self) -> Any:
        if not self.path.exists():
            return json.loads(json.dumps(self.default))  # a fresh copy
        return open_sealed(self.path.read_bytes(), self.key, self.name, str(self.path))

    def save(self, document: Any) -> None:
        atomic_write_bytes(self.path, seal(document, self.key, self.name))

    def wipe(self) -> None:
        """Remove the file (forget-my-data); the key alone can no longer recover anything."""
        self.path.unlink(missing_ok=True)
