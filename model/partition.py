"""Exact split of the full parameter tree into the frozen base and the trainable device part.

The parameter tree is flat (name -> array); the device part is every parameter of the groups
named in `config.device_groups` (`model.config.GROUPS`). Split and merge move arrays, never
copy or recompute them, so `merge(*split(p, c), c) == p` bit for bit.
"""

from model.config import GROUPS, ModelConfig
from model.types import Params

__all__ = ["device_names", "split", "merge", "count", "nbytes"]


def device_names(config: ModelConfig) -> frozenset[str]:
    return frozenset(n for g in config.device_groups for n in GROUPS[g])


def split(params: Params, config: ModelConfig) -> tuple[Params, Params]:
    """(base, device part)."""
    names = device_names(config)
    missing = names - params.keys()
    if missing:
        raise ValueError(f"device part {config.device_groups} needs missing {sorted(missing)}")
    base = {k: v for k, v in params.items() if k not in names}
    device = {k: v for k, v in params.items() if k in names}
    return base, device


def merge(base: Params, device: Params, config: ModelConfig) -> Params:
    """The full tree; raises if the parts overlap, or a part holds the wrong names."""
    overlap = base.keys() & device.keys()
    if overlap:
        raise ValueError(f"base and device part both hold {sorted(overlap)}")
    names = device_names(config)
    wrong = [k for k in device if k not in names] + [k for k in base if k in names]
    if wrong:
        raise ValueError(f"parameters in the wrong part: {sorted(wrong)}")
    if device.keys() != names:
        raise ValueError(f"device part lacks {sorted(names - device.keys())}")
    return {**base, **device}


def count(params: Params) -> int:
    return int(sum(v.size for v in params.values()))


def nbytes(params: Params) -> int:
    """Bytes of the parameters as float32 (the size of one dense update)."""
    return 4 * count(params)
