"""The two centralised training runs: public pretraining (the base) and the upper bound.

- `pretrain`: the whole model on public users only -> the shipped base (assets/base).
- `centralize`: the pretrained model fine-tuned, all parameters, on the federated users'
  text: what a server could reach if it saw everyone's typing; the bound federated learning
  aims at.
"""

import logging
from pathlib import Path

import jax

from model import checkpoint, network, partition, train
from model.config import DataConfig, ModelConfig, TrainConfig
from model.corpus import build_corpus

__all__ = ["pretrain", "centralize", "pretrain_config", "centralize_config"]

log = logging.getLogger(__name__)


def pretrain_config() -> TrainConfig:
    """Public text is small (~120k words): more epochs, stronger decay of the rate."""
    return TrainConfig(epochs=20.0, peak_lr=5e-3, eval_every=400, seed=0)


def centralize_config() -> TrainConfig:
    return TrainConfig(epochs=8.0, peak_lr=3e-3, eval_every=1000, seed=1)


def pretrain(
    out_dir: Path,
    data_cfg: DataConfig,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    progress: bool = True,
    dtype: str = "float16",
) -> dict:
    corpus = build_corpus(data_cfg, with_shakespeare=False)
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
    base, device = partition.split(res.params)
    meta = {
        "kind": "pretrained base",
        "trained_on": "public_train",
        "seconds": res.seconds,
        "steps": res.steps,
        "best_step": res.best_step,
        "history": res.history,
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
        "trained_on": "public_train (pretraining) + federated",
        "seconds": res.seconds,
        "steps": res.steps,
        "best_step": res.best_step,
        "history": res.history,
        "train_config": train_cfg.__dict__,
        "data_config": data_cfg.__dict__,
    }
    checkpoint.save(out_dir, model_cfg, res.params, meta)
    return meta
