"""One simulated phone: predictions, the on-device toggle, local learning, and forgetting.

Everything the user typed stays in the sealed local store (`keyboard.history`), the locally
trained device part is sealed too, and only the LiteRT model (`keyboard.runtime`) touches
it. What would leave the device — the update `delta()` — is computed here but sent by the
secure-aggregation client, and every request goes through the transport, which writes the
privacy log.

Files under `data_dir`: `store.key` (0600), `history.bin`, `privacy_log.bin`,
`settings.bin`, `local_state.bin` (all sealed), and `models/` (the public global model files:
`<sha256>.tflite`, `v<version>.npz`, `current.json`).
"""

import hashlib
import io
import json
import logging
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keyboard import keys, store
from keyboard.history import TypingHistory
from keyboard.privacy_log import PrivacyLog
from keyboard.runtime import DeviceModel, ModelFileError
from model import paths
from model.checkpoint import atomic_write_bytes
from model.vocab import Vocabulary, build_vocabulary

__all__ = ["DeviceConfig", "Device", "CloudUnavailable", "read_device_part"]

log = logging.getLogger(__name__)


class CloudUnavailable(RuntimeError):
    """Cloud mode was asked for suggestions but no coordinator is reachable."""


@dataclass(frozen=True)
class DeviceConfig:
    data_dir: Path  # this phone's private directory
    min_new_words: int = 40  # new typed words needed before a local training run
    local_epochs: int = 1  # passes over the training text per run
    # The phone's optimiser and its constant rate. Plain SGD: FedAvg's client optimiser, whose
    # averaged updates carry the users' signal; a fresh Adam per round does not
    # (bench/client_optimizer). "adam" at 1e-3 suits pure personalisation (bench/personalization).
    optimizer: str = "sgd"
    lr: float = 0.5
    holdout_every: int = 5  # every n-th message is held back for federated evaluation
    passphrase: str | None = None  # derive the store key (scrypt) instead of a key file


# Persisted user settings and contribution state, with their defaults.
_SETTINGS = {
    "on_device": True,
    "last_upload_bytes": 0,
    "uploads": 0,
    # The simulated "idle and charging" condition under which a phone trains and contributes
    # (Gboard trains only then); on by default so the demo visibly learns, switchable in the UI.
    "idle_and_charging": True,
    # Version whose locally trained update still waits to be contributed (None: nothing waits).
    # Survives restarts and an unreachable coordinator: the contribution resumes later.
    "pending_contribution": None,
}


