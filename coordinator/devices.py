"""Device enrolment and bearer-token authentication.

A token is 32 random bytes from `secrets`, returned once at enrolment; only its SHA-256 is
stored. Plain SHA-256 (not a slow password hash) is enough because the token has 256 bits of
entropy: there is nothing to brute-force.
"""

import base64
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from Crypto.Signature import eddsa
from sqlalchemy import func, select

from coordinator import db
from coordinator.errors import Conflict, Invalid, NotFound

__all__ = [
    "MODES",
    "set_mode",
    "DeviceInfo",
    "hash_token",
    "check_public_key",
    "enrol",
    "authenticate",
    "get",
    "checkin",
    "count_by_mode",
]

MODES = ("on_device", "cloud")
TOKEN_BYTES = 32


@dataclass(frozen=True)
class DeviceInfo:
    id: str
    public_key: bytes
    mode: str
    enrolled_at: datetime
    last_seen: datetime | None
    model_version: int | None


def _info(row: db.Device) -> DeviceInfo:
    return DeviceInfo(
        row.id, row.public_key, row.mode, row.enrolled_at, row.last_seen, row.model_version
    )


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


def check_public_key(raw: bytes) -> bytes:
    """`raw` if it is a valid 32-byte Ed25519 public key encoding, else `Invalid`."""
    if len(raw) != 32:
        raise Invalid(f"public key must be 32 bytes (Ed25519), got {len(raw)}")
    try:
        eddsa.import_public_key(raw)
    except ValueError as e:
        raise Invalid("public key is not a valid Ed25519 point") from e
    return raw


def enrol(database: db.Database, device_id: str, public_key: bytes, mode: str) -> str:
    """Register a device; returns its bearer token (the only time it exists in the clear)."""
    if mode not in MODES:
        raise Invalid(f"mode must be one of {MODES}, got {mode!r}")
    check_public_key(public_key)
    token = base64.urlsafe_b64encode(secrets.token_bytes(TOKEN_BYTES)).decode().rstrip("=")
    with database.transaction() as s:
        if s.get(db.Device, device_id) is not None:
            raise Conflict(f"device {device_id!r} is already enrolled")
        s.add(
            db.Device(
                id=device_id,
                token_hash=hash_token(token),
                public_key=public_key,
                mode=mode,
                enrolled_at=db.utcnow(),
            )
        )
    return token


def authenticate(database: db.Database, token: str) -> DeviceInfo | None:
    """The device holding `token`, or None."""
    try:
        digest = hash_token(token)
    except UnicodeEncodeError:
        return None
    with database.read() as s:
        row = s.scalars(select(db.Device).where(db.Device.token_hash == digest)).one_or_none()
        return None if row is None else _info(row)


def get(database: db.Database, device_id: str) -> DeviceInfo:
    with database.transaction() as s:
        row = s.get(db.Device, device_id)
        if row is None:
            raise NotFound(f"no device {device_id!r}")
        return _info(row)


def checkin(database: db.Database, device_id: str, version_in_use: int | None) -> None:
    """Record that the device is alive and which global version it runs."""
    with database.transaction() as s:
        row = s.get(db.Device, device_id)
        if row is None:
            raise NotFound(f"no device {device_id!r}")
        if version_in_use is not None and s.get(db.Version, version_in_use) is None:
            raise NotFound(f"no version {version_in_use}")
        row.last_seen = db.utcnow()
        row.model_version = version_in_use


def set_mode(database: db.Database, device_id: str, mode: str) -> None:
    """The user flipped "Process on device": cloud devices may predict, only on-device ones
    train and join rounds."""
    if mode not in MODES:
        raise Invalid(f"mode must be one of {MODES}, got {mode!r}")
    with database.transaction() as s:
        row = s.get(db.Device, device_id)
        if row is None:
            raise NotFound(f"no device {device_id!r}")
        row.mode = mode
        row.last_seen = db.utcnow()


def count_by_mode(database: db.Database) -> dict[str, int]:
    with database.transaction() as s:
        rows = s.execute(select(db.Device.mode, func.count()).group_by(db.Device.mode)).all()
    return {m: 0 for m in MODES} | {m: int(n) for m, n in rows}
