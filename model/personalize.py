"""Personalisation: adapt the device part on a user's earlier messages, test on their later ones.

This runs exactly what a phone runs: the exported LiteRT model (`infer` + `train`) through
`keyboard.runtime.DeviceModel`, starting from the global device part. For each held-out user
with enough messages, the first `adapt_share` of their messages (chronological) train the
device part for `epochs` passes; top-1 accuracy and keystroke savings on the remaining
messages are measured before (global model alone) and after (personalised).
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from keyboard.runtime import DeviceModel
from model import metrics, text
from model.vocab import EOS, Vocabulary

__all__ = [
    "PersonalizeConfig",
    "UserResult",
    "evaluate_user",
    "personalize_user",
    "summarize",
    "run_all",
]


@dataclass(frozen=True)
class PersonalizeConfig:
    min_messages: int = 60  # users with fewer messages are skipped
    adapt_share: float = 0.7  # chronological share of a user's messages used to adapt
    epochs: int = 1  # passes over the adaptation messages (3 at 3e-3 overfit: -0.5 points)
    lr: float = 1e-3  # constant Adam rate on the device (few, noisy batches; bench-tuned)
    keystroke_words: int = 400  # later-message words per user scored for keystroke savings


@dataclass(frozen=True)
class UserResult:
    user: str
    adapt_messages: int
    test_words: int  # next-word targets scored (words and <eos>)
    steps: int
    top1_global: float
    top1_personal: float
    ks_global: float
    ks_personal: float


def evaluate_user(model: DeviceModel, messages: Sequence[str], keystroke_words: int) -> dict:
    """top-1 over every target (words + <eos>) and keystroke savings, from `infer` alone."""
    vocab: Vocabulary = model.vocab
    hits = count = saved = needed = ks_words = 0
    for msg in messages:
        words = text.words(msg)
        ids = vocab.encode_words(words) + [EOS]
        for i, target in enumerate(ids):
            top, _ = model.top_k(words[:i])
            hits += int(len(top) > 0 and top[0] == target)
            count += 1
            if i < len(words) and ks_words < keystroke_words:
                s, n = metrics.keystrokes_with(
                    words[i], target, lambda prefix, ctx=words[:i]: model.top_k(ctx, prefix)[0]
                )
                saved, needed, ks_words = saved + s, needed + n, ks_words + 1
    return {"top1": hits / max(count, 1), "ks": saved / max(needed, 1), "words": count}


def personalize_user(
    model_bytes: bytes,
    vocab: Vocabulary,
    global_device: dict[str, np.ndarray],
    user: str,
    messages: Sequence[str],
    cfg: PersonalizeConfig,
    rng: np.random.Generator,
) -> UserResult:
    cut = int(round(cfg.adapt_share * len(messages)))
    adapt, test = list(messages[:cut]), list(messages[cut:])
    model = DeviceModel(model_bytes, vocab, global_device)
    before = evaluate_user(model, test, cfg.keystroke_words)
    steps = 0
    for _ in range(cfg.epochs):
        order = rng.permutation(len(adapt))
        for tokens, targets in model.batches([adapt[i] for i in order]):
            model.train_step(tokens, targets, cfg.lr)
            steps += 1
    after = evaluate_user(model, test, cfg.keystroke_words)
    return UserResult(
        user,
        len(adapt),
        before["words"],
        steps,
        before["top1"],
        after["top1"],
        before["ks"],
        after["ks"],
    )


def summarize(results: Sequence[UserResult]) -> dict:
    """Mean per-user gains with their spread (std, quartiles) and the share of users helped."""
    d1 = np.array([r.top1_personal - r.top1_global for r in results])
    dk = np.array([r.ks_personal - r.ks_global for r in results])
    w = np.array([r.test_words for r in results], float)

    def stats(x: np.ndarray) -> dict:
        return {
            "mean": float(x.mean()),
            "std": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
            "sem": float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0,
            "p25": float(np.percentile(x, 25)),
            "median": float(np.median(x)),
            "p75": float(np.percentile(x, 75)),
            "share_improved": float(np.mean(x > 0)),
        }

    return {
        "users": len(results),
        "top1_gain": stats(d1),
        "keystroke_savings_gain": stats(dk),
        "top1_global_pooled": float(np.sum(w * [r.top1_global for r in results]) / w.sum()),
        "top1_personal_pooled": float(np.sum(w * [r.top1_personal for r in results]) / w.sum()),
    }


def run_all(
    model_bytes: bytes,
    vocab: Vocabulary,
    global_device: dict[str, np.ndarray],
    users: dict[str, list[str]],
    cfg: PersonalizeConfig,
    seed: int = 0,
    progress: bool = True,
) -> list[UserResult]:
    rng = np.random.default_rng(seed)
    eligible = [u for u in sorted(users) if len(users[u]) >= cfg.min_messages]
    return [
        personalize_user(model_bytes, vocab, global_device, u, users[u], cfg, rng)
        for u in tqdm(eligible, desc="personalising", unit="user", disable=not progress)
    ]
