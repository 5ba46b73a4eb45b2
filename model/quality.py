"""The quality table: n-gram, pretrained base and centralised model on held-out text.

Library code behind `bench/quality.py`: builds (or reuses) the n-gram baseline, tunes the
LSTM/n-gram mixture weight on public validation users, and evaluates every model on held-out
chitchat users and on Shakespeare with the same harness and metric conventions.
"""

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from model import checkpoint, data, evaluate, ngram, paths, pipeline
from model.config import DataConfig
from model.corpus import Corpus, build_corpus

__all__ = [
    "DATASETS",
    "build_ngram",
    "tune_mixture_weight",
    "quality_report",
    "format_table",
]

log = logging.getLogger(__name__)

# Result name -> corpus role.
DATASETS = {"chitchat_heldout": "heldout", "shakespeare": "shakespeare"}


def build_ngram(corpus: Corpus, path: Path = paths.NGRAM_PATH) -> ngram.NgramLM:
    """The KN 3-gram on exactly the neural model's training text (public + federated users)."""
    path = Path(path)
    if not path.exists():
        log.info("training the KN 3-gram on public + federated text -> %s", path)
        arpa = ngram.train_arpa(
            corpus.tokens["public_train"] + corpus.tokens["federated"], corpus.vocab
        )
        from model.checkpoint import atomic_write_bytes

        atomic_write_bytes(path, arpa.encode("latin-1"))
    return ngram.NgramLM.load(path, corpus.vocab)


def tune_mixture_weight(
    lstm: evaluate.Scorer,
    lm: ngram.NgramLM,
    messages: list[np.ndarray],
    grid: tuple[float, ...] = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8),
) -> float:
    """The LSTM weight with the lowest perplexity on `messages` (public validation users)."""
    best, best_w = np.inf, grid[0]
    cache_lstm = list(lstm(messages))
    cache_ng = list(evaluate.ngram_scorer(lm)(messages))
    for w in grid:
        nll = n = 0.0
        la, lb = np.log(w), np.log1p(-w)
        for m, pa, pb in zip(messages, cache_lstm, cache_ng, strict=True):
            mix = np.logaddexp(la + pa, lb + pb)
            nll -= float(mix[np.arange(len(m) - 1), m[1:]].sum())
            n += len(m) - 1
        log.info("mixture weight %.2f: validation perplexity %.2f", w, np.exp(nll / n))
        if nll < best:
            best, best_w = nll, w
    return best_w


def _lstm(model_dir: Path) -> evaluate.Scorer:
    config, params, _ = checkpoint.load(model_dir)
    return evaluate.lstm_scorer(config, params)


def quality_report(
    data_cfg: DataConfig,
    base_dir: Path = paths.BASE_DIR,
    centralized_dir: Path = paths.CENTRALIZED_DIR,
    ngram_path: Path = paths.NGRAM_PATH,
    keystroke_words: int = 20_000,
    progress: bool = True,
    train_missing: bool = True,
) -> dict:
    """`{dataset: {model: metrics}}` plus a `meta` entry (mixture weight, sizes)."""
    corpus = build_corpus(data_cfg)
    if not pipeline.has_checkpoint(centralized_dir):
        if not train_missing:
            raise FileNotFoundError(f"no centralised model in {centralized_dir}")
        log.info("no centralised model yet: training it (sotto centralize)")
        pipeline.centralize(base_dir, centralized_dir, data_cfg, pipeline.centralize_config())
    lm = build_ngram(corpus, ngram_path)
    central = _lstm(centralized_dir)
    weight = tune_mixture_weight(central, lm, corpus.tokens["public_valid"])
    models: dict[str, tuple[evaluate.Scorer, Callable[[int], int]]] = {
        "ngram": (evaluate.ngram_scorer(lm), lm.target_for_scoring),
        "base": (_lstm(base_dir), lambda t: t),
        "centralized": (central, lambda t: t),
        "centralized_ngram_mix": (
            evaluate.mixture_scorer(central, evaluate.ngram_scorer(lm), weight),
            lambda t: t,
        ),
    }
    out: dict = {}
    for name, role in DATASETS.items():
        msgs = corpus.tokens[role]
        words = data.message_words(corpus.users[role])
        out[name] = {}
        for model_name, (scorer, target) in models.items():
            q = evaluate.evaluate(
                scorer,
                msgs,
                words,
                corpus.vocab,
                target,
                keystroke_words,
                progress,
                desc=f"{name}/{model_name}",
            )
            out[name][model_name] = q.as_dict()
            log.info("%s %s: %s", name, model_name, q)
    out["meta"] = {
        "mixture_lstm_weight": weight,
        "oov_rate": corpus.oov(),
        "keystroke_words": keystroke_words,
        "ngram_trained_on": "public_train + federated",
        "centralized_trained_on": "public_train (pretraining), then public_train + federated",
    }
    return out


def format_table(report: dict) -> str:
    """A Markdown table of every dataset x model."""
    lines = [
        "| dataset | model | top-1 | top-3 | perplexity | keystroke savings | words |",
        "|---|---|---|---|---|---|---|",
    ]
    for ds in DATASETS:
        for model_name, q in report.get(ds, {}).items():
            lines.append(
                f"| {ds} | {model_name} | {100 * q['top1']:.2f}% | {100 * q['top3']:.2f}% | "
                f"{q['perplexity']:.1f} | {100 * q['keystroke_savings']:.2f}% | {q['words']:,} |"
            )
    return "\n".join(lines)
