"""Save and load parameter trees with their model config (npz + JSON; no pickle).

Writes are atomic (temporary file then rename) so a crash never leaves half a checkpoint.
"""

import dataclasses
import io
import json
import os
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from model import network
from model.config import ModelConfig
from model.types import Params

__all__ = ["save", "load", "atomic_write_bytes"]


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save(
    directory: Path,
    config: ModelConfig,
    params: Params,
    meta: dict | None = None,
    dtype: str = "float32",
) -> None:
    """`params.npz` (arrays stored as `dtype`) and `model.json` (config + free-form meta)."""
    directory = Path(directory)
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v, dtype=dtype) for k, v in params.items()})
    atomic_write_bytes(directory / "params.npz", buf.getvalue())
    doc = {"config": dataclasses.asdict(config), "dtype": dtype, "meta": meta or {}}
    atomic_write_bytes(directory / "model.json", (json.dumps(doc, indent=2) + "\n").encode())


def load(directory: Path) -> tuple[ModelConfig, Params, dict]:
    """(config, float32 params, meta); clear errors for missing or mismatched files."""
    directory = Path(directory)
    cfg_path, npz_path = directory / "model.json", directory / "params.npz"
    if not cfg_path.exists() or not npz_path.exists():
        raise FileNotFoundError(f"no checkpoint in {directory} (need model.json and params.npz)")
    doc = json.loads(cfg_path.read_text())
    config = ModelConfig(**doc["config"])
    with np.load(npz_path, allow_pickle=False) as z:
        params = {k: jnp.asarray(z[k], dtype=jnp.float32) for k in z.files}
    expected = jax.eval_shape(lambda: network.init_params(config, jax.random.key(0)))
    for k, v in expected.items():
        if k not in params or params[k].shape != v.shape:
            got = params[k].shape if k in params else "missing"
            raise ValueError(
                f"checkpoint {directory}: parameter {k} is {got}, config wants {v.shape}"
            )
    return config, params, doc.get("meta", {})
