"""What the user typed, kept sealed on the device, and which of it is ready to learn from.

Every `holdout_every`-th message is held back from local training: the device evaluates the
global model on it (federated evaluation; only hit counts leave, inside the masked sum).
`eligible` says whether enough new training text has arrived since the last contribution.
"""

import time
from pathlib import Path

from keyboard.store import SealedDocument
from model import text

__all__ = ["TypingHistory"]


class TypingHistory:
    """Messages typed on this device, sealed at rest (`keyboard.store`)."""

    def __init__(self, path: Path, key: bytes, holdout_every: int = 5) -> None:
        self._doc = SealedDocument(path, key, default={"messages": [], "trained_upto": 0})
        self._state = self._doc.load()
        self.holdout_every = holdout_every

    def add(self, message: str, at: float | None = None) -> bool:
        """Keep a finished message (ignored if it has no words); True if kept."""
        if not text.words(message):
            return False
        self._state["messages"].append({"text": message, "at": time.time() if at is None else at})
        self._doc.save(self._state)
        return True

    def _split(self, start: int = 0) -> tuple[list[str], list[str]]:
        train, held = [], []
        for i, m in enumerate(self._state["messages"]):
            if i < start:
                continue
            (held if (i + 1) % self.holdout_every == 0 else train).append(m["text"])
        return train, held

    def messages(self) -> list[str]:
        return [m["text"] for m in self._state["messages"]]

    def training_text(self, new_only: bool = False) -> list[str]:
        """Messages the device may train on (all, or only those not yet trained on)."""
        return self._split(self._state["trained_upto"] if new_only else 0)[0]

    def held_back(self) -> list[str]:
        """Messages never trained on locally: for federated evaluation."""
        return self._split()[1]

    def words_since_training(self) -> int:
        return sum(len(text.words(m)) for m in self.training_text(new_only=True))

    def eligible(self, min_new_words: int) -> bool:
        return self.words_since_training() >= min_new_words

    def mark_trained(self) -> None:
        self._state["trained_upto"] = len(self._state["messages"])
        self._doc.save(self._state)

    def wipe(self) -> None:
        self._state = {"messages": [], "trained_upto": 0}
        self._doc.wipe()
