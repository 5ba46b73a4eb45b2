"""Client-side encoding of an update into the secure-aggregation field, and its decoding.

Order on the device: L2 clip to C -> multiply by the public staleness weight (FedBuff; applied
before masking, so the server only ever sees the weighted sum) -> optional randomised Hadamard
rotation -> per-coordinate bound B -> stochastic rounding to b bits (unbiased; deterministic
rounding biases the sum; Kairouz et al. 2021, DDGauss) -> append integer counters as b-bit
limbs (exact, unscaled). Every encoded element is in [0, 2^b - 1], so the sum of n <= max_cohort
of them is < 2^(b + ceil(log2 max_cohort)) = 2^width: the field cannot wrap (asserted below,
and property-tested).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from secagg import packing
from secagg.config import SecAggConfig
from secagg.errors import InputError

__all__ = [
    "EncodingSpec",
    "field_width",
    "make_spec",
    "clip",
    "rotate",
    "unrotate",
    "quantize",
    "encode",
    "decode",
]


def field_width(value_bits: int, cohort_size: int) -> int:
    """Bits of the field Z_{2^width}: b + ceil(log2 n), checked to hold the largest sum.

    Every encoded element is at most 2^b - 1, so n of them sum to at most n (2^b - 1), which
    must be < 2^width or the masked sum would silently wrap (a pitfall seen elsewhere, notes).
    """
    if cohort_size < 1 or not 1 <= value_bits <= 16:
        raise InputError(f"bad field parameters: {value_bits} bits, cohort {cohort_size}")
    width = value_bits + math.ceil(math.log2(cohort_size))
    if cohort_size * ((1 << value_bits) - 1) >= 1 << width:  # cannot happen; checked anyway
        raise InputError(f"a {width}-bit field would overflow for {cohort_size} clients")
    if width > 32:
        raise InputError(f"field of {width} bits exceeds 32: fewer value bits or a smaller cohort")
    return width


@dataclass(frozen=True)
class EncodingSpec:
    """Everything both ends need to encode and decode one round's vectors (all public)."""

    dim: int  # length of the float update
    value_bits: int  # b
    width: int  # field width in bits
    bound: float  # per-coordinate bound B (values are clipped to [-B, B])
    clip_norm: float  # L2 clip C
    rotation_seed: int | None  # None = no rotation; else the public seed of the signs
    num_counters: int
    limbs: int  # b-bit limbs per counter
    counter_bits: int

    @property
    def padded_dim(self) -> int:
        return (
            1 << max(0, (self.dim - 1).bit_length()) if self.rotation_seed is not None else self.dim
        )

    @property
    def length(self) -> int:
        """Number of field elements on the wire."""
        return self.padded_dim + self.num_counters * self.limbs

    @property
    def dtype(self) -> np.dtype:
        return packing.field_dtype(self.width)

    @property
    def packed_bytes(self) -> int:
        return packing.packed_size(self.length, self.width)


def make_spec(
    config: SecAggConfig,
    dim: int,
    rotation_seed: int | None = None,
    cohort_size: int | None = None,
) -> EncodingSpec:
    """The round's encoding; pass a public rotation_seed iff config.rotate.

    The field is sized for `cohort_size` (the round's actual cohort; all parties know it) or,
    if not given, for config.max_cohort.
    """
    n = config.max_cohort if cohort_size is None else cohort_size
    if not 1 <= n <= config.max_cohort:
        raise InputError(f"cohort size {n} must be in [1, max_cohort={config.max_cohort}]")
    if not 1 <= dim <= config.max_dim:
        raise InputError(f"dim must be in [1, {config.max_dim}], got {dim}")
    if config.rotate != (rotation_seed is not None):
        raise InputError("rotation_seed must be given exactly when config.rotate is set")
    spec = EncodingSpec(
        dim=dim,
        value_bits=config.value_bits,
        width=field_width(config.value_bits, n),
        bound=0.0,
        clip_norm=config.clip_norm,
        rotation_seed=rotation_seed,
        num_counters=config.num_counters,
        limbs=math.ceil(config.counter_bits / config.value_bits),
        counter_bits=config.counter_bits,
    )
    # After a random rotation each coordinate is ~ N(0, |x|^2 / d): a few sigma loses little.
    bound = config.clip_norm
    if rotation_seed is not None:
        bound = min(bound, config.coord_sigmas * config.clip_norm / math.sqrt(spec.padded_dim))
    return EncodingSpec(**{**spec.__dict__, "bound": bound})


def clip(x: np.ndarray, clip_norm: float) -> np.ndarray:
    """Scale x down to L2 norm <= clip_norm (float32 out)."""
    x = np.asarray(x, dtype=np.float32)
    norm = float(np.linalg.norm(x))
    if norm > clip_norm:
        x = x * np.float32(clip_norm / norm)
    return x


def _signs(seed: int, n: int) -> np.ndarray:
    rng = np.random.Generator(np.random.PCG64(seed))
    return (rng.integers(0, 2, n, dtype=np.int8) * 2 - 1).astype(np.float32)


