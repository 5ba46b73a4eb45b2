"""Shamir secret sharing of 32-byte secrets over the prime field GF(2^256 + 297).

pycryptodome's own Shamir takes only 16-byte secrets, is O(t^2) pure Python per byte block and
silently returns garbage from too few shares (see notes/secagg.md). Here a whole 32-byte secret
(an X25519 private key or a self-mask seed) is one field element, since p > 2^256; a share is
33 bytes. Lagrange coefficients at zero are cached per set of x-coordinates, which repeat
across the clients of a round. Reconstruction does not detect wrong shares by itself: callers
verify every recovered secret (recompute the public key, or check a commitment), see
`recover`.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Callable, Sequence

from secagg.errors import AbortError, CryptoError

__all__ = ["PRIME", "SHARE_BYTES", "split", "reconstruct", "recover", "lagrange_at_zero"]

PRIME = (1 << 256) + 297  # the smallest prime above 2^256 (checked in the tests)
SHARE_BYTES = 33

Share = tuple[int, bytes]  # (x-coordinate, y as 33 big-endian bytes)


def split(secret: bytes, xs: Sequence[int], threshold: int) -> list[Share]:
    """Shares of `secret` at the distinct non-zero points xs; any `threshold` of them recover it."""
    if len(secret) != 32:
        raise ValueError(f"secret must be 32 bytes, got {len(secret)}")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be in [1, {len(xs)}]")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("share points must be distinct and non-zero")
    # Coefficients come from the OS CSPRNG: they hide the secret, so never a seeded generator.
    coeffs = [int.from_bytes(secret, "big")]
    coeffs += [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    out = []
    for x in xs:
        y = 0
        for c in reversed(coeffs):  # Horner
            y = (y * x + c) % PRIME
        out.append((x, y.to_bytes(SHARE_BYTES, "big")))
    return out


@functools.lru_cache(maxsize=4096)
def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Coefficients l_i with f(0) = sum l_i f(x_i) for any polynomial of degree < len(xs)."""
    out = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        out.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(out)


def reconstruct(shares: Sequence[Share]) -> int:
    """Interpolate at zero through exactly the given shares (no verification)."""
    xs = tuple(x for x, _ in shares)
    if len(set(xs)) != len(xs):
        raise ValueError("duplicate share points")
    coeffs = lagrange_at_zero(xs)
    acc = 0
    for c, (_, y) in zip(coeffs, shares, strict=True):
        if len(y) != SHARE_BYTES:
            raise ValueError(f"share must be {SHARE_BYTES} bytes, got {len(y)}")
        acc += c * int.from_bytes(y, "big")
    return acc % PRIME


def recover(
    shares: Sequence[Share], threshold: int, check: Callable[[bytes], bool], what: str
) -> bytes:
    """The 32-byte secret from the first `threshold` shares, verified by `check`.

    Raises AbortError if there are too few shares and CryptoError if the result fails `check`
    (a wrong share, or shares of different secrets); `what` names the secret in messages.
    """
    if len(shares) < threshold:
        raise AbortError(f"{what}: {len(shares)} shares returned, threshold is {threshold}")
    value = reconstruct(sorted(shares)[:threshold])
    if value >> 256:
        raise CryptoError(f"{what}: reconstructed value is not a 32-byte secret (bad share)")
    secret = value.to_bytes(32, "big")
    if not check(secret):
        raise CryptoError(f"{what}: reconstructed secret fails verification (bad share)")
    return secret
