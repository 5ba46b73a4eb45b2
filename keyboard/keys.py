"""The device's store key: generated on the device, or derived from a passphrase.

The key file is created with mode 0600 (only its owner can read it) and is never sent
anywhere. With a passphrase, the key is derived with scrypt (Percival 2009) from a random
salt kept beside it, so the key itself is never written to disk.
"""

import json
import os
import stat
from pathlib import Path

from Crypto.Protocol.KDF import scrypt
from Crypto.Random import get_random_bytes

from keyboard.store import KEY_LEN, StoreError

__all__ = ["load_or_create_key", "derive_key"]

# scrypt cost (N=2^15, r=8, p=1): ~0.1 s and 32 MiB on a laptop, the interactive-login
# setting recommended by the scrypt paper.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1


def _write_private(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(payload)


def load_or_create_key(path: Path) -> bytes:
    """The random key in `path`, created (0600) on first use."""
    path = Path(path)
    if not path.exists():
        _write_private(path, get_random_bytes(KEY_LEN))
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise StoreError(f"key file {path} is readable by others (mode {mode:o}); chmod 600 it")
    key = path.read_bytes()
    if len(key) != KEY_LEN:
        raise StoreError(f"key file {path} holds {len(key)} bytes, expected {KEY_LEN}")
    return key


def derive_key(passphrase: str, salt_path: Path) -> bytes:
    """A key from `passphrase` and the salt in `salt_path` (created on first use)."""
    salt_path = Path(salt_path)
    if not salt_path.exists():
        params = {"salt": get_random_bytes(16).hex(), "N": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P}
        _write_private(salt_path, json.dumps(params).encode())
    params = json.loads(salt_path.read_text())
    return scrypt(
        passphrase.encode(),
        bytes.fromhex(params["salt"]),
        KEY_LEN,
        N=params["N"],
        r=params["r"],
        p=params["p"],
    )
