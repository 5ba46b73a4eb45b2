"""Choosing what phones train: device-part variants, their cost, and a memory-budget subset.

- `variants()`: the candidates measured by `bench/device_part` (head; head + LoRA on the LSTM
  kernels; head + a low-rank update of the tied embedding; both).
- `train_memory_bytes`: peak memory of one jitted training step, from XLA's own buffer
  assignment (arguments + temporaries + outputs), so "training the device part needs X% of
  full training's memory" is measured, not estimated.
- `choose_groups`: an FTTE-style subset (MIT FTTE, 2026: devices train the parameters that
  fit their memory budget): the server ranks parameter groups by squared gradient norm on
  public text per byte of training memory and takes them greedily until the budget is spent.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp

from model import batching, network, partition, train
from model.config import GROUPS, DevicePart, ModelConfig, TrainConfig, replace
from model.types import Params, PRNGKey

__all__ = [
    "variants",
    "train_memory_bytes",
    "GroupScore",
    "score_groups",
    "choose_groups",
    "budget_part",
    "finetune",
    "trained_checkpoint",
]


def variants() -> list[DevicePart]:
    """Device-part candidates, smallest first."""
    return [
        DevicePart.head(),
        DevicePart.head_lora(8),
        DevicePart.head_lora(16),
        DevicePart.head_embed(8),
        DevicePart.head_lora_embed(8, 8),
        DevicePart.head_lora_embed(16, 8),
        DevicePart.head_lora_rows(8, 900),
        DevicePart.head_lora_embed(16, 4),
        DevicePart.head_lora(28),
    ]


def train_memory_bytes(
    config: ModelConfig, params: Params, trainable: train.Trainable, batch: batching.Batch
) -> int:
    """Peak bytes of one compiled training step (XLA buffer assignment on this CPU)."""
    opt = train.make_optimizer(TrainConfig(), 100)
    state = train.init_state(params, opt, trainable, config)
    model = network.SplitLM(config)

    def step(state, inputs, targets, rng):
        def loss_fn(tr):
            logits = model.apply(
                {"params": {**state.frozen, **tr}},
                inputs,
                deterministic=False,
                rngs={"dropout": rng},
            )
            total, n = train.loss_and_counts(logits, targets)
            return total / jnp.maximum(n, 1.0)

        grads = jax.grad(loss_fn)(state.trainable)
        updates, opt_state = opt.update(grads, state.opt_state, state.trainable)
        return state.trainable, updates, opt_state

    compiled = (
        jax.jit(step)
        .lower(state, jnp.asarray(batch.inputs), jnp.asarray(batch.targets), jax.random.key(0))
        .compile()
    )
    m = compiled.memory_analysis()
    peak = getattr(m, "peak_memory_in_bytes", 0)
    return int(
        peak
        or (
            m.argument_size_in_bytes
            + m.temp_size_in_bytes
            + m.output_size_in_bytes
            - m.alias_size_in_bytes
        )
    )


@dataclass(frozen=True)
class GroupScore:
    group: str
    params: int
    grad_sq: float  # squared gradient norm on public text (first-order gain of one step)
    memory_bytes: int  # extra training memory the group costs (params, grads, Adam state)


def score_groups(
    config: ModelConfig,
    params: Params,
    batches: Sequence[batching.Batch],
    groups: Sequence[str] | None = None,
) -> list[GroupScore]:
    """Squared gradient norm per group over `batches` (adapters scored at their zero update).

    By default every group `config` can hold: the sparse row update only when it has a size.
    """
    if groups is None:
        groups = tuple(g for g in GROUPS if g != "embed_rows" or config.embed_rows)
    full = replace(config, device_groups=tuple(groups))
    model = network.SplitLM(full)
    names = partition.device_names(full)

    @jax.jit
    def grads(tr, fr, inputs, targets):
        def loss_fn(tr):
            logits = model.apply({"params": {**fr, **tr}}, inputs)
            total, n = train.loss_and_counts(logits, targets)
            return total / jnp.maximum(n, 1.0)

        return jax.grad(loss_fn)(tr)

    trainable = {k: v for k, v in params.items() if k in names}
    frozen = {k: v for k, v in params.items() if k not in names}
    sq = dict.fromkeys(names, 0.0)
    for b in batches:
        g = grads(trainable, frozen, jnp.asarray(b.inputs), jnp.asarray(b.targets))
        for k, v in g.items():
            sq[k] += float(jnp.sum(v**2))
    out = []
    for grp in groups:
        ps = [n for n in GROUPS[grp] if n in params]
        count = int(sum(params[n].size for n in ps))
        # float32 weights + gradient + Adam's two moments = 16 bytes per trained parameter.
        out.append(GroupScore(grp, count, sum(sq[n] for n in ps) / len(batches), 16 * count))
    return out


def choose_groups(scores: Sequence[GroupScore], budget_bytes: int) -> tuple[str, ...]:
    """Greedy by gradient mass per byte, always keeping the head; within `budget_bytes`."""
    chosen = ["head"]
    spent = next(s.memory_bytes for s in scores if s.group == "head")
    for s in sorted(scores, key=lambda s: -s.grad_sq / max(s.memory_bytes, 1)):
        if s.group in chosen or s.params == 0:
            continue
        if spent + s.memory_bytes <= budget_bytes:
            chosen.append(s.group)
            spent += s.memory_bytes
    return tuple(g for g in GROUPS if g in chosen)


def budget_part(
    config: ModelConfig,
    params: Params,
    batches: Sequence[batching.Batch],
    budget_bytes: int,
    key: PRNGKey,
    lora_rank: int = 16,
    embed_rank: int = 8,
) -> DevicePart:
    """The FTTE-style device part for a memory budget, adapters included as candidates."""
    cand = replace(config, lora_rank=lora_rank, embed_rank=embed_rank)
    full = network.attach_device_part(params, replace(cand, device_groups=("head",)), key)
    groups = choose_groups(score_groups(cand, full, batches), budget_bytes)
    return DevicePart(
        f"budget{budget_bytes // 1024}k",
        groups,
        lora_rank=lora_rank if "lora" in groups else 0,
        embed_rank=embed_rank if "embed_update" in groups else 0,
    )


def finetune(
    base_config: ModelConfig,
    base_params: Params,
    part: DevicePart | None,
    train_messages: list,
    valid_messages: list,
    steps: int,
    lr: float,
    key: PRNGKey,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[ModelConfig, Params, dict]:
    """Fine-tune `part` (None: the whole model) from the base for `steps` steps at peak `lr`.

    Returns (config, parameters, validation metrics at the end). Warmup + cosine schedule,
    clip 1, AdamW as in `model.train`; validation is on public users only.
    """
    key_attach, key_fit = jax.random.split(key)
    if part is None:
        cfg, params, trainable = base_config, base_params, "full"
    else:
        cfg = base_config.with_device_part(part)
        params = network.attach_device_part(base_params, cfg, key_attach)
        trainable = "device"
    tc = TrainConfig(max_steps=steps, peak_lr=lr, batch_size=batch_size, eval_every=0, seed=3)
    res = train.fit(
        cfg,
        tc,
        params,
        train_messages,
        valid_messages,
        key_fit,
        trainable,
        desc=part.name if part else "full",
        progress=progress,
        keep_best=False,
    )
    valid = {k.removeprefix("valid_"): v for k, v in res.history[-1].items() if k != "step"}
    valid["seconds"] = res.seconds
    return cfg, res.params, valid


def trained_checkpoint(part: DevicePart) -> Path | None:
    """The best centrally fine-tuned checkpoint of `part` that bench/device_part left, if any:
    the converged run first, else the fixed-budget run."""
    from model import paths, pipeline

    for name in (f"converged_{part.name}", part.name):
        d = paths.RUNS / "device_part" / "ckpt" / name
        if pipeline.has_checkpoint(d):
            return d
    return None
