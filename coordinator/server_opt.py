"""The server side of FedAvgM: flattening a device part, and the optimiser step on the average.

A device part is a dict of named float32 arrays; on the wire it is one flat vector, the arrays
concatenated in sorted-name order (`flatten` / `unflatten`, shared with the device). The server
optimiser is optax SGD with momentum over that vector, fed the negated average delta as the
"gradient" (Reddi et al. 2021, "Adaptive Federated Optimization"); its momentum trace persists
between rounds in an `.npz` next to the database (numbers only, read without pickle).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from model.checkpoint import atomic_write_bytes

__all__ = ["flatten", "unflatten", "dimension", "apply_update"]


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


def _load_trace(path: Path, dim: int) -> np.ndarray | None:
    if not path.exists():
        return None
    with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as z:
        trace = z["trace"]
    return trace if trace.shape == (dim,) else None  # a new model shape restarts momentum


def apply_update(
    global_vec: np.ndarray,
    average_delta: np.ndarray,
    learning_rate: float,
    momentum: float,
    state_path: Path,
) -> np.ndarray:
    """One optax SGD(+momentum) step from `global_vec` along `average_delta`; the momentum
    trace is read from and written back to `state_path`."""
    import jax.numpy as jnp  # deferred: jax is slow to import and only rounds need it
    import optax

    opt = optax.sgd(learning_rate, momentum=momentum or None)
    params = jnp.asarray(global_vec, jnp.float32)
    state = opt.init(params)
    trace = _load_trace(state_path, global_vec.size) if momentum else None
    if trace is not None:
        state = tuple(
            s._replace(trace=jnp.asarray(trace)) if isinstance(s, optax.TraceState) else s
            for s in state
        )
    grad = -jnp.asarray(average_delta, jnp.float32)  # descend on minus the average delta
    updates, state = opt.update(grad, state, params)
    new = np.asarray(optax.apply_updates(params, updates), np.float32)
    if momentum:
        traces = [s.trace for s in state if isinstance(s, optax.TraceState)]
        buf = io.BytesIO()
        np.savez(buf, trace=np.asarray(traces[0], np.float32))
        atomic_write_bytes(state_path, buf.getvalue())
    return new
