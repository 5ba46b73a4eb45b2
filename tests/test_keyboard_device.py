"""One simulated phone on the shipped LiteRT model: toggle, sealed learning, restart, forget."""

import numpy as np
import pytest

from keyboard.device import CloudUnavailable, Device, DeviceConfig
from keyboard.runtime import ModelFileError
from model import paths

HABIT = [
    "see you at the zebra crossing",
    "meet me at the zebra crossing",
    "i am waiting at the zebra crossing",
    "wait for me at the zebra crossing",
    "we can meet at the zebra crossing",
]


def _hits(dev: Device, messages: list[str]) -> int:
    """Next-word top-1 hits over the words after the first of each message."""
    hits = 0
    for m in messages:
        w = m.split()
        for i in range(1, len(w)):
            hits += int(dev.model.suggest(" ".join(w[:i]) + " ")[:1] == [w[i]])
    return hits


@pytest.fixture
def cfg(tmp_path):
    # Adam: personal learning on one phone (federated rounds use SGD).
    return DeviceConfig(
        tmp_path / "phone", min_new_words=20, local_epochs=6, optimizer="adam", lr=1e-2
    )


def test_first_start_runs_the_shipped_model_and_seals_what_is_typed(cfg):
    dev = Device.open(cfg)
    assert dev.version == 0 and dev.on_device
    assert "you" in dev.suggest("how are ")
    assert dev.commit("my pin is zebra 4471")
    raw = b"".join(p.read_bytes() for p in cfg.data_dir.glob("*.bin"))
    assert b"zebra" not in raw and b"4471" not in raw
    assert not np.any([np.any(v) for v in dev.delta().values()])  # nothing learnt yet


def test_cloud_mode_keeps_nothing_and_needs_the_coordinator(cfg):
    dev = Device.open(cfg)
    dev.set_on_device(False)
    assert not dev.commit("typed in cloud mode")
    assert dev.history.messages() == []
    with pytest.raises(CloudUnavailable, match="not reachable"):
        dev.suggest("how are ")
    assert dev.train_if_eligible(True, np.random.default_rng(0)) is None
    assert not Device.open(cfg).on_device  # the toggle is remembered


def test_local_learning_improves_held_back_text_and_survives_a_restart(cfg):
    dev = Device.open(cfg)
    for i in range(4):
        for m in HABIT:
            dev.commit(m if i % 2 else m.replace("zebra", "old zebra"))
    held = dev.history.held_back()
    assert held and not set(held) & set(dev.history.training_text())
    before = _hits(dev, held)
    assert dev.train_if_eligible(False, np.random.default_rng(0)) is None  # not idle/charging
    report = dev.train_if_eligible(True, np.random.default_rng(0))
    assert report["steps"] > 0 and report["last_loss"] < report["first_loss"]
    after = _hits(dev, held)
    assert after > before
    assert any(np.any(v) for v in dev.delta().values())
    assert dev.train_if_eligible(True, np.random.default_rng(0)) is None  # nothing new
    again = Device.open(cfg)
    assert _hits(again, held) == after and again.stats()["local_training_steps"] == report["steps"]


def test_forget_my_data_wipes_text_log_and_local_model(cfg):
    dev = Device.open(cfg)
    for m in HABIT * 2:
        dev.commit(m)
    dev.log.record("GET", "/v1/models/x", "model_download", 10, 20, "model file")
    dev.train_if_eligible(True, np.random.default_rng(0))
    dev.forget()
    assert dev.history.messages() == [] and dev.log.entries() == []
    assert not (cfg.data_dir / "local_state.bin").exists()
    assert not np.any([np.any(v) for v in dev.delta().values()])
    assert Device.open(cfg).stats()["messages"] == 0


def test_a_bad_model_update_changes_nothing(cfg):
    dev = Device.open(cfg)
    good = paths.BASE_TFLITE.read_bytes()
    part = paths.BASE_TFLITE.with_suffix(".device.npz").read_bytes()
    with pytest.raises(ModelFileError):
        dev.install(1, good[: len(good) // 2], part)
    with pytest.raises(ModelFileError, match="device part"):
        dev.install(1, good, b"not an npz")
    assert dev.version == 0 and Device.open(cfg).version == 0
    dev.install(1, good, part)
    assert Device.open(cfg).version == 1


def test_diverging_local_training_is_discarded_and_loses_no_text(tmp_path):
    # SGD at an absurd rate: the loss turns to NaN within the run.
    cfg = DeviceConfig(tmp_path / "phone", min_new_words=5, local_epochs=3, optimizer="sgd", lr=1e6)
    dev = Device.open(cfg)
    for m in HABIT * 4:
        dev.commit(m)
    assert dev.train_if_eligible(True, np.random.default_rng(0)) is None
    assert not np.any([np.any(v) for v in dev.delta().values()])  # back to the global part
    assert dev.pending_contribution is None  # nothing half-trained waits to be contributed
    assert dev.history.eligible(5)  # the text is still there for the next run
    assert all(np.all(np.isfinite(v)) for v in dev.model.device.values())
    assert Device.open(cfg).pending_contribution is None
