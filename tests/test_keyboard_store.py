"""The device's local store: sealed at rest, tamper-evident, atomic; keys; history; privacy log."""

import os
import stat

import pytest

from keyboard import keys, store
from keyboard.history import TypingHistory
from keyboard.privacy_log import PrivacyLog

SECRET = "meet me at the zebra crossing by 7"


@pytest.fixture
def key(tmp_path):
    return keys.load_or_create_key(tmp_path / "store.key")


def test_store_file_holds_no_plaintext_and_round_trips(tmp_path, key):
    h = TypingHistory(tmp_path / "history.bin", key)
    assert h.add(SECRET)
    raw = (tmp_path / "history.bin").read_bytes()
    for needle in (SECRET, "zebra", "crossing"):
        assert needle.encode() not in raw
    assert TypingHistory(tmp_path / "history.bin", key).messages() == [SECRET]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:-1], "authentication failed"),
        (lambda b: b[:20], "truncated"),
        (lambda b: b"XXXXXXXX" + b[8:], "bad magic"),
        (lambda b: b[:40] + bytes([b[40] ^ 1]) + b[41:], "authentication failed"),
    ],
    ids=["truncated-tail", "truncated-header", "magic", "bit-flip"],
)
def test_tampered_store_is_detected_with_a_clear_error(tmp_path, key, damage, message):
    path = tmp_path / "history.bin"
    TypingHistory(path, key).add(SECRET)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(store.StoreCorruptError, match=message):
        TypingHistory(path, key)


def test_wrong_key_and_swapped_files_are_refused(tmp_path, key):
    TypingHistory(tmp_path / "history.bin", key).add(SECRET)
    other = bytes(32)
    with pytest.raises(store.StoreCorruptError, match="another key"):
        TypingHistory(tmp_path / "history.bin", other)
    # a sealed document moved under another name does not open: the name is authenticated
    os.replace(tmp_path / "history.bin", tmp_path / "log.bin")
    with pytest.raises(store.StoreCorruptError):
        PrivacyLog(tmp_path / "log.bin", key)


def test_a_failed_write_leaves_the_previous_store_intact(tmp_path, key, monkeypatch):
    h = TypingHistory(tmp_path / "history.bin", key)
    h.add("first message")

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        h.add("second message")
    monkeypatch.undo()
    assert TypingHistory(tmp_path / "history.bin", key).messages() == ["first message"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_key_file_is_private_and_checked(tmp_path):
    path = tmp_path / "k" / "store.key"
    k = keys.load_or_create_key(path)
    assert len(k) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert keys.load_or_create_key(path) == k
    path.chmod(0o644)
    with pytest.raises(store.StoreError, match="readable by others"):
        keys.load_or_create_key(path)
    path.chmod(0o600)
    path.write_bytes(b"short")
    with pytest.raises(store.StoreError, match="5 bytes"):
        keys.load_or_create_key(path)


def test_passphrase_key_is_stable_and_passphrase_specific(tmp_path):
    salt = tmp_path / "salt.json"
    a = keys.derive_key("correct horse", salt)
    assert keys.derive_key("correct horse", salt) == a
    assert keys.derive_key("wrong horse", salt) != a
    assert stat.S_IMODE(salt.stat().st_mode) == 0o600


def test_history_holds_back_every_fifth_message_and_tracks_training(tmp_path, key):
    h = TypingHistory(tmp_path / "h.bin", key, holdout_every=5)
    assert not h.add("  ...  ")  # no words: not kept
    for i in range(10):
        h.add(f"message number {i}")
    assert h.held_back() == ["message number 4", "message number 9"]
    assert len(h.training_text()) == 8
    assert h.words_since_training() == 24 and h.eligible(24) and not h.eligible(25)
    h.mark_trained()
    h.add("one more")
    reloaded = TypingHistory(tmp_path / "h.bin", key, holdout_every=5)
    assert reloaded.training_text(new_only=True) == ["one more"]
    reloaded.wipe()
    assert not (tmp_path / "h.bin").exists() and reloaded.messages() == []


def test_privacy_log_keeps_raw_text_verbatim_sealed_and_totals_exact(tmp_path, key):
    log = PrivacyLog(tmp_path / "log.bin", key)
    log.record("POST", "/v1/predict", "raw_text", 52, 40, SECRET, at=1.0)
    log.record("GET", "/v1/models/ab", "model_download", 120, 3_000_000, "model file", at=2.0)
    log.record("POST", "/v1/predict", "raw_text", 30, 40, "hi", at=3.0)
    assert SECRET.encode() not in (tmp_path / "log.bin").read_bytes()
    again = PrivacyLog(tmp_path / "log.bin", key)
    assert [e.contents for e in again.entries()] == [SECRET, "model file", "hi"]
    assert again.totals() == {
        "raw_text": {"requests": 2, "bytes_up": 82, "bytes_down": 80},
        "model_download": {"requests": 1, "bytes_up": 120, "bytes_down": 3_000_000},
    }
    with pytest.raises(ValueError, match="unknown privacy-log kind"):
        again.record("POST", "/x", "telemetry", 1, 1, "?")
    again.wipe()
    assert PrivacyLog(tmp_path / "log.bin", key).entries() == []
