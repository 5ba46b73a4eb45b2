"""The real model through LiteRT: the shipped file, and int8 against float on held-out text."""

import jax
import numpy as np
import pytest

from keyboard.runtime import DeviceModel
from model import checkpoint, export, litert_eval, network, partition, paths, pipeline
from model.config import DevicePart
from model.corpus import build_corpus

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real():
    cfg0, base, _ = checkpoint.load(paths.BASE_DIR)
    cfg = cfg0.with_device_part(DevicePart.default())
    params = network.attach_device_part(base, cfg, jax.random.key(0))
    _, device = partition.split(params, cfg)
    corpus = build_corpus(pipeline.data_config("default"), with_shakespeare=False)
    return cfg, params, {k: np.asarray(v, np.float32) for k, v in device.items()}, corpus


def test_shipped_model_file_predicts_with_builtin_ops_only(real):
    _, _, _, corpus = real
    flat = paths.BASE_TFLITE.read_bytes()
    device = dict(np.load(paths.BASE_TFLITE.with_suffix(".device.npz")))
    assert not [o for o in export.op_names(flat) if o.startswith("custom:")]
    dm = DeviceModel(flat, corpus.vocab, device)
    assert "you" in dm.suggest("how are ")
    assert all(w.startswith("tha") for w in dm.suggest("tha"))


def test_int8_keeps_top1_within_half_a_point_of_float(real):
    cfg, params, device, corpus = real
    ctx, tgt = litert_eval.windows(corpus.tokens["heldout"], 16, 6_000)
    acc = {}
    for int8 in (False, True):
        flat = export.export(cfg, params, int8=int8, with_train=False)
        acc[int8] = litert_eval.runtime_accuracy(DeviceModel(flat, corpus.vocab, device), ctx, tgt)
    assert acc[False]["top1"] > 0.15  # a real model, not a degenerate one
    assert abs(acc[True]["top1"] - acc[False]["top1"]) <= 0.005
