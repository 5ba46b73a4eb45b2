"""Deterministic user splits, per-user caps, and tokenised per-user datasets.

Users are split by a hash of their id, never by their text, so the split is stable across
runs and machines and a user's messages never straddle two roles.
"""

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from typing import Literal

import numpy as np

from model import corpora, text
from model.config import DataConfig
from model.vocab import Vocabulary

__all__ = [
    "Split",
    "SPLITS",
    "UserText",
    "bucket",
    "split_of",
    "load_chitchat",
    "load_shakespeare",
    "tokenise",
    "message_words",
    "oov_rate",
]

Split = Literal["public", "federated", "heldout"]
SPLITS: tuple[Split, ...] = ("public", "federated", "heldout")
UserText = dict[str, list[str]]  # user id -> messages (chronological)


def bucket(user: str) -> int:
    """A stable bucket in [0, 100) from sha256 of the user id."""
    return int.from_bytes(hashlib.sha256(user.encode("utf-8")).digest()[:8], "big") % 100


def split_of(user: str, cfg: DataConfig) -> Split:
    b = bucket(user)
    if b < cfg.public_pct:
        return "public"
    if b < 100 - cfg.heldout_pct:
        return "federated"
    return "heldout"


def _keep_user(user: str, cfg: DataConfig) -> bool:
    # A second, independent hash so that a fraction of users is kept from every split.
    h = hashlib.sha256(b"fraction:" + user.encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < cfg.user_fraction


def _group(pairs: Iterable[tuple[str, str]], cap: int, keep=lambda u: True) -> UserText:
    by_user: dict[str, list[str]] = defaultdict(list)
    for user, msg in pairs:
        if keep(user) and len(by_user[user]) < cap:
            by_user[user].append(msg)
    return dict(sorted(by_user.items()))


def load_chitchat(cfg: DataConfig) -> dict[Split, UserText]:
    """Chitchat users in each split, each capped at `max_messages_per_user` messages."""
    users = _group(
        corpora.chitchat_messages(cfg.min_turns),
        cfg.max_messages_per_user,
        keep=lambda u: _keep_user(u, cfg),
    )
    out: dict[Split, UserText] = {s: {} for s in SPLITS}
    for user, msgs in users.items():
        out[split_of(user, cfg)][user] = msgs
    return out


def load_shakespeare(cfg: DataConfig) -> UserText:
    """Shakespeare speeches by (play, speaker), capped per speaker (evaluation only)."""
    return _group(
        corpora.shakespeare_messages(),
        cfg.shakespeare_max_per_speaker,
        keep=lambda u: _keep_user(u, cfg),
    )


def tokenise(users: UserText, vocab: Vocabulary) -> list[np.ndarray]:
    """Every message as int32 ids `<bos> w1 ... wn <eos>`, users in sorted order."""
    return [np.asarray(vocab.encode(m), dtype=np.int32) for u in sorted(users) for m in users[u]]


def message_words(users: UserText) -> list[list[str]]:
    """Every message's raw words, aligned with `tokenise`."""
    return [text.words(m) for u in sorted(users) for m in users[u]]


def oov_rate(messages: list[np.ndarray]) -> float:
    """Share of word tokens (not <bos>/<eos>) that map to <unk>."""
    words = np.concatenate([m[1:-1] for m in messages]) if messages else np.zeros(0)
    return float(np.mean(words == 1)) if words.size else 0.0
