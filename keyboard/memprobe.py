"""Peak memory of LiteRT local training, measured in a fresh process.

LiteRT allocates in C++, out of sight of Python's tracemalloc, so we read the kernel's count
of the process's resident memory: `VmRSS` once the runtime is imported (the floor every
process pays) and `VmHWM` (the high-water mark) after a few `train` steps. Their difference
is what training costs on top of the runtime: the model file, the interpreter's tensor arena
(activations, gradients), and the device part with its optimiser state.

    python -m keyboard.memprobe MODEL.tflite [--steps 3]   # prints one JSON object
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

__all__ = ["train_peak_bytes", "measure", "main"]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(model_path: Path, steps: int = 3) -> dict:
    """Run in this process: {floor_bytes, peak_bytes, train_bytes}."""
    from ai_edge_litert.interpreter import Interpreter

    floor = _status_kib("VmRSS")
    interp = Interpreter(model_path=str(model_path), num_threads=1)
    runner = interp.get_signature_runner("train")
    rng = np.random.default_rng(0)
    inputs = {}
    for name, d in runner.get_input_details().items():
        shape = tuple(d["shape"])
        if name in ("tokens", "targets"):
            inputs[name] = rng.integers(4, 1000, shape).astype(np.int32)
        elif name == "lr":
            inputs[name] = np.float32(1e-3)
        else:
            inputs[name] = np.zeros(shape, d["dtype"])
    for _ in range(steps):
        runner(**inputs)
    peak = _status_kib("VmHWM")
    return {
        "floor_bytes": 1024 * floor,
        "peak_bytes": 1024 * peak,
        "train_bytes": 1024 * (peak - floor),
    }


def train_peak_bytes(model_path: Path, steps: int = 3) -> int:
    """Training memory of `model_path`'s `train` signature, from a fresh interpreter process."""
    out = subprocess.run(
        [sys.executable, "-m", "keyboard.memprobe", str(model_path), "--steps", str(steps)],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(json.loads(out.stdout.strip().splitlines()[-1])["train_bytes"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("model", type=Path)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    print(json.dumps(measure(args.model, args.steps)))


if __name__ == "__main__":
    main()
