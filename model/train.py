"""Pure training and evaluation steps, and the centralised training loop.

`train_step(state, batch, rng) -> (state, metrics)` is pure (flax examples' style); which
parameters it trains is fixed when it is built: the whole model (pretraining, the centralised
upper bound) or only the device part (what phones do), with the base closed over as frozen.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from model import batching, network, partition
from model.config import ModelConfig, TrainConfig
from model.types import Array, Metrics, Params, PRNGKey
from model.vocab import BOS, PAD

__all__ = [
    "TrainState",
    "Trainable",
    "make_optimizer",
    "init_state",
    "make_train_step",
    "make_eval_step",
    "loss_and_counts",
    "evaluate",
    "fit",
    "FitResult",
]

Trainable = Literal["full", "device"]


class TrainState(NamedTuple):
    step: Array
    trainable: Params  # parameters being trained
    frozen: Params  # parameters held fixed (the base when training the device part)
    opt_state: optax.OptState

    def params(self) -> Params:
        return {**self.frozen, **self.trainable}


def make_optimizer(cfg: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """AdamW with linear warmup and cosine decay, after global-norm clipping."""
    warmup = max(1, int(cfg.warmup_frac * total_steps))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.peak_lr, warmup, max(total_steps, warmup + 1), end_value=cfg.peak_lr * 0.01
    )
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(schedule, weight_decay=cfg.weight_decay),
    )


def init_state(
    params: Params,
    optimizer: optax.GradientTransformation,
    trainable: Trainable,
    config: ModelConfig,
) -> TrainState:
    if trainable == "full":
        train, frozen = dict(params), {}
    else:
        frozen, train = partition.split(params, config)
    return TrainState(jnp.zeros((), jnp.int32), train, frozen, optimizer.init(train))


def loss_and_counts(
    logits_BxTxV: Array, targets_BxT: Array, onehot_labels: bool = False
) -> tuple[Array, Array]:
    """(summed cross-entropy over real targets, number of real targets)."""
    mask = (targets_BxT != PAD).astype(jnp.float32)
    if onehot_labels:  # the form LiteRT can run (integer-label CE fails there)
        ce = optax.softmax_cross_entropy(
            logits_BxTxV, jax.nn.one_hot(targets_BxT, logits_BxTxV.shape[-1])
        )
    else:
        ce = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)
    return jnp.sum(ce * mask), jnp.sum(mask)


def make_train_step(
    config: ModelConfig, optimizer: optax.GradientTransformation
) -> Callable[[TrainState, batching.Batch, PRNGKey], tuple[TrainState, Metrics]]:
    model = network.SplitLM(config)

    def loss_fn(trainable: Params, frozen: Params, inputs, targets, rng):
        logits = model.apply(
            {"params": {**frozen, **trainable}}, inputs, deterministic=False, rngs={"dropout": rng}
        )
        total, n = loss_and_counts(logits, targets)
        # Token average within the batch; packed rows keep batches near-equal in tokens.
        return total / jnp.maximum(n, 1.0), n

    @jax.jit
    def step(state: TrainState, inputs: Array, targets: Array, rng: PRNGKey):
        (loss, n), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.trainable, state.frozen, inputs, targets, rng
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        new = TrainState(state.step + 1, trainable, state.frozen, opt_state)
        return new, {"loss": loss, "tokens": n, "grad_norm": optax.tree.norm(grads)}

    def train_step(state: TrainState, batch: batching.Batch, rng: PRNGKey):
        return step(state, jnp.asarray(batch.inputs), jnp.asarray(batch.targets), rng)

    return train_step


def make_eval_step(config: ModelConfig) -> Callable[[Params, batching.Batch], Metrics]:
    """Sums over real targets: loss, count, hits@1, hits@3 (`<pad>`/`<bos>` never predicted)."""
    model = network.SplitLM(config)

    @jax.jit
    def step(params: Params, inputs: Array, targets: Array):
        logits = model.apply({"params": params}, inputs)
        total, n = loss_and_counts(logits, targets)
        _, top3 = jax.lax.top_k(_mask_unpredictable(logits), 3)
        mask = targets != PAD
        hit = (top3 == targets[..., None]) & mask[..., None]
        return {
            "loss_sum": total,
            "count": n,
            "hits1": jnp.sum(hit[..., 0]),
            "hits3": jnp.sum(hit),
        }

    def eval_step(params: Params, batch: batching.Batch) -> Metrics:
        return step(params, jnp.asarray(batch.inputs), jnp.asarray(batch.targets))

    return eval_step


def _mask_unpredictable(logits: Array) -> Array:
    return logits.at[..., PAD].set(-jnp.inf).at[..., BOS].set(-jnp.inf)


def evaluate(
    config: ModelConfig,
    params: Params,
    messages: list[np.ndarray],
    seq_len: int = 64,
    batch_size: int = 64,
) -> dict[str, float]:
    """Token-level top-1/top-3 accuracy and perplexity over every real target."""
    eval_step = make_eval_step(config)
    sums = {"loss_sum": 0.0, "count": 0.0, "hits1": 0.0, "hits3": 0.0}
    for b in batching.batches(batching.pack(messages, seq_len), batch_size):
        for k, v in eval_step(params, b).items():
            sums[k] += float(v)
    n = max(sums["count"], 1.0)
    return {
        "top1": sums["hits1"] / n,
        "top3": sums["hits3"] / n,
        "perplexity": float(np.exp(sums["loss_sum"] / n)),
        "words": int(sums["count"]),
    }


@dataclass(frozen=True)
class FitResult:
    params: Params
    history: list[dict]  # per evaluation: step, train loss, validation metrics
    seconds: float
    steps: int
    best_step: int  # the step whose parameters were returned


def fit(
    model_config: ModelConfig,
    train_config: TrainConfig,
    params: Params,
    train_messages: list[np.ndarray],
    valid_messages: list[np.ndarray] | None,
    key: PRNGKey,
    trainable: Trainable = "full",
    desc: str = "training",
    progress: bool = True,
    keep_best: bool = True,
) -> FitResult:
    """Train for `epochs` passes over `train_messages`.

    Returns the parameters with the lowest validation perplexity seen (early stopping on
    public validation users) when `keep_best` and validation text are given, else the last.
    """
    packed = batching.pack(train_messages, train_config.seq_len)
    steps_per_epoch = max(1, -(-len(packed.inputs) // train_config.batch_size))
    total = train_config.max_steps or max(1, int(round(train_config.epochs * steps_per_epoch)))
    optimizer = make_optimizer(train_config, total)
    state = init_state(params, optimizer, trainable, model_config)
    train_step = make_train_step(model_config, optimizer)
    np_rng = np.random.default_rng(train_config.seed)
    history: list[dict] = []
    start = time.perf_counter()
    losses: list[float] = []
    bar = tqdm(total=total, desc=desc, unit="step", disable=not progress, dynamic_ncols=True)
    step = 0
    best: tuple[float, int, Params] | None = None
    while step < total:
        for batch in batching.batches(packed, train_config.batch_size, np_rng):
            if step >= total:
                break
            key, sub = jax.random.split(key)
            state, m = train_step(state, batch, sub)
            step += 1
            losses.append(float(m["loss"]) if step % 20 == 0 or step == total else np.nan)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.update(1)
            evaluate_now = train_config.eval_every and step % train_config.eval_every == 0
            if valid_messages and (evaluate_now or step == total):
                metrics = evaluate(model_config, state.params(), valid_messages)
                if best is None or metrics["perplexity"] < best[0]:
                    best = (metrics["perplexity"], step, jax.device_get(state.params()))
                recent = [x for x in losses[-200:] if not np.isnan(x)]
                history.append(
                    {
                        "step": step,
                        "train_loss": float(np.mean(recent)) if recent else None,
                        **{f"valid_{k}": v for k, v in metrics.items()},
                    }
                )
                bar.write(
                    f"{desc} step {step}/{total}: valid top1 {metrics['top1']:.4f} "
                    f"ppl {metrics['perplexity']:.1f}"
                )
    bar.close()
    if best is not None and keep_best:
        params, best_step = best[2], best[1]
    else:
        params, best_step = state.params(), total
    return FitResult(params, history, time.perf_counter() - start, total, best_step)
