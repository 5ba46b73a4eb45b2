"""Server-side evaluation of a global version on PUBLIC held-out users only.

The server may look at public text (donated or published) but never at a federated device's
text, so its own quality figures come from the public validation users. It runs the version's
LiteRT file exactly as a phone would (`keyboard.runtime.DeviceModel`).

Per version: top-1 / top-3 and perplexity over every next-word target (`<unk>` and `<eos>`
included, as `bench/quality` counts them), and keystroke savings (`model.metrics`: the word
typed letter by letter with three suggestions before each letter) over the in-vocabulary word
targets among them (the server holds token ids, so an out-of-vocabulary word's letters are
unknown). All from `infer` calls: the `allowed` mask restricts suggestions to words with the
typed prefix, and a one-hot mask reads the target's log-probability. `max_targets` bounds it.
"""

import numpy as np

from coordinator.registry import Registry, VersionInfo
from keyboard.runtime import DeviceModel
from model import metrics, pipeline
from model.corpus import build_corpus
from model.litert_eval import windows
from model.vocab import SPECIALS, Vocabulary

__all__ = ["public_messages", "evaluate", "evaluate_version"]

CONTEXT_LEN = 16  # the exported `infer` signature's window


def public_messages(preset: str) -> tuple[Vocabulary, list[np.ndarray]]:
    """(vocabulary, tokenised messages of the public validation users) for a data preset."""
    corpus = build_corpus(pipeline.data_config(preset), with_shakespeare=False)
    return corpus.vocab, corpus.tokens["public_valid"]


def evaluate(
    model: bytes,
    device_part: dict[str, np.ndarray],
    vocab: Vocabulary,
    messages: list[np.ndarray],
    max_targets: int,
) -> dict:
    """{"top1", "top3", "perplexity", "keystroke_savings", "targets", "keystroke_words"} of
    the LiteRT model over the first `max_targets` next-word targets."""
    if max_targets < 1:
        raise ValueError(f"max_targets must be positive, got {max_targets}")
    ctx, tgt = windows(messages, CONTEXT_LEN, max_targets)
    dm = DeviceModel(model, vocab, device_part, context_len=CONTEXT_LEN)
    words = np.zeros(len(vocab), np.float32)
    words[dm.index.all_ids] = 1.0  # what the strip may show before the first letter
    one_hot = np.zeros(len(vocab), np.float32)
    top1 = top3 = saved = needed = ks_words = 0
    nll = 0.0
    for w, t in zip(ctx, tgt, strict=True):
        window, t = w[None, :], int(t)
        ids, _ = dm.infer_window(window)
        top1 += int(len(ids) > 0 and ids[0] == t)
        top3 += int(t in ids[:3])
        one_hot[t] = 1.0
        nll -= float(dm.infer_window(window, one_hot)[1][0])
        one_hot[t] = 0.0
        if t >= len(SPECIALS):

            def strip(prefix: str, window=window) -> np.ndarray:
                return dm.infer_window(window, dm.allowed(prefix) if prefix else words)[0]

            s, n = metrics.keystrokes_with(vocab.tokens[t], t, strip)
            saved, needed, ks_words = saved + s, needed + n, ks_words + 1
    n = len(tgt)
    # exp overflows for a wrecked model (mean NLL > ~709): JSON cannot hold infinity, so None.
    with np.errstate(over="ignore"):
        ppl = metrics.perplexity(nll, n)
    return {
        "top1": top1 / n,
        "top3": top3 / n,
        "perplexity": ppl if np.isfinite(ppl) else None,
        "keystroke_savings": saved / max(needed, 1),
        "targets": n,
        "keystroke_words": ks_words,
    }


def evaluate_version(
    registry: Registry, version_id: int, preset: str, max_targets: int
) -> VersionInfo:
    """Evaluate a registered version and store the result as its metrics."""
    vocab, messages = public_messages(preset)
    result = evaluate(
        registry.model_bytes(version_id),
        registry.device_part(version_id),
        vocab,
        messages,
        max_targets,
    )
    metrics = {f"public_{k}": v for k, v in result.items()} | {"eval_preset": preset}
    return registry.set_metrics(version_id, metrics)
