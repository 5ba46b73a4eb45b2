"""Next-word metrics: top-k accuracy, perplexity and keystroke savings.

Conventions (the same for every model):
- every real target counts, including `<eos>` (end of message) and `<unk>` (an
  out-of-vocabulary word; predicting `<unk>` for it counts as a hit, as in the design notes'
  baseline figures);
- `<pad>` and `<bos>` are never predicted;
- ties between equally likely words go to the more frequent word (lower id);
- keystroke savings simulate typing each message letter by letter: before each letter the
  strip shows the 3 most likely vocabulary words that complete the letters typed so far; the
  word is taken (one tap, which also types the following space) as soon as it appears. A word
  of n letters costs n + 1 keystrokes without help (its letters and a space), p + 1 when
  taken after p letters. Savings = keystrokes saved / keystrokes needed. Out-of-vocabulary
  words are typed in full.
"""

import bisect
from collections.abc import Callable, Sequence

import numpy as np

from model.vocab import SPECIALS, Vocabulary

__all__ = [
    "topk_ids",
    "PrefixIndex",
    "word_keystrokes",
    "keystrokes_with",
    "message_keystrokes",
    "perplexity",
]


def topk_ids(scores: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k highest scores in a 1-d array; ties to the lower id."""
    k = min(k, scores.size)
    if k == 0:
        return np.zeros(0, np.int64)
    thr = np.partition(scores, scores.size - k)[scores.size - k]
    cand = np.flatnonzero(scores >= thr)
    cand = cand[np.isfinite(scores[cand])]
    order = np.lexsort((cand, -scores[cand]))
    return cand[order[:k]]


def perplexity(nll_sum: float, count: int) -> float:
    return float(np.exp(nll_sum / max(count, 1)))


class PrefixIndex:
    """Vocabulary words sorted alphabetically, for 'words starting with these letters'."""

    def __init__(self, vocab: Vocabulary) -> None:
        pairs = sorted((w, i) for i, w in enumerate(vocab.tokens) if w not in SPECIALS)
        self.words = [w for w, _ in pairs]
        self.ids = np.asarray([i for _, i in pairs], np.int64)
        self.all_ids = np.sort(self.ids)

    def ids_with_prefix(self, prefix: str) -> np.ndarray:
        if not prefix:
            return self.all_ids
        lo = bisect.bisect_left(self.words, prefix)
        hi = bisect.bisect_left(self.words, prefix + "\uffff")
        return self.ids[lo:hi]

    def suggest(self, scores: np.ndarray, prefix: str, k: int = 3) -> np.ndarray:
        """Top-k vocabulary ids completing `prefix` under `scores` (log-probs over the vocab)."""
        ids = self.ids_with_prefix(prefix)
        return ids[topk_ids(scores[ids], k)]


def word_keystrokes(
    word: str, word_id: int, scores: np.ndarray, index: PrefixIndex, k: int = 3
) -> tuple[int, int]:
    """(keystrokes saved, keystrokes needed) for typing `word` with suggestions from `scores`."""
    return keystrokes_with(word, word_id, lambda prefix: index.suggest(scores, prefix, k))


def keystrokes_with(
    word: str, word_id: int, suggest: Callable[[str], Sequence[int]]
) -> tuple[int, int]:
    """`word_keystrokes` for any suggester: `suggest(prefix)` -> the ids on the strip."""
    needed = len(word) + 1
    if word_id < len(SPECIALS):  # out of vocabulary: never suggested
        return 0, needed
    for p in range(len(word)):
        if word_id in list(suggest(word[:p])):
            return len(word) - p, needed
    return 0, needed


def message_keystrokes(
    words: Sequence[str], word_ids: Sequence[int], log_probs: np.ndarray, index: PrefixIndex
) -> tuple[int, int]:
    """Savings over a message; `log_probs[i]` is the distribution over word i given words < i."""
    saved = needed = 0
    for i, (w, wid) in enumerate(zip(words, word_ids, strict=True)):
        s, n = word_keystrokes(w, wid, log_probs[i], index)
        saved += s
        needed += n
    return saved, needed
