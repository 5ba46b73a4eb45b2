"""bench/keyboard: keystroke-to-suggestions latency of the demo keyboard in real headless Chromium,
on device vs cloud.

A coordinator (in this process, on loopback) and the keyboard (`sotto keyboard`, its own
process, connected to it, as in the demo) run; Debian's Chromium opens the keyboard page and
types held-out chitchat messages (users never trained on) one key at a time, at a fixed pause
between keys. The page measures each keystroke itself (`window.sottoTimings` in
keyboard/static/index.html): from the key event to the suggestion strip's DOM update for that
keystroke ("rendered"), and to the next animation frame ("frame", the paint that shows it).
On device: the LiteRT model in the keyboard's process. Cloud: Process on device off, every
keystroke's context goes to the coordinator's /v1/predict and back. Modes alternate within each
repeat; p50/p95 are per repeat, the figures are their medians over repeats. Writes
bench/results/keyboard.json.

    ./dev bench keyboard                     # ~4 min
    ./dev bench keyboard --messages 2 --repeats 1
"""

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

# This file is named like the package: make `import keyboard` find the package, not this
# script; the browser helpers live beside the browser tests.
_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path[:0] = [str(_ROOT), str(_ROOT / "tests")]

import numpy as np  # noqa: E402
from browser import (  # noqa: E402
    asked,
    chromium,
    free_port,
    process_server,
    wait_for_suggestions,
)
from playwright.sync_api import Page  # noqa: E402

from coordinator.config import CoordinatorConfig  # noqa: E402
from coordinator.server import running  # noqa: E402
from model import data  # noqa: E402
from model.config import DataConfig  # noqa: E402

OUT = _HERE / "results" / "keyboard.json"
MODES = ("on_device", "cloud")


def held_out_messages(n: int, min_chars: int = 25, max_chars: int = 80) -> list[str]:
    """The first plain-ASCII message of `min_chars`..`max_chars` from each of the first `n`
    held-out users (sorted ids: deterministic)."""
    users = data.load_chitchat(DataConfig.default())["heldout"]
    out = []
    for user in sorted(users):
        for m in users[user]:
            m = " ".join(m.split())
            if min_chars <= len(m) <= max_chars and m.isascii() and m.isprintable():
                out.append(m)
                break
        if len(out) == n:
            break
    return out


@contextlib.contextmanager
def keyboard_process(data_dir: Path, coordinator_url: str) -> Iterator[str]:
    """`sotto keyboard` on a free loopback port, connected to the coordinator; its URL."""
    port = free_port()
    argv = [sys.executable, "-c", "from sotto.cli import main; main()", "keyboard",
            "--data-dir", str(data_dir), "--port", str(port),
            "--coordinator", coordinator_url]  # fmt: skip
    # This checkout's code first (the page's timing hook lives in it).
    path = os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path}
    url = f"http://127.0.0.1:{port}"
    with process_server("sotto keyboard", argv, env, f"{url}/api/stats", stderr=None):
        yield url


def set_mode(page: Page, mode: str) -> None:
    """Flip Process on device with the page's own switch, as a person would."""
    on = mode == "on_device"
    if page.is_checked("#toggle") != on:
        page.click("#toggle")
        page.wait_for_function(
            "on => document.getElementById('status').classList.contains('cloud') !== on", arg=on
        )
    page.focus("#text")


def type_messages(page: Page, messages: list[str], gap_ms: float) -> list[dict]:
    """Type every message key by key (waiting for each key's suggestions, then `gap_ms`);
    returns the page's timing of each keystroke."""
    page.evaluate("window.sottoTimings = []")
    seqs = []
    for message in messages:
        if page.input_value("#text"):  # a fresh message (not timed)
            n = asked(page) + 1
            page.fill("#text", "")
            wait_for_suggestions(page, n)
        for ch in message:
            n = asked(page) + 1
            page.keyboard.type(ch)
            wait_for_suggestions(page, n)
            seqs.append(n)
            page.wait_for_timeout(gap_ms)
    by_seq = {t["seq"]: t for t in page.evaluate("window.sottoTimings")}
    return [by_seq[s] for s in seqs]


