"""Suggestions for what someone has typed so far: next words, or completions of a partial word.

The suggestion strip shows three words: after a space, the most likely next words; inside a
word, the most likely vocabulary words starting with the letters typed so far. This module
does it with the JAX model; the device does the same with the LiteRT model.
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from model import metrics, network, text
from model.config import ModelConfig
from model.types import Params
from model.vocab import BOS, PAD, Vocabulary

__all__ = ["Suggester", "split_typed"]


def split_typed(typed: str) -> tuple[list[str], str]:
    """(complete words of the current message, partial word being typed).

    A message ends at sentence punctuation, so context never spans two messages.
    """
    tail = typed
    for mark in ".!?\n":
        tail = tail.rsplit(mark, 1)[-1]
    complete = text.words(tail)
    if tail and not tail[-1].isspace() and complete and text.normalise(tail).endswith(complete[-1]):
        return complete[:-1], complete[-1]
    return complete, ""


@dataclass
class Suggester:
    config: ModelConfig
    params: Params
    vocab: Vocabulary
    context_len: int = 16  # words of context fed to the model (the exported model's window)

    def __post_init__(self) -> None:
        model = network.SplitLM(self.config)
        self._index = metrics.PrefixIndex(self.vocab)

        @jax.jit
        def next_log_probs(params, tokens_1xT):
            logits = model.apply({"params": params}, tokens_1xT)[0, -1]
            return jax.nn.log_softmax(logits.at[PAD].set(-jnp.inf).at[BOS].set(-jnp.inf))

        self._next = next_log_probs

    def scores(self, context: list[str]) -> np.ndarray:
        ids = [BOS] + self.vocab.encode_words(context)
        ids = ids[-self.context_len :]
        window = np.full((1, self.context_len), PAD, np.int32)  # left-padded: state resets
        window[0, -len(ids) :] = ids
        return np.asarray(self._next(self.params, jnp.asarray(window)))

    def suggest(self, typed: str, k: int = 3) -> list[str]:
        context, partial = split_typed(typed)
        ids = self._index.suggest(self.scores(context), partial, k)
        return [self.vocab.tokens[i] for i in ids]
