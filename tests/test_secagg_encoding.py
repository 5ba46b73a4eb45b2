"""Encoding, quantisation, field width and bit packing: exact and property tests."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg import SecAggConfig, encoding, packing
from secagg.errors import InputError


@given(bits=st.integers(1, 16), n=st.integers(2, (1 << 20) - 1))
def test_field_never_overflows_for_the_maximum_cohort(bits, n):
    if bits + math.ceil(math.log2(n)) > 32:
        with pytest.raises(InputError, match="exceeds 32"):
            encoding.field_width(bits, n)
        return
    w = encoding.field_width(bits, n)
    assert w == bits + math.ceil(math.log2(n))
    assert n * ((1 << bits) - 1) < 1 << w  # the largest possible sum fits
    if w <= 32:
        # Sum n maximal encoded values in the field dtype, wrapping as the protocol does:
        # the result must be the true sum, i.e. no wrap-around happened.
        dt = packing.field_dtype(w)
        top = np.full(4, (1 << bits) - 1, dt)
        acc = np.zeros(4, dt)
        for chunk in _chunks(n):
            acc += (top * dt.type(chunk)).astype(dt)
        acc &= dt.type((1 << w) - 1)
        assert np.all(acc.astype(np.int64) == n * ((1 << bits) - 1))


def _chunks(n, size=4096):
    while n:
        c = min(n, size)
        yield c
        n -= c


@settings(max_examples=60, deadline=None)
@given(max_cohort=st.integers(2, 1 << 16), bits=st.integers(1, 16), seed=st.integers(0, 2**32))
def test_maximal_round_sum_decodes_exactly(max_cohort, bits, seed):
    """The decoded field sum of max_cohort all-maximal vectors equals the true sum."""
    cfg = SecAggConfig(max_cohort=max_cohort, value_bits=bits, num_counters=1, counter_bits=20)
    spec = encoding.make_spec(cfg, 5)
    if spec.width > 32:
        return
    one_hot = np.array([1e6, 0, 0, 0, 0], np.float32)  # clipped to norm C = the bound
    enc = encoding.encode(one_hot, spec, np.random.default_rng(seed), [2**20 - 1])
    assert enc[0] == (1 << bits) - 1  # the maximal encoded value
    total = (enc.astype(np.uint64) * np.uint64(max_cohort)) % np.uint64(1 << spec.width)
    vec, counters = encoding.decode(total.astype(spec.dtype), spec, max_cohort)
    assert counters == ((2**20 - 1) * max_cohort,)
    q = enc[:5].astype(np.float64) * (2 * spec.bound / ((1 << bits) - 1)) - spec.bound
    np.testing.assert_allclose(vec, q * max_cohort, rtol=1e-9, atol=1e-9)


def test_field_is_sized_for_the_rounds_cohort():
    cfg = SecAggConfig.default()
    assert encoding.make_spec(cfg, 10, cohort_size=100).width == 15
    assert encoding.make_spec(cfg, 10, cohort_size=1000).width == 18
    with pytest.raises(InputError, match="max_cohort"):
        encoding.make_spec(cfg, 10, cohort_size=1001)


def test_default_field_is_18_bits_and_packs_to_2_25_bytes():
    spec = encoding.make_spec(SecAggConfig.default(), 1_000_000)
    assert spec.width == 18
    assert spec.dtype == np.uint32
    assert spec.packed_bytes == math.ceil(spec.length * 18 / 8)


@pytest.mark.parametrize("width", range(1, 33))
def test_pack_round_trip_every_width(width):
    rng = np.random.default_rng(width)
    for n in (0, 1, 7, 8, 9, 63, 64, 65, 1001):
        v = rng.integers(0, 1 << width, n, dtype=np.uint64).astype(packing.field_dtype(width))
        buf = packing.pack(v, width)
        assert len(buf) == packing.packed_size(n, width)
        assert len(buf) <= math.ceil(n * width / 8) + len(packing.planes(width))
        assert np.array_equal(packing.unpack(buf, width, n), v)


def test_pack_layout_is_fixed():
    # 18 = 16 + 2: a little-endian uint16 plane, then 2-bit values four to a byte.
    v = np.array([0x3FFFF, 0x10001, 0x20002, 5, 0], np.uint32)
    buf = packing.pack(v, 18)
    assert buf == bytes.fromhex("ffff 0100 0200 0500 0000".replace(" ", "")) + bytes(
        [0b00100111, 0]
    )


def test_unpack_add_accumulates_mod_2_width():
    w, n = 15, 777
    rng = np.random.default_rng(1)
    vs = [rng.integers(0, 1 << w, n).astype(np.uint16) for _ in range(5)]
    acc = np.zeros(n, np.uint16)
    for v in vs:
        packing.unpack_add(acc, packing.pack(v, w), w)
    acc &= np.uint16((1 << w) - 1)
    assert np.array_equal(acc, sum(v.astype(np.int64) for v in vs) % (1 << w))


def test_unpack_rejects_wrong_sizes():
    with pytest.raises(ValueError, match="must be 23 bytes"):
        packing.unpack(b"\0" * 22, 18, 10)
    with pytest.raises(TypeError, match="dtype"):
        packing.unpack_add(np.zeros(10, np.uint16), b"\0" * 23, 18)


def test_stochastic_rounding_is_unbiased():
    rng = np.random.default_rng(0)
    x = np.linspace(-0.9, 0.9, 50, dtype=np.float32)
    qs = np.stack([encoding.quantize(x, 1.0, 4, rng) for _ in range(20000)])
    levels = 15
    mean = qs.mean(axis=0) * (2 / levels) - 1
    # std of one draw <= half a step (2/15/2); of the mean over 20000 draws <= 0.00047
    np.testing.assert_allclose(mean, x, atol=0.003)
    # deterministic rounding would be biased by up to half a step: make sure we are not that
    nearest = np.round((x + 1) * levels / 2) * (2 / levels) - 1
    assert np.abs(nearest - x).max() > 0.02


def test_quantize_range_and_values_on_grid():
    rng = np.random.default_rng(3)
    q = encoding.quantize(np.array([-5, -1, 0, 1, 5], np.float32), 1.0, 8, rng)
    assert q[0] == 0 and q[1] == 0 and q[3] == 255 and q[4] == 255
    assert q[2] in (127, 128)


def test_clip_and_weight_applied_before_quantisation():
    cfg = SecAggConfig(max_cohort=4, value_bits=16, clip_norm=1.0, num_counters=0)
    spec = encoding.make_spec(cfg, 4)
    x = np.array([3.0, 4.0, 0.0, 0.0], np.float32)  # norm 5 -> clipped to (0.6, 0.8, 0, 0)
    enc = encoding.encode(x, spec, np.random.default_rng(0), weight=0.5)
    vec, _ = encoding.decode(enc, spec, 1)
    np.testing.assert_allclose(vec, [0.3, 0.4, 0, 0], atol=2 / 65535)


def test_rotation_round_trip_and_norm():
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    y = encoding.rotate(x, 42, 1024)
    assert y.shape == (1024,)
    np.testing.assert_allclose(np.linalg.norm(y), np.linalg.norm(x), rtol=1e-5)
    np.testing.assert_allclose(encoding.unrotate(y, 42, 1000), x, atol=1e-5)
    assert not np.allclose(encoding.rotate(x, 43, 1024), y)


def test_rotated_encoding_decodes_close_to_the_sum():
    cfg = SecAggConfig(max_cohort=8, value_bits=12, rotate=True, num_counters=0)
    spec = encoding.make_spec(cfg, 300, rotation_seed=7)
    assert spec.padded_dim == 512 and spec.bound < cfg.clip_norm
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(300).astype(np.float32) * 0.04 for _ in range(8)]
    field = sum(encoding.encode(x, spec, rng).astype(np.int64) for x in xs)
    vec, _ = encoding.decode(field.astype(spec.dtype), spec, 8)
    truth = sum(encoding.clip(x, 1.0).astype(np.float64) for x in xs)
    assert np.abs(vec - truth).max() < 0.02


def test_counters_are_exact_in_limbs():
    cfg = SecAggConfig(max_cohort=10, value_bits=8, counter_bits=24, num_counters=3)
    spec = encoding.make_spec(cfg, 3)
    assert spec.limbs == 3 and spec.width == 12
    cs = [[2**24 - 1, 0, 12345], [1, 2, 3], [99999, 7, 16_000_000]]
    tot = sum(
        encoding.encode(np.zeros(3, np.float32), spec, np.random.default_rng(i), c).astype(np.int64)
        for i, c in enumerate(cs)
    )
    _, counters = encoding.decode(tot.astype(spec.dtype), spec, 3)
    assert counters == tuple(sum(c[i] for c in cs) for i in range(3))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"x": np.zeros(4, np.float32)}, "shape"),
        ({"x": np.array([np.nan, 0, 0], np.float32)}, "NaN"),
        ({"extra": [1, 2]}, "expected 3 counters"),
        ({"extra": [1, 2, -1]}, "not an integer"),
        ({"extra": [1, 2, 2**24]}, "not an integer"),
        ({"weight": 1.5}, "weight"),
    ],
)
def test_encode_rejects_bad_inputs(kwargs, match):
    spec = encoding.make_spec(SecAggConfig.tiny(), 3)
    args = {"x": np.zeros(3, np.float32), "extra": [1, 2, 3], "weight": 1.0} | kwargs
    with pytest.raises(InputError, match=match):
        encoding.encode(args["x"], spec, np.random.default_rng(0), args["extra"], args["weight"])


def test_decode_flags_an_impossible_sum():
    spec = encoding.make_spec(SecAggConfig.tiny(), 3)
    bad = np.zeros(spec.length, spec.dtype)
    bad[0] = 255 * 2 + 1
    with pytest.raises(InputError, match="exceeds"):
        encoding.decode(bad, spec, 2)


@pytest.mark.parametrize("width", [1, 2, 3, 5, 8, 12, 15, 16, 17, 18, 24, 31, 32])
def test_unpack_add_across_blocks(width):
    n = 2 * packing._BLOCK + 13  # several blocks, the last one partial and mid-byte
    rng = np.random.default_rng(width)
    dt = packing.field_dtype(width)
    a = rng.integers(0, 1 << width, n, dtype=np.uint64).astype(dt)
    b = rng.integers(0, 1 << width, n, dtype=np.uint64).astype(dt)
    acc = a.copy()
    packing.unpack_add(acc, packing.pack(b, width), width)
    want = (a.astype(np.uint64) + b.astype(np.uint64)) % np.uint64(1 << (8 * dt.itemsize))
    assert np.array_equal(acc, want.astype(dt))
