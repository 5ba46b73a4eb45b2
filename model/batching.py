"""Pack tokenised messages into fixed-shape rows for training and evaluation.

Messages (`<bos> w1 .. wn <eos>`) are packed back to back into rows of `seq_len` inputs; the
LSTM state resets at every `<bos>`, so packing changes nothing but the padding waste. A
message longer than a row continues on the next row (losing its earlier context).
"""

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from model.vocab import PAD

__all__ = ["Batch", "pack", "batches"]


@dataclass(frozen=True)
class Batch:
    inputs: np.ndarray  # int32 [B, T]: token ids fed to the model
    targets: np.ndarray  # int32 [B, T]: next token ids; PAD where there is no target

    @property
    def mask(self) -> np.ndarray:
        return self.targets != PAD


def pack(messages: list[np.ndarray], seq_len: int) -> Batch:
    """All messages packed greedily into rows (inputs, targets) of length `seq_len`."""
    rows_in: list[np.ndarray] = []
    rows_tg: list[np.ndarray] = []
    cur_in: list[np.ndarray] = []
    cur_tg: list[np.ndarray] = []
    used = 0

    def flush() -> None:
        nonlocal cur_in, cur_tg, used
        if used:
            row_in = np.full(seq_len, PAD, np.int32)
            row_tg = np.full(seq_len, PAD, np.int32)
            row_in[:used] = np.concatenate(cur_in)
            row_tg[:used] = np.concatenate(cur_tg)
            rows_in.append(row_in)
            rows_tg.append(row_tg)
        cur_in, cur_tg, used = [], [], 0

    for m in messages:
        x, y = m[:-1], m[1:]
        if len(x) > seq_len - used and used:
            flush()
        while len(x) > seq_len:
            cur_in, cur_tg, used = [x[:seq_len]], [y[:seq_len]], seq_len
            flush()
            x, y = x[seq_len:], y[seq_len:]
        if len(x):
            cur_in.append(x)
            cur_tg.append(y)
            used += len(x)
    flush()
    if not rows_in:
        return Batch(np.zeros((0, seq_len), np.int32), np.zeros((0, seq_len), np.int32))
    return Batch(np.stack(rows_in), np.stack(rows_tg))


def batches(
    packed: Batch, batch_size: int, rng: np.random.Generator | None = None
) -> Iterator[Batch]:
    """Fixed-size batches (the last is padded with empty rows so shapes stay static)."""
    n = len(packed.inputs)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for s in range(0, n, batch_size):
        idx = order[s : s + batch_size]
        x, y = packed.inputs[idx], packed.targets[idx]
        if len(idx) < batch_size:
            pad = ((0, batch_size - len(idx)), (0, 0))
            x = np.pad(x, pad, constant_values=PAD)
            y = np.pad(y, pad, constant_values=PAD)
        yield Batch(x, y)
