"""Device-part variants: exact split/merge, zero update == base, frozen base, budget choice."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import batching, device_part, network, partition, train
from model.config import GROUPS, DevicePart, ModelConfig, TrainConfig
from model.vocab import BOS

TINY_PARTS = [
    DevicePart.head(),
    DevicePart.head_lora(2),
    DevicePart.head_embed(2),
    DevicePart.head_lora_embed(2, 2),
    DevicePart("bias+proj", ("head", "lstm_bias", "lstm_proj")),
    DevicePart.head_lora_rows(2, 40),
]


@pytest.fixture(scope="module")
def base(tiny_model):
    cfg = tiny_model.without_adapters()
    return cfg, network.init_params(cfg, jax.random.key(0))


def _batch():
    msgs = [np.array([BOS, 10 + i % 7, 20 + i % 5, 30 + i % 3, 3], np.int32) for i in range(40)]
    return next(batching.batches(batching.pack(msgs, 16), 8))


@pytest.mark.parametrize("part", TINY_PARTS, ids=lambda p: p.name)
def test_variant_split_merge_exact_and_zero_update_is_the_base(base, part):
    cfg0, params0 = base
    cfg = cfg0.with_device_part(part)
    params = network.attach_device_part(params0, cfg, jax.random.key(1))
    b, d = partition.split(params, cfg)
    assert set(d) == partition.device_names(cfg)
    merged = partition.merge(b, d, cfg)
    assert all(merged[k] is params[k] for k in params)
    tokens = jnp.array([[BOS, 10, 11, 12, 13, 14]])
    np.testing.assert_array_equal(
        np.asarray(network.SplitLM(cfg).apply({"params": params}, tokens)),
        np.asarray(network.SplitLM(cfg0).apply({"params": params0}, tokens)),
    )


@pytest.mark.parametrize("part", TINY_PARTS, ids=lambda p: p.name)
def test_training_a_variant_never_changes_frozen_parameters(base, part):
    cfg0, params0 = base
    cfg = cfg0.with_device_part(part)
    params = network.attach_device_part(params0, cfg, jax.random.key(1))
    opt = train.make_optimizer(TrainConfig.tiny(), 10)
    state = train.init_state(params, opt, "device", cfg)
    step = train.make_train_step(cfg, opt)
    for i in range(3):
        state, m = step(state, _batch(), jax.random.key(i))
    b, d = partition.split(params, cfg)
    after = state.params()
    for k in b:
        np.testing.assert_array_equal(np.asarray(after[k]), np.asarray(b[k]))
    assert all(k in d for k in state.trainable)
    # the loss moves: the device part does learn
    assert any(not np.array_equal(np.asarray(after[k]), np.asarray(d[k])) for k in d)


def test_sparse_row_update_equals_the_merged_embedding(base):
    """head+rows: the update of the first k rows acts exactly as that embedding edited in
    place, in the lookup (both forms) and in the tied output projection."""
    cfg0, params0 = base
    cfg = cfg0.with_device_part(DevicePart.head_lora_rows(0, 40))
    params = network.attach_device_part(params0, cfg, jax.random.key(1))
    params["emb_rows"] = jax.random.normal(jax.random.key(2), params["emb_rows"].shape)
    merged = dict(params0)
    merged["embedding"] = params0["embedding"].at[:40].add(params["emb_rows"])
    tokens = jnp.array([[BOS, 10, 39, 40, 41, 500]])  # ids either side of the edge
    want = network.SplitLM(cfg0).apply({"params": merged}, tokens)
    for onehot in (False, True):
        got = network.SplitLM(cfg).apply({"params": params}, tokens, onehot=onehot)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    with pytest.raises(ValueError, match="embed_rows"):
        ModelConfig(device_groups=("head", "embed_rows"))


def test_config_rejects_groups_without_their_adapters():
    with pytest.raises(ValueError, match="lora_rank"):
        ModelConfig(device_groups=("head", "lora"))
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig(device_groups=("head", "everything"))


def test_choose_groups_is_greedy_by_gain_per_byte_within_budget():
    S = device_part.GroupScore
    scores = [
        S("head", 10, 1.0, 100),
        S("lora", 50, 10.0, 800),
        S("embed_update", 50, 4.0, 200),
        S("lstm_bias", 5, 0.01, 50),
        S("lstm_proj", 50, 1.0, 800),
    ]
    # ratios: embed 0.02 > lora 0.0125 > proj 0.00125 > bias 0.0002
    assert device_part.choose_groups(scores, 100) == ("head",)
    assert device_part.choose_groups(scores, 300) == ("head", "embed_update")
    assert device_part.choose_groups(scores, 1100) == ("head", "lora", "embed_update")
    assert device_part.choose_groups(scores, 1150) == ("head", "lora", "embed_update", "lstm_bias")


def test_score_groups_measures_every_candidate(base, tiny_model):
    cfg0, params0 = base
    cand = ModelConfig(**{**tiny_model.__dict__, "device_groups": ("head",)})
    full = network.attach_device_part(params0, cand, jax.random.key(2))
    scores = device_part.score_groups(cand, full, [_batch()])
    by = {s.group: s for s in scores}
    # every parameter group is a candidate (FTTE); sparse rows only once given a size
    assert set(by) == set(GROUPS) - {"embed_rows"}
    assert by["embedding"].params == 10_004 * 16
    assert by["head"].params == 16 * 16 + 16 + 10_004
    assert all(s.grad_sq > 0 for s in scores if s.group != "lora")
    assert by["head"].memory_bytes == 16 * by["head"].params


def test_device_part_training_needs_less_memory_than_full(base):
    cfg0, params0 = base
    full = device_part.train_memory_bytes(cfg0, params0, "full", _batch())
    head = device_part.train_memory_bytes(cfg0, params0, "device", _batch())
    assert 0 < head < full
