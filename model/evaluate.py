"""One evaluation harness for every model: neural, n-gram, and their mixture.

A *scorer* maps a list of tokenised messages to, for each message, a [len-1, V] array of
natural-log next-token distributions (row t predicts token t+1). The harness turns those into
top-1/top-3 accuracy, perplexity and keystroke savings with the conventions of
`model.metrics`.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from model import metrics, network
from model.config import ModelConfig
from model.ngram import NgramLM
from model.types import Params
from model.vocab import BOS, PAD, Vocabulary

__all__ = ["Scorer", "lstm_scorer", "ngram_scorer", "mixture_scorer", "evaluate", "Quality"]

Scorer = Callable[[list[np.ndarray]], Iterator[np.ndarray]]


@dataclass(frozen=True)
class Quality:
    top1: float
    top3: float
    perplexity: float
    keystroke_savings: float
    words: int  # next-word targets scored (words, <unk> and <eos>)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def lstm_scorer(config: ModelConfig, params: Params, max_batch_tokens: int = 8192) -> Scorer:
    model = network.SplitLM(config)

    @jax.jit
    def log_probs(tokens_BxT):
        logits = model.apply({"params": params}, tokens_BxT)
        logits = logits.at[..., PAD].set(-jnp.inf).at[..., BOS].set(-jnp.inf)
        return jax.nn.log_softmax(logits, axis=-1)

    def score(messages: list[np.ndarray]) -> Iterator[np.ndarray]:
        # Batch messages of similar length (padded to a multiple of 16 to bound recompiles),
        # then hand results back in the caller's order.
        order = np.argsort([len(m) for m in messages], kind="stable")
        results: dict[int, np.ndarray] = {}
        next_out = 0
        i = 0
        while i < len(order):
            T = -(-(len(messages[order[i]]) - 1) // 16) * 16
            j = i
            while (
                j < len(order)
                and len(messages[order[j]]) - 1 <= T
                and (j - i + 1) * T <= max(max_batch_tokens, T)
            ):
                j += 1
            idx = order[i:j]
            B = max(1, -(-len(idx) // 8) * 8)
            batch = np.full((B, T), PAD, np.int32)
            for r, mi in enumerate(idx):
                batch[r, : len(messages[mi]) - 1] = messages[mi][:-1]
            lp = np.asarray(log_probs(jnp.asarray(batch)))
            for r, mi in enumerate(idx):
                results[int(mi)] = lp[r, : len(messages[mi]) - 1]
            while next_out in results:
                yield results.pop(next_out)
                next_out += 1
            i = j

    return score


def ngram_scorer(lm: NgramLM) -> Scorer:
    def score(messages: list[np.ndarray]) -> Iterator[np.ndarray]:
        for m in messages:
            yield lm.message_log_probs(m)

    return score


def mixture_scorer(a: Scorer, b: Scorer, weight_a: float) -> Scorer:
    """Linear interpolation of two models' probabilities (weight on `a`)."""
    la, lb = np.log(weight_a), np.log1p(-weight_a)

    def score(messages: list[np.ndarray]) -> Iterator[np.ndarray]:
        for pa, pb in zip(a(messages), b(messages), strict=True):
            yield np.logaddexp(la + pa, lb + pb)

    return score


def evaluate(
    scorer: Scorer,
    messages: list[np.ndarray],
    message_words: list[list[str]],
    vocab: Vocabulary,
    score_target: Callable[[int], int] = lambda t: t,
    keystroke_words: int = 20_000,
    progress: bool = False,
    desc: str = "evaluating",
) -> Quality:
    """Quality over `messages` (tokenised) whose raw words are `message_words`.

    Keystroke savings cover roughly the first `keystroke_words` words (it is the slow part).
    """
    if len(message_words) != len(messages):
        raise ValueError(f"{len(messages)} messages but {len(message_words)} word lists")
    index = metrics.PrefixIndex(vocab)
    hits1 = hits3 = count = 0
    nll = 0.0
    saved = needed = ks_words = 0
    rows = zip(messages, message_words, scorer(messages), strict=True)
    for m, ws, lp in tqdm(rows, total=len(messages), desc=desc, disable=not progress, unit="msg"):
        targets = m[1:]
        for t, tgt in enumerate(targets):
            top = metrics.topk_ids(lp[t], 3)
            hits1 += int(len(top) > 0 and top[0] == tgt)
            hits3 += int(tgt in top)
            nll -= float(lp[t, score_target(int(tgt))])
        count += len(targets)
        if ks_words < keystroke_words:
            s, n = metrics.message_keystrokes(ws, [int(i) for i in m[1:-1]], lp, index)
            saved += s
            needed += n
            ks_words += len(ws)
    return Quality(
        top1=hits1 / max(count, 1),
        top3=hits3 / max(count, 1),
        perplexity=metrics.perplexity(nll, count),
        keystroke_savings=saved / max(needed, 1),
        words=count,
    )
