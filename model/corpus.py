"""The tokenised text each role sees, built once from the typed configs.

- `public_train` / `public_valid`: public users (the server may train and tune on these);
- `federated`: the simulated phones' text (the centralised upper bound trains on it);
- `heldout`: never trained on; all reported quality figures come from here;
- `shakespeare`: out-of-domain evaluation.
"""

import hashlib
from dataclasses import dataclass
from functools import cache

import numpy as np

from model import data
from model.config import DataConfig
from model.vocab import Vocabulary, build_vocabulary

__all__ = ["Corpus", "build_corpus", "VALID_SHARE"]

# Share of public users set aside for validation (early stopping, mixture weights).
VALID_SHARE = 0.1


@dataclass(frozen=True)
class Corpus:
    vocab: Vocabulary
    users: dict[str, data.UserText]  # role -> user -> raw messages
    tokens: dict[str, list[np.ndarray]]  # role -> tokenised messages

    def oov(self) -> dict[str, float]:
        return {role: data.oov_rate(t) for role, t in self.tokens.items()}

    def words(self) -> dict[str, int]:
        return {role: int(sum(len(m) - 2 for m in t)) for role, t in self.tokens.items()}


def _is_valid_user(user: str) -> bool:
    h = hashlib.sha256(b"valid:" + user.encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < VALID_SHARE


@cache
def build_corpus(cfg: DataConfig, with_shakespeare: bool = True) -> Corpus:
    vocab = build_vocabulary(cfg.vocab_size)
    chit = data.load_chitchat(cfg)
    users: dict[str, data.UserText] = {
        "public_train": {u: m for u, m in chit["public"].items() if not _is_valid_user(u)},
        "public_valid": {u: m for u, m in chit["public"].items() if _is_valid_user(u)},
        "federated": chit["federated"],
        "heldout": chit["heldout"],
    }
    if with_shakespeare:
        users["shakespeare"] = data.load_shakespeare(cfg)
    tokens = {role: data.tokenise(u, vocab) for role, u in users.items()}
    return Corpus(vocab, users, tokens)
