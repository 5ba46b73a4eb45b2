"""The two centralised training runs: public pretraining (the base) and the upper bound.

- `pretrain`: the whole model on public users only -> the shipped base (assets/base).
- `centralize`: the pretrained model fine-tuned, all parameters, on the federated users'
  text: what a server could reach if it saw everyone's typing; the bound federated learning
  aims at.
"""

import logging
from pathlib import Path
from typing import Literal

import jax

from model import checkpoint, network, partition, train
from model.config import DataConfig, ModelConfig, TrainConfig
from model.corpus import build_corpus

__all__ = [
    "Preset",
    "SUMMARY_KEYS",
    "data_config",
    "model_config",
    "pretrain_config",
    "centralize_config",
    "has_checkpoint",
    "data_report",
    "pretrain",
    "centralize",
]

log = logging.getLogger(__name__)

Preset = Literal["default", "tiny"]
# The fields of a run's metadata worth printing at the end of a command.
SUMMARY_KEYS = (
    "kind",
    "seconds",
    "steps",
    "best_step",
    "params_total",
    "params_base",
    "params_device",
    "valid",
)


def data_config(preset: Preset) -> DataConfig:
    return DataConfig.tiny() if preset == "tiny" else DataConfig.default()


def model_config(preset: Preset) -> ModelConfig:
    return ModelConfig.tiny() if preset == "tiny" else ModelConfig.default()


def pretrain_config(preset: Preset = "default") -> TrainConfig:
    """Public text is small (~117k words): many epochs; early stopping on public validation."""
    if preset == "tiny":
        return TrainConfig.tiny()
    return TrainConfig(epochs=6.0, peak_lr=5e-3, eval_every=100, seed=0)


def centralize_config(preset: Preset = "default") -> TrainConfig:
    if preset == "tiny":
        return TrainConfig.tiny()
    return TrainConfig(epochs=8.0, peak_lr=5e-3, eval_every=500, seed=1)


def has_checkpoint(directory: Path) -> bool:
    return (Path(directory) / "model.json").exists() and (Path(directory) / "params.npz").exists()


def data_report(cfg: DataConfig) -> dict:
    """Users, words and OOV rate (share of words mapped to `<unk>`) of every role."""
    corpus = build_corpus(cfg)
    words, oov = corpus.words(), corpus.oov()
    return {
        role: {"users": len(corpus.users[role]), "words": words[role], "oov_rate": oov[role]}
        for role in corpus.tokens
    }


def _best_valid(res: train.FitResult) -> dict | None:
    """Validation metrics at the step whose parameters were kept."""
    return next((h for h in res.history if h["step"] == res.best_step), None)


def pretrain(
    out_dir: Path,
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    progress: bool = True,
    dtype: str = "float16",
) -> dict:
    corpus = build_corpus(data_cfg, with_shakespeare=False)
    # The base is pretrained without adapters; devices attach them later as a zero update.
    model_cfg = model_cfg.without_adapters()
    key_init, key_fit = jax.random.split(jax.random.key(train_cfg.seed))
    params = network.init_params(model_cfg, key_init)
    res = train.fit(
        model_cfg,
        train_cfg,
        params,
        corpus.tokens["public_train"],
        corpus.tokens["public_valid"],
        key_fit,
        "full",
        "pretrain",
        progress,
    )
    base, device = partition.split(res.params, model_cfg)
    meta = {
        "kind": "pretrained base",
        "trained_on": "public_train",
        "seconds": res.seconds,
        "steps": res.steps,
        "best_step": res.best_step,
        "history": res.history,
        "valid": _best_valid(res),
        "params_total": partition.count(res.params),
        "params_base": partition.count(base),
        "params_device": partition.count(device),
        "train_config": train_cfg.__dict__,
        "data_config": data_cfg.__dict__,
    }
    checkpoint.save(out_dir, model_cfg, res.params, meta, dtype=dtype)
    return meta


def centralize(
    base_dir: Path,
    out_dir: Path,
    data_cfg: DataConfig,
    train_cfg: TrainConfig,
    progress: bool = True,
) -> dict:
    model_cfg, params, _ = checkpoint.load(base_dir)
    corpus = build_corpus(data_cfg, with_shakespeare=False)
    res = train.fit(
        model_cfg,
        train_cfg,
        params,
        corpus.tokens["federated"],
        corpus.tokens["public_valid"],
        jax.random.key(train_cfg.seed),
        "full",
        "centralize",
        progress,
    )
    meta = {
        "kind": "centralised upper bound (full model fine-tuned on federated text)",
        "trained_on": "public_train (pretraining), then public_train + federated",
        "seconds": res.seconds,
        "steps": res.steps,
        "best_step": res.best_step,
        "history": res.history,
        "valid": _best_valid(res),
        "train_config": train_cfg.__dict__,
        "data_config": data_cfg.__dict__,
    }
    checkpoint.save(out_dir, model_cfg, res.params, meta)
    return meta
