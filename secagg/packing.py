"""Bit packing of field elements at exactly the field width, vectorised.

A width-w vector is split into bit planes following the binary expansion of w: whole 16-bit
planes from the least significant bit, then at most one 8-, 4-, 2- and 1-bit plane (18 = 16 + 2,
15 = 8 + 4 + 2 + 1). Plane s holds bits [offset, offset + s) of every value, 8 / s values per
byte for s < 8 (value j in bits (j mod 8/s) * s, little-endian), little-endian uint16 for s = 16.
The wire size is sum_planes ceil(n * s / 8), i.e. ceil(n * w / 8) plus at most a few bytes, and
unpacking is a handful of whole-array numpy operations per plane (no per-element Python).
"""

from __future__ import annotations

import functools
import threading

import numpy as np

__all__ = ["planes", "packed_size", "pack", "unpack", "unpack_add", "field_dtype"]


def field_dtype(width: int) -> np.dtype:
    """The narrowest unsigned dtype holding a width-bit value (masks wrap in it, mod 2^width)."""
    if not 1 <= width <= 32:
        raise ValueError(f"field width must be in [1, 32], got {width}")
    return np.dtype(np.uint16 if width <= 16 else np.uint32)


def planes(width: int) -> list[tuple[int, int]]:
    """(bit offset, plane width) pairs covering bits [0, width)."""
    out, off = [], 0
    for _ in range(width // 16):
        out.append((off, 16))
        off += 16
    for s in (8, 4, 2, 1):
        if width - off >= s:
            out.append((off, s))
            off += s
    assert off == width
    return out


def _plane_bytes(n: int, s: int) -> int:
    return (n * s + 7) // 8


def packed_size(n: int, width: int) -> int:
    return sum(_plane_bytes(n, s) for _, s in planes(width))


def pack(values: np.ndarray, width: int) -> bytes:
    """Pack the low `width` bits of each element of a uint16/uint32 vector."""
    v = np.ascontiguousarray(values).reshape(-1)
    if v.dtype not in (np.uint16, np.uint32):
        raise TypeError(f"pack expects uint16/uint32, got {v.dtype}")
    n = v.size
    parts = []
    for off, s in planes(width):
        p = v >> off if off else v
        if s == 16:
            parts.append(p.astype("<u2").tobytes())
            continue
        p = p.astype(np.uint8)
        if s < 8:
            p &= np.uint8((1 << s) - 1)
        if s == 8:
            parts.append(p.tobytes())
        elif s == 1:
            parts.append(np.packbits(p, bitorder="little").tobytes())
        else:
            per = 8 // s
            pad = (-n) % per
            if pad:
                p = np.concatenate([p, np.zeros(pad, np.uint8)])
            p = p.reshape(-1, per)
            byte = p[:, 0].copy()
            for j in range(1, per):
                byte |= p[:, j] << (j * s)
            parts.append(byte.tobytes())
    return b"".join(parts)


@functools.lru_cache(maxsize=64)
def _lut(dt: str, off: int, s: int) -> np.ndarray:
    """For a byte of an s-bit plane: its 8/s values, shifted to `off`, as one opaque row."""
    per = 8 // s
    b = np.arange(256)[:, None]
    rows = np.ascontiguousarray((((b >> (np.arange(per) * s)) & ((1 << s) - 1)) << off).astype(dt))
    size = per * rows.itemsize  # one row as one scalar: a numeric dtype where one exists
    row_dt = {2: np.uint16, 4: np.uint32, 8: np.uint64}.get(size, np.dtype((np.void, size)))
    return rows.view(row_dt).reshape(256)


_local = threading.local()


def _scratch(dtype: np.dtype, n: int) -> np.ndarray:
    """A reused per-thread buffer: fresh multi-megabyte temporaries cost more in page faults
    than the gather that fills them (measured ~10x for a 1M-element plane)."""
    key = (np.dtype(dtype).str, n)
    cache = getattr(_local, "cache", None)
    if cache is None or cache[0] != key:
        cache = (key, np.empty(n, dtype))
        _local.cache = cache
    return cache[1]


_BLOCK = 1 << 16  # values per block: a block of acc and of each plane stays in L2 cache


def unpack_add(acc: np.ndarray, buf: bytes | memoryview, width: int) -> None:
    """acc += unpack(buf), wrapping in acc's dtype; the server's per-client aggregation step.

    Works block by block over the coordinates, all planes of a block at once, so the
    accumulator makes one trip through memory per message. Each sub-byte plane is expanded by
    one table gather (np.take into a reused buffer) into values already shifted to their bit
    offset; no full-width vector of one client is ever assembled.
    """
    n = acc.size
    if acc.dtype != field_dtype(width):
        raise TypeError(f"accumulator dtype {acc.dtype} does not match width {width}")
    if len(buf) != packed_size(n, width):
        raise ValueError(
            f"packed vector of {n} x {width}-bit values must be {packed_size(n, width)} bytes, "
            f"got {len(buf)}"
        )
    raws, pos = [], 0
    for off, s in planes(width):
        size = _plane_bytes(n, s)
        raws.append((off, s, np.frombuffer(buf, dtype=np.uint8, count=size, offset=pos)))
        pos += size
    tmp = _scratch(acc.dtype, min(n, _BLOCK))
    for lo in range(0, n, _BLOCK):  # _BLOCK is a multiple of 8: planes split on whole bytes
        hi = min(n, lo + _BLOCK)
        seg = acc[lo:hi]
        out = tmp[: hi - lo]
        for off, s, raw in raws:
            part = raw[lo * s // 8 : (hi * s + 7) // 8]
            if s >= 8 and off == 0:
                np.add(seg, part.view("<u2") if s == 16 else part, out=seg, casting="unsafe")
            elif s == 16:
                out[...] = part.view("<u2")
                out <<= acc.dtype.type(off)
                np.add(seg, out, out=seg)
            else:
                lut = _lut(acc.dtype.str, off, s)
                rows = out.view(lut.dtype) if out.nbytes % lut.itemsize == 0 else None
                if rows is None or rows.size < part.size:
                    rows = np.empty(part.size, lut.dtype)
                np.take(lut, part, out=rows[: part.size])
                np.add(seg, rows[: part.size].view(acc.dtype)[: hi - lo], out=seg)


def unpack(buf: bytes | memoryview, width: int, n: int) -> np.ndarray:
    """Inverse of `pack`; raises ValueError if buf is not exactly packed_size(n, width) bytes."""
    out = np.zeros(n, dtype=field_dtype(width))
    unpack_add(out, buf, width)
    return out
