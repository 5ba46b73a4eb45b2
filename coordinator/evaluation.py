"""Server-side evaluation of a global version on PUBLIC held-out users only.

The server may look at public text (donated or published) but never at a federated device's
text, so its own quality figures come from the public validation users. It runs the version's
LiteRT file exactly as a phone would (`keyboard.runtime.DeviceModel`).
"""

import numpy as np

from coordinator.registry import Registry, VersionInfo
from keyboard.runtime import DeviceModel
from model import litert_eval, pipeline
from model.corpus import build_corpus
from model.vocab import Vocabulary

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
    """{"top1", "top3", "targets"} of the LiteRT model over the first `max_targets` targets."""
    if max_targets < 1:
        raise ValueError(f"max_targets must be positive, got {max_targets}")
    ctx, tgt = litert_eval.windows(messages, CONTEXT_LEN, max_targets)
    dm = DeviceModel(model, vocab, device_part, context_len=CONTEXT_LEN)
    return litert_eval.runtime_accuracy(dm, ctx, tgt)


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
