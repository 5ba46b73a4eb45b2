"""Cloud-mode prediction: the classic path where a device sends its typed context.

The server predicts with the current global version's LiteRT model (loaded once per version
and cached). The typed text is used for the prediction and dropped: only its count and byte
length are recorded (`traffic.record_raw_text`), never the text, not in the database and not
in logs.
"""

import threading

from coordinator.registry import Registry
from keyboard.runtime import DeviceModel
from model.vocab import Vocabulary

__all__ = ["CloudPredictor"]


class CloudPredictor:
    def __init__(self, registry: Registry, vocab: Vocabulary) -> None:
        self.registry = registry
        self.vocab = vocab
        self._models: dict[int, DeviceModel] = {}
        # A LiteRT interpreter is not thread-safe and handlers run on a thread pool.
        self._lock = threading.Lock()

    def _model(self, version_id: int) -> DeviceModel:
        model = self._models.get(version_id)
        if model is None:
            model = DeviceModel(
                self.registry.model_bytes(version_id),
                self.vocab,
                self.registry.device_part(version_id),
            )
            # Only the current version is served: drop older ones to bound memory.
            self._models = {version_id: model}
        return model

    def suggest(self, typed: str) -> tuple[int, list[str]]:
        """(version used, three suggestions) for the typed context."""
        current = self.registry.current()
        if current is None:
            raise RuntimeError("no global model registered yet")
        with self._lock:
            return current.id, self._model(current.id).suggest(typed)

    def loaded_versions(self) -> list[int]:
        return sorted(self._models)