def read_device_part(payload: bytes) -> dict[str, np.ndarray]:
    """Named float32 arrays from an npz (no pickle); `ModelFileError` if it is not one."""
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as z:
            return {k: z[k].astype(np.float32) for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ModelFileError(f"device part ({len(payload)} bytes) is unreadable: {e}") from e


class Device:
    """A phone's keyboard state; construct with `Device.open`."""

    def __init__(self, config: DeviceConfig, key: bytes, vocab: Vocabulary) -> None:
        self.config = config
        d = Path(config.data_dir)
        self._key = key
        self.vocab = vocab
        self.history = TypingHistory(d / "history.bin", key, config.holdout_every)
        self.log = PrivacyLog(d / "privacy_log.bin", key)
        self._settings = store.SealedDocument(d / "settings.bin", key, dict(_SETTINGS))
        self.settings = {**_SETTINGS, **self._settings.load()}  # older stores lack new keys
        # One phone, several threads (web handlers, the background worker): every change of
        # state, and the LiteRT interpreter (not thread-safe), goes through this lock.
        self.lock = threading.RLock()
        self._local = d / "local_state.bin"
        self.models = d / "models"
        self.cloud_predict: Callable[[str], list[str]] | None = None  # set by the transport
        self._load_current()

    @classmethod
    def open(cls, config: DeviceConfig, vocab: Vocabulary | None = None) -> "Device":
        d = Path(config.data_dir)
        key = (
            keys.derive_key(config.passphrase, d / "store.salt")
            if config.passphrase
            else keys.load_or_create_key(d / "store.key")
        )
        return cls(config, key, vocab or build_vocabulary())

    def sealed(self, name: str, default: object) -> store.SealedDocument:
        """Another document in this phone's sealed store (e.g. the transport's credentials)."""
        return store.SealedDocument(Path(self.config.data_dir) / name, self._key, default)

    # -- the model ------------------------------------------------------------------------
    def _load_current(self) -> None:
        current = self.models / "current.json"
        if not current.exists():  # first start: the model the app ships with
            self.install(
                0, paths.BASE_TFLITE.read_bytes(), paths.BASE_TFLITE.with_suffix(".device.npz")
                .read_bytes(),
            )  # fmt: skip
            return
        meta = json.loads(current.read_text())
        model = (self.models / f"{meta['model_sha256']}.tflite").read_bytes()
        self.global_part = read_device_part((self.models / f"v{meta['version']}.npz").read_bytes())
        self.version = meta["version"]
        self.model = DeviceModel(model, self.vocab, self.global_part)
        if self._local.exists():
            payload = store.open_bytes(self._local.read_bytes(), self._key, self._local.name)
            self.model.load_state_bytes(payload, str(self._local))

    def install(self, version: int, model_bytes: bytes, device_part_npz: bytes) -> None:
        """Swap in a global version atomically: validated first, then written, then used."""
        part = read_device_part(device_part_npz)
        model = DeviceModel(model_bytes, self.vocab, part)  # raises before anything changes
        sha = hashlib.sha256(model_bytes).hexdigest()
        with self.lock:
            atomic_write_bytes(self.models / f"{sha}.tflite", model_bytes)
            atomic_write_bytes(self.models / f"v{version}.npz", device_part_npz)
            meta = {"version": version, "model_sha256": sha}
            atomic_write_bytes(self.models / "current.json", json.dumps(meta).encode())
            self.model, self.global_part, self.version = model, part, version
            self._local.unlink(missing_ok=True)  # local training restarts from the new global
        log.info("installed global version %d (model %s)", version, sha[:12])

    @property
    def model_sha256(self) -> str:
        return json.loads((self.models / "current.json").read_text())["model_sha256"]

    # -- typing ---------------------------------------------------------------------------
    @property
    def on_device(self) -> bool:
        return bool(self.settings["on_device"])

    def set_on_device(self, on: bool) -> None:
        self._set(on_device=bool(on))

    def _set(self, **changes: object) -> None:
        with self.lock:
            self.settings.update(changes)
            self._settings.save(self.settings)

    @property
    def idle_and_charging(self) -> bool:
        return bool(self.settings["idle_and_charging"])

    def set_idle_and_charging(self, on: bool) -> None:
        self._set(idle_and_charging=bool(on))

    @property
    def pending_contribution(self) -> int | None:
        """The version a trained, not yet contributed update was computed against."""
        return self.settings["pending_contribution"]

    def set_pending_contribution(self, version: int | None) -> None:
        self._set(pending_contribution=version)

    def suggest(self, typed: str) -> list[str]:
        """Three suggestions: from the local model, or (cloud mode) from the coordinator."""
        if self.on_device:
            with self.lock:
                return self.model.suggest(typed)
        if self.cloud_predict is None:
            raise CloudUnavailable("cloud mode needs the coordinator, which is not reachable")
        try:
            return self.cloud_predict(typed)
        except Exception as e:  # the network, or the coordinator refusing: say so, keep going
            raise CloudUnavailable(f"cloud mode: the coordinator did not answer ({e})") from e

    def commit(self, message: str) -> bool:
        """A finished message: kept (sealed) for local learning in on-device mode only."""
        with self.lock:
            return self.on_device and self.history.add(message)

    # -- learning -------------------------------------------------------------------------
    def train_if_eligible(self, idle_and_charging: bool, rng: np.random.Generator) -> dict | None:
        """Local epochs over the new training text when there is enough and the phone is idle
        and charging; returns what happened, or None."""
        if not (self.on_device and idle_and_charging):
            return None
        with self.lock:
            if not self.history.eligible(self.config.min_new_words):
                return None
            return self.train(rng)

    def train(self, rng: np.random.Generator) -> dict | None:
        """Local epochs over all training text from the current local state; marks the update
        as waiting to be contributed. None if there is no training text."""
        with self.lock:
            texts = self.history.training_text()
            losses, cfg = [], self.config
            try:
                for _ in range(self.config.local_epochs):
                    order = rng.permutation(len(texts))
                    for tokens, targets in self.model.batches([texts[i] for i in order]):
                        losses.append(self.model.train_step(tokens, targets, cfg.lr, cfg.optimizer))
            except FloatingPointError as e:
                # Diverged part-way: drop this run's steps (back to the global version) rather
                # than keep or contribute a half-trained model; the text stays for next time.
                log.warning("local training diverged, run discarded: %s", e)
                self.model.reset(self.global_part)
                self._local.unlink(missing_ok=True)
                self._set(pending_contribution=None)
                return None
            if not losses:
                return None
            self._save_local()
            self.history.mark_trained()
            self._set(pending_contribution=self.version)
            return {"steps": len(losses), "first_loss": losses[0], "last_loss": losses[-1]}

    def _save_local(self) -> None:
        sealed = store.seal_bytes(self.model.state_bytes(), self._key, self._local.name)
        atomic_write_bytes(self._local, sealed)

    def delta(self) -> dict[str, np.ndarray]:
        """Local minus global device part: the update a contribution starts from."""
        with self.lock:
            return {k: self.model.device[k] - self.global_part[k] for k in self.model.names}

    def record_upload(self, nbytes: int) -> None:
        with self.lock:
            self._set(last_upload_bytes=int(nbytes), uploads=self.settings["uploads"] + 1)

    # -- the user's controls --------------------------------------------------------------
    def forget(self) -> None:
        """Forget my data: typed text, the privacy log and the locally trained model."""
        with self.lock:
            self.history.wipe()
            self.log.wipe()
            self._local.unlink(missing_ok=True)
            self.model.reset(self.global_part)
            self._set(pending_contribution=None)
        log.info("forgot local data")

    def stats(self) -> dict:
        with self.lock:
            return self._stats()

    def _stats(self) -> dict:
        return {
            "on_device": self.on_device,
            "messages": len(self.history.messages()),
            "words_typed": sum(len(m.split()) for m in self.history.messages()),
            "words_since_training": self.history.words_since_training(),
            "local_training_steps": self.model.train_steps,
            "model_version": self.version,
            "last_upload_bytes": self.settings["last_upload_bytes"],
            "uploads": self.settings["uploads"],
            "idle_and_charging": self.idle_and_charging,
            "pending_contribution": self.pending_contribution,
        }
