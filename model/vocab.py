"""Vocabulary from public data only (wordfreq's English list) and the word tokeniser.

Building the vocabulary from users' text would leak it (a rare word in the vocabulary tells
the server someone typed it), so it comes from `wordfreq`'s public frequency list. Ids are
ordered by frequency, which is also how ties between equally likely words are broken.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import wordfreq

from model import text

__all__ = ["PAD", "UNK", "BOS", "EOS", "SPECIALS", "Vocabulary", "build_vocabulary"]

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")


@dataclass(frozen=True)
class Vocabulary:
    """An id <-> word mapping; ids 0-3 are `SPECIALS`, then words by descending frequency."""

    tokens: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.tokens[: len(SPECIALS)] != SPECIALS:
            raise ValueError(f"vocabulary must start with {SPECIALS}")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("vocabulary has duplicate tokens")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    def __len__(self) -> int:
        return len(self.tokens)

    def id(self, word: str) -> int:
        return self._index.get(word, UNK)  # type: ignore[attr-defined]

    def __contains__(self, word: str) -> bool:
        return word in self._index  # type: ignore[attr-defined]

    def encode_words(self, ws: Iterable[str]) -> list[int]:
        return [self.id(w) for w in ws]

    def encode(self, message: str, *, bos: bool = True, eos: bool = True) -> list[int]:
        """Ids of a message: `<bos> w1 ... wn <eos>`, out-of-vocabulary words as `<unk>`."""
        ids = self.encode_words(text.words(message))
        return ([BOS] if bos else []) + ids + ([EOS] if eos else [])

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.tokens[i] for i in ids if i not in (PAD, BOS, EOS))

    def word_array(self) -> np.ndarray:
        """Tokens as a numpy array of str (for vectorised prefix lookups)."""
        return np.array(self.tokens, dtype=object)


def build_vocabulary(size: int = 10_000, lang: str = "en") -> Vocabulary:
    """The `size` most frequent public words that the tokeniser can produce, plus specials."""
    words: list[str] = []
    seen: set[str] = set()
    # Over-fetch: some wordfreq entries are not single keyboard words ("a.m.", "i'm" variants).
    for w in wordfreq.top_n_list(lang, size * 2, wordlist="best"):
        toks = text.words(w)
        if len(toks) != 1 or toks[0] in seen:
            continue
        seen.add(toks[0])
        words.append(toks[0])
        if len(words) == size:
            break
    if len(words) < size:
        raise ValueError(f"wordfreq gave only {len(words)} usable words for {lang!r}")
    return Vocabulary(SPECIALS + tuple(words))