def _fwht(x: np.ndarray) -> np.ndarray:
    """Orthonormal fast Walsh-Hadamard transform of a power-of-two-length vector (a copy)."""
    x = np.array(x, dtype=np.float64 if x.dtype == np.float64 else np.float32)
    n, h = x.size, 1
    while h < n:
        y = x.reshape(-1, 2, h)
        a = y[:, 0, :].copy()
        y[:, 0, :] += y[:, 1, :]
        np.subtract(a, y[:, 1, :], out=y[:, 1, :])
        h *= 2
    x *= x.dtype.type(1 / math.sqrt(n))
    return x


def rotate(x: np.ndarray, seed: int, padded_dim: int) -> np.ndarray:
    """H D x: random signs D from the explicit seed, then the orthonormal Hadamard H."""
    y = np.zeros(padded_dim, np.float32)
    y[: x.size] = x
    return _fwht(y * _signs(seed, padded_dim))


def unrotate(y: np.ndarray, seed: int, dim: int) -> np.ndarray:
    """Inverse of `rotate` (H is symmetric and orthonormal): D H y, truncated to dim."""
    return (_fwht(y) * _signs(seed, y.size).astype(y.dtype))[:dim]


def quantize(
    x: np.ndarray, bound: float, bits: int, rng: np.random.Generator, out: np.ndarray | None = None
) -> np.ndarray:
    """Stochastic rounding of clip(x, -B, B) onto the grid {0..2^b-1}; E[q] is exact (unbiased).

    Writes into `out` (any unsigned dtype) if given; works in place on one float buffer.
    """
    levels = (1 << bits) - 1
    u = np.clip(x, -bound, bound).astype(np.float32, copy=False)
    u += np.float32(bound)
    u *= np.float32(levels / (2 * bound))
    q = np.floor(u)
    u -= q  # fractional part: round up with exactly this probability
    q += rng.random(x.size, dtype=np.float32) < u
    np.minimum(q, levels, out=q)
    if out is None:
        return q.astype(np.uint32)
    out[...] = q
    return out


def encode(
    x: np.ndarray,
    spec: EncodingSpec,
    rng: np.random.Generator,
    extra_ints: Sequence[int] = (),
    weight: float = 1.0,
) -> np.ndarray:
    """The field vector (spec.dtype, length spec.length) of one client's update and counters."""
    x = np.asarray(x)
    if x.shape != (spec.dim,):
        raise InputError(f"update must have shape ({spec.dim},), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise InputError("update contains NaN or infinity")
    if not 0.0 <= weight <= 1.0:
        raise InputError(f"staleness weight must be in [0, 1], got {weight}")
    if len(extra_ints) != spec.num_counters:
        raise InputError(f"expected {spec.num_counters} counters, got {len(extra_ints)}")
    for c in extra_ints:
        if not isinstance(c, int | np.integer) or not 0 <= int(c) < 1 << spec.counter_bits:
            raise InputError(f"counter {c!r} is not an integer in [0, 2^{spec.counter_bits})")
    v = clip(x, spec.clip_norm)
    if weight != 1.0:
        v = v * np.float32(weight)
    if spec.rotation_seed is not None:
        v = rotate(v, spec.rotation_seed, spec.padded_dim)
    out = np.empty(spec.length, dtype=spec.dtype)
    quantize(v, spec.bound, spec.value_bits, rng, out=out[: spec.padded_dim])
    mask = (1 << spec.value_bits) - 1
    limbs = [
        (int(c) >> (spec.value_bits * j)) & mask for c in extra_ints for j in range(spec.limbs)
    ]
    out[spec.padded_dim :] = limbs
    return out


def decode(
    field_sum: np.ndarray, spec: EncodingSpec, contributors: int
) -> tuple[np.ndarray, tuple[int, ...]]:
    """(float64 sum of the decoded updates, exact counter sums) from the field sum.

    The float sum is that of the quantised values (each an unbiased estimate of the clipped,
    weighted update); counters are recombined from their limb sums exactly.
    """
    if field_sum.shape != (spec.length,):
        raise InputError(f"field sum must have shape ({spec.length},), got {field_sum.shape}")
    levels = (1 << spec.value_bits) - 1
    s = field_sum.astype(np.int64)
    if s.min(initial=0) < 0 or s.max(initial=0) > contributors * levels:
        # Cannot happen for honest inputs: the field holds max_cohort maximal values exactly.
        raise InputError(f"field sum exceeds {contributors} x {levels}: corrupted input")
    q = s[: spec.padded_dim].astype(np.float64)
    vec = q * (2 * spec.bound / levels) - contributors * spec.bound
    if spec.rotation_seed is not None:
        vec = unrotate(vec, spec.rotation_seed, spec.dim)
    limb_sums = s[spec.padded_dim :].reshape(spec.num_counters, spec.limbs)
    counters = tuple(
        sum(int(limb_sums[i, j]) << (spec.value_bits * j) for j in range(spec.limbs))
        for i in range(spec.num_counters)
    )
    return vec, counters
