"""Normalise text the way a phone keyboard sees it, and split it into words.

A keyboard predicts lower-case words; punctuation and emoji are typed separately and are not
predicted. So every corpus goes through the same two functions before anything else.
"""

import re
import unicodedata

__all__ = ["WORD_RE", "normalise", "words"]

# Words are runs of lower-case letters, digits and apostrophes (wordfreq's English list uses
# the same alphabet, so "don't" and "it's" stay single words).
WORD_RE = re.compile(r"[a-z0-9']+")

_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'"})


def normalise(text: str) -> str:
    """Lower-case, fold accents and curly apostrophes, collapse whitespace."""
    text = unicodedata.normalize("NFKD", text.translate(_QUOTES))
    text = "".join(c for c in text if not unicodedata.combining(c))
    return " ".join(text.lower().split())


def words(text: str) -> list[str]:
    """The words a keyboard would predict in `text`, in order (apostrophes trimmed at edges)."""
    out = []
    for w in WORD_RE.findall(normalise(text)):
        w = w.strip("'")
        if w:
            out.append(w)
    return out
