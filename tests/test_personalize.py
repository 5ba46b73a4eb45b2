"""Personalisation through the LiteRT runtime on the tiny preset."""

import jax
import numpy as np
import pytest

from keyboard.runtime import DeviceModel
from model import export, network, partition, personalize
from model.vocab import build_vocabulary


@pytest.fixture(scope="module")
def exported(tiny_model):
    params = network.init_params(tiny_model, jax.random.key(0))
    _, device = partition.split(params, tiny_model)
    flat = export.export(tiny_model, params, int8=False)
    return flat, {k: np.asarray(v) for k, v in device.items()}, build_vocabulary(10_000)


def test_a_user_with_a_habit_gets_it_suggested(exported):
    flat, device, vocab = exported
    msgs = ["see you at the station tomorrow", "see you at the gym later"] * 30
    cfg = personalize.PersonalizeConfig(min_messages=10, epochs=6, lr=3e-2, keystroke_words=60)
    r = personalize.personalize_user(flat, vocab, device, "u", msgs, cfg, np.random.default_rng(0))
    assert r.adapt_messages == 42 and r.steps > 0
    assert r.top1_personal > r.top1_global + 0.2
    assert r.ks_personal > r.ks_global


def test_evaluate_user_counts_words_and_eos(exported):
    flat, device, vocab = exported
    model = DeviceModel(flat, vocab, device)
    out = personalize.evaluate_user(model, ["hello there", "ok"], keystroke_words=10)
    assert out["words"] == 2 + 1 + 1 + 1
    assert 0.0 <= out["top1"] <= 1.0 and 0.0 <= out["ks"] <= 1.0


def test_summary_statistics_exact():
    R = personalize.UserResult
    rs = [R("a", 10, 100, 5, 0.2, 0.3, 0.4, 0.5), R("b", 10, 300, 5, 0.2, 0.1, 0.4, 0.4)]
    s = personalize.summarize(rs)
    assert s["top1_gain"]["mean"] == pytest.approx(0.0)
    assert s["top1_gain"]["share_improved"] == 0.5
    assert s["keystroke_savings_gain"]["mean"] == pytest.approx(0.05)
    assert s["top1_personal_pooled"] == pytest.approx((0.3 * 100 + 0.1 * 300) / 400)
