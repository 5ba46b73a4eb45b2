"""The n-gram baseline: a Kneser-Ney 3-gram trained with `kaldingram`, queried densely.

Training uses kaldingram (SRILM-compatible interpolation-free backoff KN) on the same
vocabulary as the neural model: out-of-vocabulary words become `<unk>` before counting
(kaldingram writes no `<unk>` entry of its own, and kenlm would score unknown words at -100).

Querying: kenlm (`ufal.kenlm`) scores one word at a time; top-k suggestions and keystroke
simulation need the whole next-word distribution at every position (10k words x 100k
positions), which kenlm has no call for. So `NgramLM` reads the ARPA file into arrays and
builds the exact backoff distribution with numpy (trigram entries for the context, else
bigram entries times the trigram backoff, else unigrams times both backoffs). A test checks
it against kenlm's own scores.
"""

import contextlib
import io
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from kaldingram.train import NgramCounts

from model.vocab import BOS, EOS, UNK, Vocabulary

__all__ = ["train_arpa", "NgramLM", "ARPA_BOS", "ARPA_EOS"]

ARPA_BOS, ARPA_EOS, ARPA_UNK = "<s>", "</s>", "<unk>"
_LN10 = math.log(10.0)


def _arpa_words(ids: Iterable[int], vocab: Vocabulary) -> str:
    return " ".join(ARPA_UNK if i == UNK else vocab.tokens[i] for i in ids)


def train_arpa(messages: Iterable[np.ndarray], vocab: Vocabulary, order: int = 3) -> str:
    """ARPA text of a KN `order`-gram over tokenised messages (`<bos> .. <eos>` stripped)."""
    counts = NgramCounts(order, bos_symbol=ARPA_BOS, eos_symbol=ARPA_EOS)
    for m in messages:
        counts.add_raw_counts_from_line(_arpa_words(m[1:-1], vocab))
    buf = io.StringIO()
    # kaldingram draws its own progress bars on stderr for each sub-step; keep logs readable.
    with contextlib.redirect_stderr(io.StringIO()):
        counts.cal_discounting_constants()
        counts.cal_f()
        counts.cal_bow()
        counts.print_as_arpa(fout=buf)
    return buf.getvalue()


@dataclass
class NgramLM:
    """Dense next-word distributions from a trigram ARPA model over a fixed vocabulary."""

    vocab: Vocabulary
    uni_lp: np.ndarray  # [V] log10 p(w); -inf for vocabulary words the model never saw
    uni_bow: np.ndarray  # [V] log10 backoff of the unigram history w
    bi: dict[int, tuple[np.ndarray, np.ndarray]]  # w1 -> (ids, log10 p(w | w1))
    bi_bow: dict[tuple[int, int], float]  # (w1, w2) -> log10 backoff
    tri: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]  # (w1, w2) -> (ids, log10 p)

    @staticmethod
    def from_arpa(arpa: str, vocab: Vocabulary) -> "NgramLM":
        V = len(vocab)

        def tok(w: str) -> int:
            if w == ARPA_BOS:
                return BOS
            if w == ARPA_EOS:
                return EOS
            if w == ARPA_UNK:
                return UNK
            i = vocab.id(w)
            if i == UNK:
                raise ValueError(f"ARPA word {w!r} is not in the vocabulary")
            return i

        uni_lp = np.full(V, -np.inf)
        uni_bow = np.zeros(V)
        bi_lists: dict[int, list[tuple[int, float]]] = defaultdict(list)
        bi_bow: dict[tuple[int, int], float] = {}
        tri_lists: dict[tuple[int, int], list[tuple[int, float]]] = defaultdict(list)
        order = 0
        for line in arpa.splitlines():
            line = line.strip()
            if not line or line.startswith("ngram ") or line in ("\\data\\", "\\end\\"):
                continue
            if line.endswith("-grams:"):
                order = int(line[1])
                continue
            parts = line.split("\t")
            lp = float(parts[0])
            ws = [tok(w) for w in parts[1].split(" ")]
            bow = float(parts[2]) if len(parts) > 2 else 0.0
            if order == 1:
                uni_lp[ws[0]] = lp
                uni_bow[ws[0]] = bow
            elif order == 2:
                bi_lists[ws[0]].append((ws[1], lp))
                if len(parts) > 2:
                    bi_bow[(ws[0], ws[1])] = bow
            elif order == 3:
                tri_lists[(ws[0], ws[1])].append((ws[2], lp))
            else:
                raise ValueError("only trigram (or lower) ARPA models are supported")
        uni_lp[BOS] = -np.inf  # <s> is never predicted

        def arrays(lst: list[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray]:
            ids, lps = zip(*lst, strict=True)
            return np.asarray(ids, np.int64), np.asarray(lps, np.float64)

        return NgramLM(
            vocab,
            uni_lp,
            uni_bow,
            {k: arrays(v) for k, v in bi_lists.items()},
            bi_bow,
            {k: arrays(v) for k, v in tri_lists.items()},
        )

    @staticmethod
    def load(path: Path, vocab: Vocabulary) -> "NgramLM":
        return NgramLM.from_arpa(Path(path).read_text(encoding="latin-1"), vocab)

    def seen(self) -> np.ndarray:
        """Vocabulary ids the model can predict (it gives the rest zero probability)."""
        return np.isfinite(self.uni_lp)

    def log10_dist(self, w1: int | None, w2: int) -> np.ndarray:
        """log10 p(. | w1 w2) over the vocabulary; w1 None at the start of a message."""
        if self.uni_lp[w2] == -np.inf and w2 != BOS:
            w2 = UNK  # a vocabulary word the model never saw is unknown to it
        if w1 is not None and self.uni_lp[w1] == -np.inf and w1 != BOS:
            w1 = UNK
        dist = self.uni_lp + self.uni_bow[w2]
        if w2 in self.bi:
            ids, lps = self.bi[w2]
            dist[ids] = lps
        if w1 is None:
            return dist
        dist += self.bi_bow.get((w1, w2), 0.0)
        if (w1, w2) in self.tri:
            ids, lps = self.tri[(w1, w2)]
            dist[ids] = lps
        return dist

    def message_log_probs(self, message: np.ndarray) -> np.ndarray:
        """[len-1, V] natural-log next-word distributions for a `<bos> .. <eos>` message."""
        out = np.empty((len(message) - 1, len(self.vocab)))
        for t in range(1, len(message)):
            w1 = int(message[t - 2]) if t >= 2 else None
            out[t - 1] = self.log10_dist(w1, int(message[t - 1])) * _LN10
        return out

    def target_for_scoring(self, target: int) -> int:
        """The id whose probability scores `target` (unseen words score as `<unk>`, like kenlm)."""
        return target if np.isfinite(self.uni_lp[target]) else UNK