def percentiles(timings: list[dict], key: str) -> tuple[float, float]:
    values = np.array([t[key] for t in timings if key in t])
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def run(messages: list[str], repeats: int, gap_ms: float, work: Path) -> dict:
    cfg = CoordinatorConfig(port=0, data_dir=work / "coordinator", eval_targets=0)
    # The default per-device limit (5 requests/s sustained) would throttle a cloud-mode phone
    # typing faster than 5 keys/s; this measures latency, not the limiter.
    cfg = dataclasses.replace(cfg, rate_per_second=1_000.0, rate_burst=10_000)
    per_repeat: dict[str, list[dict]] = {m: [] for m in MODES}
    load_before = os.getloadavg()[0]  # other work on the machine shows in the tail
    with (
        running(cfg) as (coord_url, _),
        keyboard_process(work / "phone", coord_url) as url,
        chromium() as browser,
    ):
        page = browser.new_page(viewport={"width": 460, "height": 900})
        page.goto(url)
        wait_for_suggestions(page, 1)
        for mode in MODES:  # warm both paths (model load, first connection): not timed
            set_mode(page, mode)
            type_messages(page, messages[:1], gap_ms)
        for r in range(repeats):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                page.request.post(f"{url}/api/forget")  # same log size at every start
                set_mode(page, mode)
                timings = type_messages(page, messages, gap_ms)
                offline = sum(bool(t.get("offline")) for t in timings)
                if offline:
                    raise RuntimeError(f"{mode}: {offline} keystrokes got no answer")
                p50, p95 = percentiles(timings, "ms")
                f50, f95 = percentiles(timings, "frame_ms")
                per_repeat[mode].append(
                    {"p50_ms": p50, "p95_ms": p95, "frame_p50_ms": f50,
                     "frame_p95_ms": f95, "keystrokes": len(timings)}
                )  # fmt: skip
                print(f"repeat {r + 1} {mode}: p50 {p50:.1f} ms, p95 {p95:.1f} ms", flush=True)
        chromium_version = browser.version
    out: dict = {}
    for mode in MODES:
        rows = per_repeat[mode]
        out[mode] = {
            k: round(statistics.median(row[k] for row in rows), 2)
            for k in ("p50_ms", "p95_ms", "frame_p50_ms", "frame_p95_ms")
        }
        out[mode]["keystrokes"] = sum(row["keystrokes"] for row in rows)
        out[mode]["repeats"] = rows
    out["cloud_over_on_device"] = {
        k: round(out["cloud"][k] / out["on_device"][k], 2) for k in ("p50_ms", "p95_ms")
    }
    out["setup"] = {
        "messages": len(messages),
        "characters": sum(len(m) for m in messages),
        "repeats": repeats,
        "gap_ms": gap_ms,
        "chromium": chromium_version,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--messages", type=int, default=8, help="held-out messages per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gap-ms", type=float, default=100.0, help="pause after each answered key")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    messages = held_out_messages(args.messages)
    with tempfile.TemporaryDirectory(prefix="sotto-bench-keyboard-") as tmp:
        result = run(messages, args.repeats, args.gap_ms, Path(tmp))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    s = result["setup"]
    print(f"\n{s['messages']} held-out messages, {s['characters']} keystrokes per mode and "
          f"repeat, {s['repeats']} repeats, {s['gap_ms']:g} ms between keys; Chromium "
          f"{s['chromium']}\n")  # fmt: skip
    print("| mode | rendered p50 | rendered p95 | next frame p50 | next frame p95 |")
    print("|---|---|---|---|---|")
    for mode in MODES:
        r = result[mode]
        print(f"| {mode} | {r['p50_ms']:.1f} ms | {r['p95_ms']:.1f} ms | "
              f"{r['frame_p50_ms']:.1f} ms | {r['frame_p95_ms']:.1f} ms |")  # fmt: skip
    ratio = result["cloud_over_on_device"]
    print(f"\ncloud / on device: p50 x{ratio['p50_ms']}, p95 x{ratio['p95_ms']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
