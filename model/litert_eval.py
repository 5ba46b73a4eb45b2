"""Measuring an exported LiteRT model against JAX: parity, int8 accuracy, speed, memory.

Library code behind `bench/litert` and the slow LiteRT tests. Everything runs the real
LiteRT runtime through `keyboard.runtime.DeviceModel`, exactly as a phone would.
"""

import time
from collections.abc import Sequence

import jax
import numpy as np

from keyboard.runtime import DeviceModel
from model import batching, export, partition
from model.config import ModelConfig
from model.types import Params
from model.vocab import PAD

__all__ = [
    "windows",
    "runtime_accuracy",
    "infer_parity",
    "train_batches",
    "train_chain_parity",
    "time_calls",
]


def windows(
    messages: Sequence[np.ndarray], context_len: int, max_targets: int
) -> tuple[np.ndarray, np.ndarray]:
    """(windows_NxT, targets_N): every next-word target of `messages` with the `context_len`
    tokens before it, left-padded with <pad> (the `infer` signature's input)."""
    ctx, tgt = [], []
    for m in messages:
        for i in range(1, len(m)):
            w = np.full(context_len, PAD, np.int32)
            prev = m[max(0, i - context_len) : i]
            w[context_len - len(prev) :] = prev
            ctx.append(w)
            tgt.append(int(m[i]))
            if len(tgt) >= max_targets:
                return np.stack(ctx), np.asarray(tgt)
    return np.stack(ctx), np.asarray(tgt)


def runtime_accuracy(model: DeviceModel, windows_NxT: np.ndarray, targets_N: np.ndarray) -> dict:
    """Top-1 / top-3 of the model's `infer` over the given windows (every target counts)."""
    top1 = top3 = 0
    for w, t in zip(windows_NxT, targets_N, strict=True):
        ids, _ = model.infer_window(w[None, :])
        top1 += int(len(ids) > 0 and ids[0] == t)
        top3 += int(t in ids[:3])
    n = len(targets_N)
    return {"top1": top1 / n, "top3": top3 / n, "targets": n}


def infer_parity(
    model: DeviceModel, config: ModelConfig, params: Params, windows_NxT: np.ndarray
) -> dict:
    """LiteRT `infer` vs the same function jitted in JAX: max |score diff|, top-3 agreement."""
    base, device = partition.split(params, config)
    names = sorted(device)
    spec = export.ExportSpec(context_len=windows_NxT.shape[1])
    f = jax.jit(export.infer_fn(config, base, spec))
    allowed = model.allowed("")
    diff, agree = 0.0, 0
    for w in windows_NxT:
        ids_j, sc_j = f(*[device[k] for k in names], w[None, :], allowed)
        ids_l, sc_l = model.infer_window(w[None, :])
        diff = max(diff, float(np.max(np.abs(np.asarray(sc_j)[0] - sc_l))))
        agree += int(list(np.asarray(ids_j)[0]) == list(ids_l))
    return {"max_abs_diff": diff, "top3_agreement": agree / len(windows_NxT)}


def train_batches(
    messages: Sequence[np.ndarray], batch: int, length: int, count: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` real [batch, length] (tokens, targets) batches for the `train` signature."""
    packed = batching.pack(list(messages), length)
    out = [(b.inputs, b.targets) for b in batching.batches(packed, batch)]
    if len(out) < count:
        raise ValueError(f"only {len(out)} batches of text, {count} needed")
    return out[:count]


def train_chain_parity(
    model: DeviceModel,
    config: ModelConfig,
    params: Params,
    batches: Sequence[tuple[np.ndarray, np.ndarray]],
    lr: float,
    optimizer: str = "adam",
) -> dict:
    """Chain `len(batches)` LiteRT `train` steps ("adam" or "sgd") and the same JAX steps from
    the same start; the largest parameter difference at the end, both final losses, and how
    the two whole updates compare (cosine, LiteRT norm / JAX norm)."""
    base, device = partition.split(params, config)
    names = sorted(device)
    B, T = batches[0][0].shape
    step = jax.jit(export.train_fn(config, base, export.ExportSpec(train_batch=B, train_len=T)))
    st = export.adam_init(device)
    dev = [np.asarray(device[k], np.float32) for k in names]
    mu = [st[f"mu.{k}"] for k in names]
    nu = [st[f"nu.{k}"] for k in names]
    count = st["count"]
    n = len(names)
    loss_l = loss_j = float("nan")
    for tokens, targets in batches:
        loss_l = model.train_step(tokens, targets, lr, optimizer)
        adam = np.float32(optimizer == "adam")
        out = step(*dev, *mu, *nu, count, np.float32(lr), adam, tokens, targets)
        dev, mu, nu = list(out[:n]), list(out[n : 2 * n]), list(out[2 * n : 3 * n])
        count, loss_j = out[3 * n], float(out[-1])
    diffs = [np.abs(model.device[k] - np.asarray(d)).max() for k, d in zip(names, dev, strict=True)]
    diff = float(max(diffs))
    start = [np.asarray(device[k], np.float32) for k in names]
    lite = np.concatenate(
        [(model.device[k] - s).ravel() for k, s in zip(names, start, strict=True)]
    )
    exact = np.concatenate([(np.asarray(d) - s).ravel() for d, s in zip(dev, start, strict=True)])
    norm_l, norm_j = float(np.linalg.norm(lite)), float(np.linalg.norm(exact))
    return {
        "max_param_diff": diff,
        "loss_litert": loss_l,
        "loss_jax": loss_j,
        "update_cosine": float(lite @ exact) / max(norm_l * norm_j, 1e-30),
        "update_norm_ratio": norm_l / max(norm_j, 1e-30),
    }


def time_calls(fn, args: Sequence, repeats: int) -> np.ndarray:
    """Milliseconds of `fn(*args[i % len(args)])` over `repeats` calls (after 10 warm-ups)."""
    for i in range(10):
        fn(*args[i % len(args)])
    out = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        fn(*args[i % len(args)])
        out[i] = (time.perf_counter() - t0) * 1e3
    return out
