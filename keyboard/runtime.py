"""The on-device model: a LiteRT `.tflite` (from `model.export`) run with the LiteRT runtime.

A phone has no JAX. `DeviceModel` predicts with the `infer` signature and trains the device
part with the `train` signature; the device part and Adam state live here as numpy arrays and
are saved atomically, so a crash never leaves a half-written state.
"""

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from model import metrics, suggest, text
from model.checkpoint import atomic_write_bytes
from model.vocab import BOS, PAD, Vocabulary

__all__ = ["ModelFileError", "DeviceModel", "load_interpreter", "OPTIMIZERS"]

# What the `train` signature can step with: Adam (personalisation) or plain SGD (federated
# rounds' client optimiser, see model/export.py).
OPTIMIZERS = ("adam", "sgd")


class ModelFileError(ValueError):
    """The model file is missing, truncated, corrupted, or lacks a signature we need."""


def load_interpreter(model: bytes, num_threads: int = 1):
    """A LiteRT interpreter over `model` bytes, with clear errors for bad files."""
    from ai_edge_litert.interpreter import Interpreter

    # A flatbuffer's file identifier sits at bytes 4..8; checking it first turns most
    # corruptions into a clear error before the runtime parses anything.
    if len(model) < 8 or model[4:8] != b"TFL3":
        raise ModelFileError(f"not a LiteRT model ({len(model)} bytes, no TFL3 identifier)")
    try:
        interp = Interpreter(model_content=model, num_threads=num_threads)
        sigs = interp.get_signature_list()
    except (ValueError, RuntimeError) as e:
        raise ModelFileError(f"LiteRT could not load the model: {e}") from e
    if "infer" not in sigs:
        raise ModelFileError(f"model has signatures {sorted(sigs)}, needs 'infer'")
    return interp


