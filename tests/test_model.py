import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import batching, checkpoint, network, partition, train
from model.config import ModelConfig, TrainConfig
from model.vocab import BOS, PAD


@pytest.fixture(scope="module")
def params(tiny_model):
    return network.init_params(tiny_model, jax.random.key(0))


def test_split_merge_is_exact_and_complete(params, tiny_model):
    base, device = partition.split(params, tiny_model)
    assert set(device) == {
        "head_kernel",
        "head_bias",
        "head_out_bias",
        "lora_xa",
        "lora_xb",
        "lora_ha",
        "lora_hb",
        "emb_a",
        "emb_b",
    }
    assert set(base) == {"embedding", "lstm_wx", "lstm_wh", "lstm_b", "lstm_wp"}
    merged = partition.merge(base, device, tiny_model)
    assert merged.keys() == params.keys()
    for k in params:
        assert merged[k] is params[k]
    assert partition.count(base) + partition.count(device) == partition.count(params)


def test_merge_rejects_overlap_and_misplaced_parameters(params, tiny_model):
    base, device = partition.split(params, tiny_model)
    with pytest.raises(ValueError, match="both hold"):
        partition.merge({**base, "head_bias": device["head_bias"]}, device, tiny_model)
    with pytest.raises(ValueError, match="wrong part"):
        rest = {k: v for k, v in base.items() if k != "embedding"}
        partition.merge(rest, {**device, "embedding": base["embedding"]}, tiny_model)
    with pytest.raises(ValueError, match="lacks"):
        partition.merge(base, {k: v for k, v in device.items() if k != "emb_a"}, tiny_model)


def test_default_is_the_gboard_shape():
    p = jax.eval_shape(lambda: network.init_params(ModelConfig.default(), jax.random.key(0)))
    total = sum(v.size for v in p.values())
    assert 1.3e6 < total < 1.5e6
    assert p["embedding"].shape == (10_004, 96)
    assert p["lstm_wx"].shape == (96, 3 * 670)  # CIFG: three gates


def test_zero_update_adapters_equal_the_model_without_adapters(tiny_model, params):
    tokens = jnp.array([[BOS, 10, 11, 12, 13]])
    no_lora = tiny_model.without_adapters()
    p0 = {k: v for k, v in params.items() if not k.startswith(("lora_", "emb_"))}
    a = network.SplitLM(tiny_model).apply({"params": params}, tokens)
    b = network.SplitLM(no_lora).apply({"params": p0}, tokens)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_state_resets_at_bos_so_left_padding_is_a_fresh_message(tiny_model, params):
    model = network.SplitLM(tiny_model)
    fresh = model.apply({"params": params}, jnp.array([[BOS, 20, 21]]))
    padded = model.apply({"params": params}, jnp.array([[PAD, PAD, 30, BOS, 20, 21]]))
    np.testing.assert_allclose(np.asarray(fresh[0]), np.asarray(padded[0, 3:]), atol=1e-6)


def test_unrolled_and_onehot_forms_match_the_training_graph(tiny_model, params):
    model = network.SplitLM(tiny_model)
    tokens = jnp.array([[BOS, 5, 6, 7, 8, 9]])
    a = model.apply({"params": params}, tokens)
    b = model.apply({"params": params}, tokens, onehot=True, unroll=6)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def _tiny_batch():
    msgs = [np.array([BOS, 10 + i % 7, 20 + i % 5, 30 + i % 3, 3], np.int32) for i in range(40)]
    return next(batching.batches(batching.pack(msgs, 16), 8))


def test_train_step_lowers_the_loss(tiny_model, params):
    cfg = TrainConfig.tiny()
    opt = train.make_optimizer(cfg, 50)
    state = train.init_state(params, opt, "full", tiny_model)
    step = train.make_train_step(tiny_model, opt)
    batch = _tiny_batch()
    key = jax.random.key(1)
    losses = []
    for _ in range(30):
        key, sub = jax.random.split(key)
        state, m = step(state, batch, sub)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.5 * losses[0]
    assert int(state.step) == 30


def test_device_training_never_changes_the_base(tiny_model, params):
    opt = train.make_optimizer(TrainConfig.tiny(), 10)
    state = train.init_state(params, opt, "device", tiny_model)
    step = train.make_train_step(tiny_model, opt)
    for i in range(5):
        state, _ = step(state, _tiny_batch(), jax.random.key(i))
    base, device = partition.split(params, tiny_model)
    after = state.params()
    for k in base:
        np.testing.assert_array_equal(np.asarray(after[k]), np.asarray(base[k]))
    assert any(not np.array_equal(np.asarray(after[k]), np.asarray(device[k])) for k in device)


def test_eval_step_counts_every_real_target(tiny_model, params):
    batch = _tiny_batch()
    m = train.make_eval_step(tiny_model)(params, batch)
    assert int(m["count"]) == int(batch.mask.sum())
    assert 0 <= int(m["hits1"]) <= int(m["hits3"]) <= int(m["count"])


def test_pack_keeps_every_target_once():
    msgs = [np.array([BOS, 5, 6, 3]), np.array([BOS, 7, 3]), np.array([BOS] + [9] * 20 + [3])]
    packed = batching.pack(msgs, 8)
    targets = packed.targets[packed.targets != PAD]
    assert len(targets) == sum(len(m) - 1 for m in msgs)
    assert packed.inputs.shape[1] == 8
    # a message never straddles a row boundary unless it is longer than a row
    assert list(packed.inputs[0][:5]) == [BOS, 5, 6, BOS, 7]


def test_checkpoint_round_trip_and_shape_errors(tmp_path, tiny_model, params):
    checkpoint.save(tmp_path / "ck", tiny_model, params, {"kind": "test"})
    cfg, loaded, meta = checkpoint.load(tmp_path / "ck")
    assert cfg == tiny_model and meta == {"kind": "test"}
    for k in params:
        np.testing.assert_array_equal(np.asarray(loaded[k]), np.asarray(params[k]))
    bad = dict(params, head_bias=jnp.zeros(3))
    checkpoint.save(tmp_path / "bad", tiny_model, bad)
    with pytest.raises(ValueError, match="head_bias"):
        checkpoint.load(tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.load(tmp_path / "missing")
