"""Real headless Chromium for the browser tests, `bench/keyboard.py` and `./dev screenshot`.

Playwright drives Debian's `chromium` through `executable_path`: nothing is downloaded at run
time (`playwright install` is never needed; `.ci/chromium` installs the Debian package). The
servers the browser talks to run on loopback on ports the OS picks, so runs never collide.
"""

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI
from playwright.sync_api import Browser, Page, sync_playwright

__all__ = [
    "CHROMIUM",
    "available",
    "chromium",
    "serve_app",
    "free_port",
    "process_server",
    "dashboard_server",
    "wait_for_suggestions",
    "asked",
    "type_slowly",
]

CHROMIUM = Path(os.environ.get("SOTTO_CHROMIUM", "/usr/bin/chromium"))
# --no-sandbox: CI runs as root, where Chromium refuses its sandbox. The rest keep a headless
# run quiet and independent of the machine (no GPU, no background traffic off loopback).
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def available() -> bool:
    return CHROMIUM.exists()


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Debian Chromium under Playwright, closed when the block ends."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def serve_app(app: FastAPI, start_timeout: float = 20) -> Iterator[str]:
    """A FastAPI app (e.g. the keyboard's) served by uvicorn in a thread on a free loopback
    port; yields its base URL. In-process so a test can look at the same `Device` object."""
    srv = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", log_config=None)
    )
    thread = threading.Thread(target=srv.run, name="browser-app", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the app did not start")
        time.sleep(0.02)
    port = srv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def process_server(
    name: str,
    argv: list[str],
    env: dict[str, str],
    health_url: str,
    start_timeout: float = 60,
    stderr: int | None = subprocess.DEVNULL,
) -> Iterator[subprocess.Popen]:
    """A server (`name`, for errors) in a child process, yielded once `health_url` answers
    200; terminated (killed if it lingers) on exit."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(health_url, timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer at {health_url}")
            time.sleep(0.2)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def dashboard_server(database_url: str, start_timeout: float = 60) -> Iterator[str]:
    """`sotto dashboard`'s own command (Streamlit, headless) on a free loopback port."""
    from dashboard import launch

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = launch.command("127.0.0.1", port)
    env = launch.environment(database_url)
    with process_server("streamlit", argv, env, f"{url}/_stcore/health", start_timeout):
        yield url


def wait_for_suggestions(page: Page, after_seq: int, timeout_ms: float = 10_000) -> list[str]:
    """Wait until the strip shows the answer to keystroke `after_seq` (or a later one) and
    return its three words, best first (the strip shows them 2nd, best, 3rd)."""
    page.wait_for_function(
        "n => +document.getElementById('strip').dataset.seq >= n", arg=after_seq,
        timeout=timeout_ms,
    )  # fmt: skip
    return page.eval_on_selector_all(
        "#strip button",
        "bs => bs.sort((a, b) => a.dataset.rank - b.dataset.rank).map(b => b.textContent)",
    )


def asked(page: Page) -> int:
    """How many suggestion requests the page has made (the strip's `data-asked`)."""
    return int(page.get_attribute("#strip", "data-asked") or 0)


def type_slowly(page: Page, text: str) -> list[str]:
    """Type `text` into the focused element one key at a time, waiting after each key until
    the strip shows the suggestions for it, as a person typing would see them; returns the
    last strip."""
    words: list[str] = []
    for ch in text:
        n = asked(page) + 1
        page.keyboard.type(ch)
        words = wait_for_suggestions(page, n)
    return words