class DeviceModel:
    """Suggestions and local training from one LiteRT model file plus the device part."""

    def __init__(
        self,
        model: bytes,
        vocab: Vocabulary,
        device_part: dict[str, np.ndarray],
        context_len: int = 16,
        num_threads: int = 1,
    ) -> None:
        self.interp = load_interpreter(model, num_threads)
        sigs = self.interp.get_signature_list()
        self._infer = self.interp.get_signature_runner("infer")
        self._train = self.interp.get_signature_runner("train") if "train" in sigs else None
        self.names = sorted(n for n in sigs["infer"]["inputs"] if n not in ("context", "allowed"))
        missing = set(self.names) - device_part.keys()
        if missing:
            raise ModelFileError(f"device part lacks {sorted(missing)} that the model needs")
        self.device = {k: np.asarray(device_part[k], np.float32) for k in self.names}
        self.opt_state = self._zero_state()
        self.vocab = vocab
        self.context_len = context_len
        self.index = metrics.PrefixIndex(vocab)
        self._all = np.ones(len(vocab), np.float32)
        self._all[[PAD, BOS]] = 0.0
        # What the suggestion strip may show: real words only (metrics still score <unk>
        # and <eos> targets through `top_k`, but a keyboard never offers them).
        self._words = np.zeros(len(vocab), np.float32)
        self._words[self.index.all_ids] = 1.0
        if self._train is not None:
            inputs = self._train.get_input_details()
            self.train_shape = tuple(inputs["tokens"]["shape"])
        self.train_steps = 0

    def reset(self, device_part: dict[str, np.ndarray]) -> None:
        """Start over from `device_part` with a fresh optimiser (a new global version)."""
        missing = set(self.names) - device_part.keys()
        if missing:
            raise ModelFileError(f"device part lacks {sorted(missing)} that the model needs")
        self.device = {k: np.asarray(device_part[k], np.float32) for k in self.names}
        self.opt_state = self._zero_state()
        self.train_steps = 0

    def _zero_state(self) -> dict[str, np.ndarray]:
        st = {f"{p}.{k}": np.zeros_like(v) for p in ("mu", "nu") for k, v in self.device.items()}
        st["count"] = np.zeros((), np.float32)
        return st

    # -- prediction -------------------------------------------------------------------------
    def context_ids(self, words: Sequence[str]) -> np.ndarray:
        ids = ([BOS] + self.vocab.encode_words(words))[-self.context_len :]
        window = np.full((1, self.context_len), PAD, np.int32)  # left-padded: state resets
        window[0, -len(ids) :] = ids
        return window

    def allowed(self, prefix: str) -> np.ndarray:
        if not prefix:
            return self._all
        mask = np.zeros(len(self.vocab), np.float32)
        mask[self.index.ids_with_prefix(prefix)] = 1.0
        return mask

    def top_k(self, words: Sequence[str], prefix: str = "") -> tuple[np.ndarray, np.ndarray]:
        """(ids, log-probs) of the best words after `words` that start with `prefix`."""
        return self.infer_window(self.context_ids(words), self.allowed(prefix))

    def infer_window(
        self, window_1xT: np.ndarray, allowed_V: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, log-probs) of the best words after a left-padded id window `[1, T]`."""
        allowed_V = self._all if allowed_V is None else allowed_V
        out = self._infer(**self.device, context=window_1xT.astype(np.int32), allowed=allowed_V)
        ids, scores = out["ids"][0], out["scores"][0]
        keep = scores > -1e8  # fewer matching words than k: the rest are padding
        return ids[keep], scores[keep]

    def suggest(self, typed: str) -> list[str]:
        """Three suggestions for what is typed so far (completions inside a word)."""
        context, partial = suggest.split_typed(typed)
        allowed = self.allowed(partial) if partial else self._words
        ids, _ = self.infer_window(self.context_ids(context), allowed)
        return [self.vocab.tokens[i] for i in ids]

    # -- training ---------------------------------------------------------------------------
    def batches(self, messages: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Typed messages packed into the `train` signature's fixed [B, T] shape."""
        from model import batching

        if self._train is None:
            raise ModelFileError("this model file has no 'train' signature")
        B, T = self.train_shape
        toks = [np.asarray(self.vocab.encode(m), np.int32) for m in messages if text.words(m)]
        packed = batching.pack(toks, T)
        return [(b.inputs, b.targets) for b in batching.batches(packed, B)]

    def train_step(
        self, tokens: np.ndarray, targets: np.ndarray, lr: float, optimizer: str = "adam"
    ) -> float:
        """One step on the device part ("adam", or plain "sgd" for federated rounds); returns
        the batch loss."""
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if self._train is None:
            raise ModelFileError("this model file has no 'train' signature")
        if tokens.shape != self.train_shape or targets.shape != self.train_shape:
            raise ValueError(f"batch must be {self.train_shape}, got {tokens.shape}")
        out = self._train(
            **self.device,
            **self.opt_state,
            lr=np.float32(lr),
            adam=np.float32(optimizer == "adam"),
            tokens=tokens.astype(np.int32),
            targets=targets.astype(np.int32),
        )
        loss = float(out["loss"])
        if not np.isfinite(loss):
            raise FloatingPointError(f"local training diverged (loss {loss}); state unchanged")
        self.device = {k: out[f"new.{k}"] for k in self.names}
        self.opt_state = {
            **{f"mu.{k}": out[f"new_mu.{k}"] for k in self.names},
            **{f"nu.{k}": out[f"new_nu.{k}"] for k in self.names},
            "count": out["new_count"],
        }
        self.train_steps += 1
        return loss

    # -- persistence ------------------------------------------------------------------------
    def state_bytes(self) -> bytes:
        """Device part + Adam state as one npz (no pickle)."""
        buf = io.BytesIO()
        arrays = {f"device.{k}": v for k, v in self.device.items()}
        arrays.update({f"opt.{k}": v for k, v in self.opt_state.items()})
        meta = json.dumps({"train_steps": self.train_steps}).encode()
        np.savez(buf, __meta__=np.frombuffer(meta, np.uint8), **arrays)
        return buf.getvalue()

    def load_state_bytes(self, payload: bytes, source: str = "device state") -> None:
        """Restore what `state_bytes` made; a mismatch with this model raises, changing nothing."""
        try:
            with np.load(io.BytesIO(payload), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            meta = json.loads(arrays["__meta__"].tobytes())
        except (OSError, ValueError, KeyError) as e:
            raise ModelFileError(f"{source} is unreadable: {e}") from e
        device = {k[7:]: v for k, v in arrays.items() if k.startswith("device.")}
        opt = {k[4:]: v for k, v in arrays.items() if k.startswith("opt.")}
        for k, v in self.device.items():
            if k not in device or device[k].shape != v.shape:
                raise ModelFileError(f"{source}: {k} missing or wrong shape")
        if opt.keys() != self.opt_state.keys():
            raise ModelFileError(f"{source}: optimiser state does not match model")
        self.device = {k: device[k].astype(np.float32) for k in self.names}
        self.opt_state = {k: v.astype(np.float32) for k, v in opt.items()}
        self.train_steps = meta["train_steps"]

    def save_state(self, path: Path) -> None:
        """`state_bytes`, written atomically."""
        atomic_write_bytes(Path(path), self.state_bytes())

    def load_state(self, path: Path) -> None:
        try:
            payload = Path(path).read_bytes()
        except OSError as e:
            raise ModelFileError(f"device state {path} is unreadable: {e}") from e
        self.load_state_bytes(payload, f"device state {path}")
