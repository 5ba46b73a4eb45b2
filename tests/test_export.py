"""LiteRT export and the on-device runtime, on the tiny preset (real converter, real runtime)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from keyboard import memprobe
from keyboard.runtime import DeviceModel, ModelFileError
from model import checkpoint, export, litert_eval, network, partition
from model.config import DevicePart
from model.vocab import BOS, build_vocabulary
from sotto import cli

SPEC = export.ExportSpec()


@pytest.fixture(scope="module")
def setup(tiny_model):
    params = network.init_params(tiny_model, jax.random.key(0))
    # Non-zero adapters, so parity covers every device-part input.
    keys = jax.random.split(jax.random.key(1), len(params))
    params = {
        k: v + 0.05 * jax.random.normal(kk, v.shape) if k.startswith(("lora_", "emb_")) else v
        for (k, v), kk in zip(sorted(params.items()), keys, strict=True)
    }
    flat = export.export(tiny_model, params, SPEC, int8=False)
    base, device = partition.split(params, tiny_model)
    return tiny_model, params, base, device, flat


def _np(d):
    return {k: np.asarray(v) for k, v in d.items()}


def test_litert_infer_equals_jax(setup):
    cfg, params, base, device, flat = setup
    vocab = build_vocabulary(cfg.vocab_size - 4)
    dm = DeviceModel(flat, vocab, _np(device))
    f = jax.jit(export.infer_fn(cfg, base, SPEC))
    names = sorted(device)
    for words in (["how", "are"], [], ["i", "think", "that", "we"] * 5):
        ctx = dm.context_ids(words)
        ids_j, sc_j = f(*[device[k] for k in names], ctx, dm.allowed(""))
        ids_l, sc_l = dm.top_k(words)
        assert list(ids_l) == list(np.asarray(ids_j)[0])
        np.testing.assert_allclose(sc_l, np.asarray(sc_j)[0], atol=1e-4)
    # the exported distribution is the training graph's distribution
    logits = network.SplitLM(cfg).apply({"params": params}, jnp.asarray(dm.context_ids(["hi"])))
    logp = jax.nn.log_softmax(logits[0, -1].at[0].set(-1e9).at[BOS].set(-1e9))
    _, sc = dm.top_k(["hi"])
    np.testing.assert_allclose(sc, np.sort(np.asarray(logp))[::-1][:3], atol=1e-4)


def test_completion_only_suggests_words_with_the_prefix(setup):
    cfg, _, _, device, flat = setup
    dm = DeviceModel(flat, build_vocabulary(cfg.vocab_size - 4), _np(device))
    for typed in ("how are yo", "th", "qu"):
        words = dm.suggest(typed)
        assert len(words) == 3
        assert all(w.startswith(typed.split()[-1]) for w in words)
    assert dm.suggest("zzzzq") == []  # no vocabulary word completes it


@pytest.mark.parametrize(
    ("adam", "lr", "reference"),
    [
        (1.0, 1e-2, optax.adam(1e-2, b1=export.ADAM_B1, b2=export.ADAM_B2, eps=export.ADAM_EPS)),
        (0.0, 0.5, optax.sgd(0.5)),  # the `adam` switch off: plain SGD
    ],
)
def test_handwritten_step_equals_optax(setup, adam, lr, reference):
    _, _, _, device, _ = setup
    grads = jax.tree.map(lambda v: jnp.sin(jnp.arange(v.size).reshape(v.shape) + 1.0), device)
    st = reference.init(device)
    mine = export.adam_init(device)
    p_opt, p_mine = dict(device), dict(device)
    mu = {k: mine[f"mu.{k}"] for k in device}
    nu = {k: mine[f"nu.{k}"] for k in device}
    count = mine["count"]
    for _ in range(3):
        upd, st = reference.update(grads, st, p_opt)
        p_opt = optax.apply_updates(p_opt, upd)
        p_mine, mu, nu, count = export._step(p_mine, grads, mu, nu, count, lr, adam)
    for k in device:
        np.testing.assert_allclose(np.asarray(p_mine[k]), np.asarray(p_opt[k]), atol=1e-6)


def test_twenty_litert_train_steps_match_jax(setup, tmp_path):
    cfg, _, base, device, flat = setup
    vocab = build_vocabulary(cfg.vocab_size - 4)
    dm = DeviceModel(flat, vocab, _np(device))
    msgs = ["how are you doing today", "i am fine thanks", "see you later then"] * 20
    batches = dm.batches(msgs)
    step = jax.jit(export.train_fn(cfg, base, SPEC))
    names = sorted(device)
    state = export.adam_init(device)
    dj = _np(device)
    sj = {k: state[k] for k in state}
    losses = []
    for i in range(20):
        tok, tgt = batches[i % len(batches)]
        losses.append(dm.train_step(tok, tgt, 1e-2))
        out = step(
            *[dj[k] for k in names],
            *[sj[f"mu.{k}"] for k in names],
            *[sj[f"nu.{k}"] for k in names],
            sj["count"],
            np.float32(1e-2),
            np.float32(1.0),
            tok,
            tgt,
        )
        n = len(names)
        dj = {k: np.asarray(out[i2]) for i2, k in enumerate(names)}
        sj = {
            **{f"mu.{k}": out[n + i2] for i2, k in enumerate(names)},
            **{f"nu.{k}": out[2 * n + i2] for i2, k in enumerate(names)},
            "count": out[3 * n],
        }
        assert losses[-1] == pytest.approx(float(out[-1]), abs=1e-4)
    assert losses[-1] < losses[0]
    for k in names:
        np.testing.assert_allclose(dm.device[k], dj[k], atol=1e-4)
    # base never changes: the flatbuffer is the same bytes, and prediction moved
    dm.save_state(tmp_path / "state.npz")
    other = DeviceModel(flat, vocab, _np(device))
    other.load_state(tmp_path / "state.npz")
    assert other.train_steps == 20
    for k in names:
        np.testing.assert_array_equal(other.device[k], dm.device[k])
    assert list(other.top_k(["how"])[0]) == list(dm.top_k(["how"])[0])


def test_litert_sgd_step_matches_jax_and_keeps_adam_count(setup):
    cfg, _, base, device, flat = setup
    dm = DeviceModel(flat, build_vocabulary(cfg.vocab_size - 4), _np(device))
    tok, tgt = dm.batches(["how are you doing today", "i am fine thanks"])[0]
    names = sorted(device)
    state = export.adam_init(device)
    out = jax.jit(export.train_fn(cfg, base, SPEC))(
        *[np.asarray(device[k]) for k in names],
        *[state[f"mu.{k}"] for k in names],
        *[state[f"nu.{k}"] for k in names],
        state["count"], np.float32(0.5), np.float32(0.0), tok, tgt,
    )  # fmt: skip
    dm.train_step(tok, tgt, 0.5, "sgd")
    for i, k in enumerate(names):
        np.testing.assert_allclose(dm.device[k], np.asarray(out[i]), atol=1e-4)
    assert any(not np.allclose(dm.device[k], np.asarray(device[k])) for k in names)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        dm.train_step(tok, tgt, 0.5, "adagrad")


def test_bad_model_files_and_states_give_clear_errors(setup, tmp_path):
    cfg, _, _, device, flat = setup
    vocab = build_vocabulary(cfg.vocab_size - 4)
    with pytest.raises(ModelFileError, match="TFL3"):
        DeviceModel(b"not a model", vocab, _np(device))
    with pytest.raises(ModelFileError):
        DeviceModel(flat[: len(flat) // 3], vocab, _np(device))
    with pytest.raises(ModelFileError, match="lacks"):
        DeviceModel(flat, vocab, {k: v for k, v in _np(device).items() if k != "head_bias"})
    dm = DeviceModel(flat, vocab, _np(device))
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(ModelFileError, match="unreadable"):
        dm.load_state(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="batch must be"):
        dm.train_step(np.zeros((2, 2), np.int32), np.zeros((2, 2), np.int32), 1e-2)


def test_only_builtin_ops_and_int8_shrinks(setup):
    cfg, params, *_ = setup
    q = export.export(cfg, params, SPEC, int8=True)
    ops = export.op_names(q)
    assert "EMBEDDING_LOOKUP" in ops and "TOPK_V2" in ops
    assert not [o for o in ops if o.startswith("custom:")]
    assert len(q) < 0.6 * len(setup[4])
    # and the int8 file runs both signatures (a constant folded into an int8 left operand
    # once made LiteRT refuse the LoRA graph at run time)
    _, _, _, device, _ = setup
    dm = DeviceModel(q, build_vocabulary(cfg.vocab_size - 4), _np(device))
    assert len(dm.suggest("how are ")) == 3
    tokens, targets = dm.batches(["how are you doing today"] * 10)[0]
    assert np.isfinite(dm.train_step(tokens, targets, 1e-2))


def test_int8_training_follows_the_exact_gradient(setup):
    """Weight-only int8 in `train`: dynamic-range kernels would quantise the backward pass's
    gradients too: forty SGD steps drifted to cosine 0.998 and a 7% longer update."""
    cfg, params, _, device, _ = setup
    q = export.export(cfg, params, SPEC, int8=True)
    dm = DeviceModel(q, build_vocabulary(cfg.vocab_size - 4), _np(device))
    msgs = ["how are you doing today", "i am fine thanks", "see you later then", "ok"] * 30
    batches = (dm.batches(msgs) * 10)[:40]
    out = litert_eval.train_chain_parity(dm, cfg, params, batches, 0.1, "sgd")
    assert out["update_cosine"] > 0.9995
    assert out["update_norm_ratio"] == pytest.approx(1.0, rel=0.02)


def test_memprobe_measures_training_memory_in_a_fresh_process(setup, tmp_path):
    path = tmp_path / "tiny.tflite"
    path.write_bytes(setup[4])
    assert memprobe.train_peak_bytes(path, steps=2) > 0


def test_sotto_export_writes_a_runnable_model_for_a_checkpoint(tmp_path, tiny_model):
    params = network.init_params(tiny_model, jax.random.key(0))
    checkpoint.save(tmp_path / "ckpt", tiny_model, params, {"kind": "tiny"}, dtype="float32")
    out = tmp_path / "m.tflite"
    cli.main(["export", "--model", str(tmp_path / "ckpt"), "--out", str(out)])
    device = dict(np.load(out.with_suffix(".device.npz")))
    assert device.keys() == partition.device_names(tiny_model)
    dm = DeviceModel(out.read_bytes(), build_vocabulary(tiny_model.vocab_size - 4), device)
    assert len(dm.suggest("how are ")) == 3
    assert dm._train is not None


def test_windows_left_pad_and_cover_every_target():
    msgs = [np.array([BOS, 10, 11, 3]), np.array([BOS, 12, 3])]
    ctx, tgt = litert_eval.windows(msgs, 2, 100)
    assert list(tgt) == [10, 11, 3, 12, 3]
    assert ctx[0].tolist() == [0, BOS] and ctx[2].tolist() == [10, 11]
    assert len(litert_eval.windows(msgs, 2, 4)[1]) == 4


@pytest.mark.parametrize(
    "part",
    [DevicePart.head(), DevicePart.head_lora(2), DevicePart.head_embed(2), DevicePart.full()],
    ids=lambda p: p.name,
)
def test_every_device_part_variant_exports_and_trains_on_litert(part, tiny_model):
    cfg = tiny_model.without_adapters().with_device_part(part)
    params = network.init_params(cfg, jax.random.key(0))
    _, device = partition.split(params, cfg)
    flat = export.export(cfg, params, SPEC, int8=part.name != "full")
    dm = DeviceModel(flat, build_vocabulary(cfg.vocab_size - 4), _np(device))
    assert set(dm.names) == partition.device_names(cfg)
    before = dm.top_k(["see", "you", "at", "the"])[1]
    tokens, targets = dm.batches(["see you at the station"] * 16)[0]
    losses = [dm.train_step(tokens, targets, 3e-2) for _ in range(5)]
    assert losses[-1] < losses[0]
    assert not np.allclose(dm.top_k(["see", "you", "at", "the"])[1], before)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_train_chain_parity_runs_both_optimizers(setup, optimizer):
    """bench/litert's parity check: float LiteRT and JAX chains agree for either step."""
    cfg, params, _, device, flat = setup
    dm = DeviceModel(flat, build_vocabulary(cfg.vocab_size - 4), _np(device))
    batches = dm.batches(["how are you doing today", "i am fine thanks"] * 20)[:5]
    out = litert_eval.train_chain_parity(dm, cfg, params, batches, 0.1, optimizer)
    assert out["max_param_diff"] < 1e-3
    assert abs(out["loss_litert"] - out["loss_jax"]) < 1e-3
    with pytest.raises(ValueError, match="optimizer"):
        litert_eval.train_chain_parity(dm, cfg, params, batches, 0.1, "rmsprop")
