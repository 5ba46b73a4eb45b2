"""Exact split of the full parameter tree into the frozen base and the trainable device part.

The parameter tree is flat (name -> array); the device part is every `head_*` parameter
(output head and biases) plus any `lora_*` adapter. Split and merge move arrays, never copy or
recompute them, so `merge(*split(p)) == p` bit for bit.
"""

from model.types import Params

__all__ = ["DEVICE_PREFIXES", "is_device_param", "split", "merge", "count"]

DEVICE_PREFIXES = ("head_", "lora_")


def is_device_param(name: str) -> bool:
    return name.startswith(DEVICE_PREFIXES)


def split(params: Params) -> tuple[Params, Params]:
    """(base, device part)."""
    base = {k: v for k, v in params.items() if not is_device_param(k)}
    device = {k: v for k, v in params.items() if is_device_param(k)}
    return base, device


def merge(base: Params, device: Params) -> Params:
    """The full tree; raises if the two parts overlap or a part holds the wrong names."""
    overlap = base.keys() & device.keys()
    if overlap:
        raise ValueError(f"base and device part both hold {sorted(overlap)}")
    wrong = [k for k in device if not is_device_param(k)] + [k for k in base if is_device_param(k)]
    if wrong:
        raise ValueError(f"parameters in the wrong part: {sorted(wrong)}")
    return {**base, **device}


def count(params: Params) -> int:
    return int(sum(v.size for v in params.values()))
