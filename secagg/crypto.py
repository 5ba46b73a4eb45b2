"""Cryptographic primitives, all from pycryptodome (>= 4; 3.x is 3-4x slower at AES-CTR).

- X25519 key agreement, with HKDF-SHA256 bound to the round id, a purpose label and the ordered
  pair of client ids, so a key never serves two rounds, two purposes or two pairs.
- AES-256-GCM for the Shamir shares the server routes between clients (Bonawitz et al. 2017,
  ShareKeys: the server must route them but not read them).
- Ed25519 signatures over key adverts and consistency-check views, with identity keys
  registered at enrolment (Bonawitz et al. 2017, active-adversary variant).
- AES-256-CTR as the mask PRG, writing the keystream straight into numpy buffers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from Crypto.Cipher import AES
from Crypto.Hash import SHA256
from Crypto.Protocol import DH
from Crypto.Protocol.KDF import HKDF
from Crypto.PublicKey import ECC
from Crypto.Random import get_random_bytes
from Crypto.Signature import eddsa

from secagg.errors import CryptoError

__all__ = [
    "KeyPair",
    "new_x25519",
    "x25519_public",
    "agree",
    "x25519_key",
    "new_identity",
    "identity_public",
    "sign",
    "verify",
    "aead_encrypt",
    "aead_decrypt",
    "AEAD_OVERHEAD",
    "commit",
    "apply_masks",
    "random_bytes",
]

KeyPair = tuple[bytes, bytes]  # (private 32 bytes, public 32 bytes), raw encodings
AEAD_OVERHEAD = 12 + 16  # nonce + tag
_CHUNK_BYTES = 1 << 18  # mask work in L2-sized chunks so keystream is added while still cached


def random_bytes(n: int) -> bytes:
    return get_random_bytes(n)


def new_x25519() -> KeyPair:
    """A fresh X25519 key pair (fresh every round: Bonawitz et al. 2017, AdvertiseKeys)."""
    key = ECC.generate(curve="X25519")
    return key.seed, key.public_key().export_key(format="raw")


def x25519_public(private: bytes) -> bytes:
    """Public key of a raw private key; the server uses it to verify a reconstructed key."""
    return DH.import_x25519_private_key(private).public_key().export_key(format="raw")


def agree(
    private: bytes | ECC.EccKey,
    peer_public: bytes,
    round_id: bytes,
    purpose: bytes,
    a: int,
    b: int,
) -> bytes:
    """A 32-byte key shared by a and b: X25519 then HKDF bound to (round, purpose, a, b).

    For masks the caller orders the pair (min, max) so both ends derive the same seed; for
    share encryption the pair is (sender, receiver), one key per direction. Pass the private
    key as `x25519_key(raw)` when agreeing with many peers: importing a raw private key costs a
    scalar multiplication (it derives the public key), as much as the agreement itself.
    """
    try:
        priv = x25519_key(private) if isinstance(private, bytes) else private
        pub = DH.import_x25519_public_key(peer_public)
    except ValueError as e:
        raise CryptoError(f"invalid X25519 key for pair ({a}, {b}): {e}") from e
    context = b"secagg/" + purpose + a.to_bytes(4, "little") + b.to_bytes(4, "little")
    try:
        return DH.key_agreement(
            static_priv=priv,
            static_pub=pub,
            kdf=lambda z: HKDF(z, 32, round_id, SHA256, context=context),
        )
    except ValueError as e:  # e.g. a low-order public key giving an all-zero secret
        raise CryptoError(f"X25519 agreement failed for pair ({a}, {b}): {e}") from e


def x25519_key(private: bytes) -> ECC.EccKey:
    """The key object of a raw X25519 private key (import once, agree many times)."""
    return DH.import_x25519_private_key(private)


def new_identity() -> KeyPair:
    """A long-term Ed25519 identity key pair, made once at enrolment."""
    key = ECC.generate(curve="Ed25519")
    return key.seed, key.public_key().export_key(format="raw")


def identity_public(private: bytes) -> bytes:
    return ECC.construct(curve="Ed25519", seed=private).public_key().export_key(format="raw")


def sign(private: bytes, message: bytes) -> bytes:
    return eddsa.new(ECC.construct(curve="Ed25519", seed=private), "rfc8032").sign(message)


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    try:
        eddsa.new(eddsa.import_public_key(public), "rfc8032").verify(message, signature)
    except ValueError:
        return False
    return True


def aead_encrypt(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = get_random_bytes(12)
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    cipher.update(aad)
    ct, tag = cipher.encrypt_and_digest(plaintext)
    return nonce + ct + tag


def aead_decrypt(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """Raises CryptoError when the tag does not verify (forged, corrupted or misrouted)."""
    if len(blob) < AEAD_OVERHEAD:
        raise CryptoError(f"ciphertext of {len(blob)} bytes is shorter than nonce + tag")
    cipher = AES.new(key, AES.MODE_GCM, nonce=blob[:12])
    cipher.update(aad)
    try:
        return cipher.decrypt_and_verify(blob[12:-16], blob[-16:])
    except ValueError as e:
        raise CryptoError("share ciphertext failed authentication") from e


def commit(round_id: bytes, client: int, secret: bytes) -> bytes:
    """SHA-256 commitment to the self-mask seed, signed in the advert, so the server can verify
    a reconstructed seed (Shamir's combine gives garbage, not an error, from bad shares)."""
    return hashlib.sha256(
        b"secagg/commit" + round_id + client.to_bytes(4, "little") + secret
    ).digest()


def apply_masks(
    acc: np.ndarray,
    plus: Sequence[bytes] = (),
    minus: Sequence[bytes] = (),
    start: int = 0,
    workers: int = 1,
) -> None:
    """acc += sum PRG(plus) - sum PRG(minus), wrapping mod 2^(8 * itemsize), in place.

    PRG(seed) is the AES-256-CTR keystream under `seed` read as little-endian unsigned integers
    of acc's dtype; `start` is the index of acc[0] in the full vector (AES-CTR has random
    access, so unmasking can be split by coordinate range). Work proceeds in cache-sized chunks,
    every cipher continuing its stream, so the additions read keystream from cache. With
    workers > 1 the vector is split by coordinate range across threads (pycryptodome and numpy
    release the GIL), the same split a multi-process coordinator would use.
    """
    if acc.dtype not in (np.uint16, np.uint32, np.uint64) or not acc.flags.c_contiguous:
        raise TypeError(f"acc must be a contiguous uint16/32/64 array, got {acc.dtype}")
    size = acc.dtype.itemsize
    first = start * size
    if first % 16:
        raise ValueError(f"start={start} is not aligned to an AES block of {16 // size} values")
    seeds = [(s, 1) for s in plus] + [(s, -1) for s in minus]
    if not seeds or acc.size == 0:
        return
    if workers > 1 and acc.size >= 1 << 16:
        block = 16 // size
        step = -(-acc.size // workers // block) * block  # aligned to whole AES blocks
        parts = [(lo, acc[lo : lo + step]) for lo in range(0, acc.size, step)]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            jobs = [pool.submit(_apply, part, seeds, start + lo) for lo, part in parts]
            for job in jobs:
                job.result()
        return
    _apply(acc, seeds, start)


def _apply(acc: np.ndarray, seeds: list[tuple[bytes, int]], start: int) -> None:
    size = acc.dtype.itemsize
    first = start * size
    ciphers = [
        (AES.new(s, AES.MODE_CTR, nonce=b"", initial_value=first // 16), sign_)
        for s, sign_ in seeds
    ]
    chunk = max(1, _CHUNK_BYTES // size)
    scratch = np.empty(min(chunk, acc.size), dtype=acc.dtype)
    zeros = bytes(scratch.nbytes)
    for lo in range(0, acc.size, chunk):
        seg = acc[lo : lo + chunk]
        buf = scratch[: seg.size]
        out = memoryview(buf).cast("B")
        z = zeros if seg.size == scratch.size else zeros[: buf.nbytes]
        for cipher, sign_ in ciphers:
            cipher.encrypt(z, output=out)
            if sign_ > 0:
                np.add(seg, buf, out=seg)
            else:
                np.subtract(seg, buf, out=seg)
