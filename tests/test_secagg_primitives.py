"""Exact tests of the primitives: key agreement, AEAD, signatures, mask PRG, Shamir, graph."""

import itertools

import numpy as np
import pytest
from Crypto.Util.number import isPrime

from secagg import crypto, graph, shamir
from secagg.errors import AbortError, CryptoError

R1, R2 = b"r" * 16, b"s" * 16


def test_agree_is_symmetric_and_bound_to_round_purpose_and_pair():
    a_sk, a_pk = crypto.new_x25519()
    b_sk, b_pk = crypto.new_x25519()
    k = crypto.agree(a_sk, b_pk, R1, b"mask", 1, 2)
    assert k == crypto.agree(b_sk, a_pk, R1, b"mask", 1, 2)
    assert len(k) == 32
    assert k != crypto.agree(a_sk, b_pk, R2, b"mask", 1, 2)  # another round
    assert k != crypto.agree(a_sk, b_pk, R1, b"share", 1, 2)  # another purpose
    assert k != crypto.agree(a_sk, b_pk, R1, b"mask", 2, 1)  # another ordered pair


def test_agree_rejects_invalid_public_key():
    sk, _ = crypto.new_x25519()
    with pytest.raises(CryptoError, match="pair \\(1, 2\\)"):
        crypto.agree(sk, bytes(32), R1, b"mask", 1, 2)


def test_x25519_public_recomputes_the_advertised_key():
    sk, pk = crypto.new_x25519()
    assert crypto.x25519_public(sk) == pk


def test_aead_round_trip_and_tampering():
    key = crypto.random_bytes(32)
    blob = crypto.aead_encrypt(key, b"secret share", b"aad")
    assert crypto.aead_decrypt(key, blob, b"aad") == b"secret share"
    with pytest.raises(CryptoError, match="authentication"):
        crypto.aead_decrypt(key, blob, b"other aad")
    bad = bytearray(blob)
    bad[20] ^= 1
    with pytest.raises(CryptoError, match="authentication"):
        crypto.aead_decrypt(key, bytes(bad), b"aad")


def test_signatures():
    sk, pk = crypto.new_identity()
    assert crypto.identity_public(sk) == pk
    sig = crypto.sign(sk, b"advert")
    assert crypto.verify(pk, b"advert", sig)
    assert not crypto.verify(pk, b"advert2", sig)
    _, other = crypto.new_identity()
    assert not crypto.verify(other, b"advert", sig)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_masks_cancel_and_match_keystream(dtype):
    n = 100_003  # crosses many chunks and ends mid-block
    s1, s2 = crypto.random_bytes(32), crypto.random_bytes(32)
    acc = np.zeros(n, dtype)
    crypto.apply_masks(acc, plus=[s1, s2])
    assert acc.any()
    crypto.apply_masks(acc, minus=[s2, s1])
    assert not acc.any()  # +PRG then -PRG of the same seeds cancels exactly (wrap-around)
    # The mask is the AES-CTR keystream itself, read little-endian.
    from Crypto.Cipher import AES

    one = np.zeros(n, dtype)
    crypto.apply_masks(one, plus=[s1])
    ks = AES.new(s1, AES.MODE_CTR, nonce=b"", initial_value=0).encrypt(bytes(n * one.itemsize))
    assert np.array_equal(one, np.frombuffer(ks, dtype=np.dtype(dtype).newbyteorder("<")))
    # Random access: the mask of a coordinate range equals that slice of the whole mask.
    start = 4096
    part = np.zeros(1000, dtype)
    crypto.apply_masks(part, plus=[s1], start=start)
    assert np.array_equal(part, one[start : start + 1000])
    with pytest.raises(ValueError, match="aligned"):
        crypto.apply_masks(part, plus=[s1], start=3)


def test_threaded_masks_equal_single_threaded():
    seeds = [crypto.random_bytes(32) for _ in range(5)]
    a = np.zeros(200_003, np.uint32)
    b = np.zeros(200_003, np.uint32)
    crypto.apply_masks(a, plus=seeds[:3], minus=seeds[3:])
    crypto.apply_masks(b, plus=seeds[:3], minus=seeds[3:], workers=3)
    assert a.any() and np.array_equal(a, b)


def test_prime_is_the_smallest_above_2_256():
    assert isPrime(shamir.PRIME)
    assert not any(isPrime((1 << 256) + i) for i in range(1, 297, 2))


def test_every_threshold_subset_recovers_and_every_smaller_one_fails():
    secret = crypto.random_bytes(32)
    digest = crypto.commit(R1, 7, secret)
    xs = [2, 3, 5, 8, 9, 11]  # holders' ids + 1
    t = 3
    shares = shamir.split(secret, xs, t)
    ok = lambda s: crypto.commit(R1, 7, s) == digest  # noqa: E731
    for k in range(1, len(xs) + 1):
        for subset in itertools.combinations(shares, k):
            if k >= t:
                assert shamir.recover(list(subset), t, ok, "seed") == secret
            else:
                with pytest.raises(AbortError, match="threshold is 3"):
                    shamir.recover(list(subset), t, ok, "seed")
                # interpolating fewer points gives a wrong value that verification catches
                value = shamir.reconstruct(list(subset))
                assert value >> 256 or not ok(value.to_bytes(32, "big"))


def test_recover_detects_a_corrupted_share():
    secret = crypto.random_bytes(32)
    shares = shamir.split(secret, [1, 2, 3, 4], 3)
    x, y = shares[0]
    shares[0] = (x, (int.from_bytes(y, "big") ^ 1).to_bytes(33, "big"))
    with pytest.raises(CryptoError, match="fails verification|not a 32-byte"):
        shamir.recover(shares, 3, lambda s: s == secret, "key of client 4")


def test_split_validates_arguments():
    with pytest.raises(ValueError, match="32 bytes"):
        shamir.split(b"short", [1, 2], 2)
    with pytest.raises(ValueError, match="distinct"):
        shamir.split(bytes(32), [1, 1], 2)
    with pytest.raises(ValueError, match="threshold"):
        shamir.split(bytes(32), [1, 2], 3)


def test_lagrange_coefficients_are_cached():
    shamir.lagrange_at_zero.cache_clear()
    shamir.reconstruct(shamir.split(bytes(32), [4, 5, 6], 3))
    shamir.reconstruct(shamir.split(bytes(range(32)), [4, 5, 6], 3))
    assert shamir.lagrange_at_zero.cache_info().hits == 1


@pytest.mark.parametrize("n,k", [(10, 4), (11, 6), (30, 8), (12, 5), (7, 6), (100, 24)])
def test_harary_graph_is_regular_symmetric_and_seeded(n, k):
    ids = list(range(100, 100 + n))
    g = graph.harary(ids, k, b"seed")
    assert set(g) == set(ids)
    for u, nb in g.items():
        assert len(nb) == k and u not in nb
        for v in nb:
            assert u in g[v]
    assert g == graph.harary(ids, k, b"seed")
    assert g != graph.harary(ids, k, b"other") or k >= n - 1


def test_choose_degree_meets_the_abort_target():
    for n, drop in [(10, 0.15), (100, 0.15), (1000, 0.1), (1000, 0.15)]:
        k, t = graph.choose_degree(n, drop, 1e-2)
        assert t == k // 2 + 1
        assert k == n - 1 or n * graph.failure_probability(k, t, drop) <= 1e-2
        # more expected dropout never yields a smaller graph
        assert graph.choose_degree(n, drop + 0.1, 1e-2)[0] >= k
    assert graph.choose_degree(1000, 0.15, 1e-2) == (30, 16)
