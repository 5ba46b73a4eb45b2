"""The server side of FedAvgM: flattening a device part, and the optimiser step on the average.

A device part is a dict of named float32 arrays; on the wire it is one flat vector, the arrays
concatenated in sorted-name order (`flatten` / `unflatten`, shared with the device). The server
optimiser is optax SGD (with momentum: FedAvgM) or Adam (FedAdam) over that vector, fed the
negated average delta as the "gradient" (Reddi et al. 2021, "Adaptive Federated
Optimization"); its state persists between rounds in an `.npz` next to the database (numbers
only, read without pickle).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from model.checkpoint import atomic_write_bytes

__all__ = ["flatten", "unflatten", "dimension", "make", "apply_update"]


def flatten(part: dict[str, np.ndarray]) -> np.ndarray:
    """The arrays of a device part as one float32 vector, in sorted-name order."""
    return np.concatenate([np.asarray(part[k], np.float32).ravel() for k in sorted(part)])


def dimension(part: dict[str, np.ndarray]) -> int:
    return int(sum(np.asarray(v).size for v in part.values()))


def unflatten(vec: np.ndarray, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of `flatten`, shaped like `like`."""
    if vec.shape != (dimension(like),):
        raise ValueError(f"vector of shape {vec.shape} does not fit a part of {dimension(like)}")
    out, at = {}, 0
    for k in sorted(like):
        n = np.asarray(like[k]).size
        out[k] = np.asarray(vec[at : at + n], np.float32).reshape(np.shape(like[k]))
        at += n
    return out


def make(kind: str, learning_rate: float, momentum: float):
    """The optax optimiser the server runs on the negated average delta: "sgd" is FedAvg
    (momentum 0) or FedAvgM (Hsu et al. 2019), "adam" is FedAdam (Reddi et al. 2021)."""
    import optax

    if kind == "sgd":
        return optax.sgd(learning_rate, momentum=momentum or None)
    if kind == "adam":
        # eps 1e-3 (Reddi et al.'s tau): secure aggregation's stochastic rounding leaves ~1e-6
        # of noise on coordinates no phone moved, which Adam at eps 1e-8 would blow up into
        # full-rate steps in random directions (bench/federated saw that); signal coordinates
        # (~1e-3 per round) still take about half-rate steps.
        return optax.adam(learning_rate, eps=1e-3)
    raise ValueError(f"server optimiser must be 'sgd' or 'adam', got {kind!r}")


def _load_state(path: Path, kind: str, template):
    """The saved optimiser state if it matches `template` (same optimiser and model shape)."""
    import jax
    import jax.numpy as jnp

    if not path.exists():
        return template
    with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as z:
        saved = {k: z[k] for k in z.files}
    leaves, tree = jax.tree.flatten(template)
    if str(saved.get("kind", "")) != kind or len(saved) - 1 != len(leaves):
        return template  # another optimiser, or an old file: start fresh
    new = [saved[f"leaf{i}"] for i in range(len(leaves))]
    if any(a.shape != np.shape(b) for a, b in zip(new, leaves, strict=True)):
        return template  # a new model shape restarts the optimiser
    return jax.tree.unflatten(tree, [jnp.asarray(a) for a in new])


def apply_update(
    global_vec: np.ndarray,
    average_delta: np.ndarray,
    learning_rate: float,
    momentum: float,
    state_path: Path,
    kind: str = "sgd",
) -> np.ndarray:
    """One server optimiser step from `global_vec` along `average_delta`; the optimiser's
    state (momentum trace, or Adam's moments and count) is read from and written back to
    `state_path`."""
    import jax  # deferred: jax is slow to import and only rounds need it
    import jax.numpy as jnp
    import optax

    opt = make(kind, learning_rate, momentum)
    params = jnp.asarray(global_vec, jnp.float32)
    state = _load_state(state_path, kind, opt.init(params))
    grad = -jnp.asarray(average_delta, jnp.float32)  # descend on minus the average delta
    updates, state = opt.update(grad, state, params)
    new = np.asarray(optax.apply_updates(params, updates), np.float32)
    leaves = jax.tree.leaves(state)
    if leaves:
        buf = io.BytesIO()
        arrays = {f"leaf{i}": np.asarray(a) for i, a in enumerate(leaves)}
        np.savez(buf, kind=np.asarray(kind), **arrays)
        atomic_write_bytes(state_path, buf.getvalue())
    return new
