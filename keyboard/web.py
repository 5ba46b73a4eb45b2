"""The demo keyboard's web UI, served by the device process (thin handlers over `Device`).

`GET /` is a phone-sized page (plain HTML/CSS/JS in `keyboard/static/`, no build step);
the page calls the JSON endpoints below on every keystroke. The server listens on loopback
only: it is the phone's own screen, not a network service.
"""

from collections.abc import Callable
from importlib import resources

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from keyboard.device import CloudUnavailable, Device

__all__ = ["create_app"]

MAX_TEXT = 4_000  # characters of typed text per request


class Typed(BaseModel):
    text: str = Field(max_length=MAX_TEXT)


class Toggle(BaseModel):
    on_device: bool


class Idle(BaseModel):
    idle_and_charging: bool = True


def create_app(
    device: Device,
    seed: int = 0,
    on_toggle: Callable[[bool], None] | None = None,
    connection: Callable[[], dict] | None = None,
) -> FastAPI:
    """`on_toggle(on_device)` tells the coordinator (if any) about the switch; `connection()`
    is the background worker's status (coordinator online/offline, what waits to upload)."""
    app = FastAPI(title="Sotto keyboard", docs_url=None, redoc_url=None)
    lock = device.lock  # one phone: the web handlers and its background worker take turns
    rng = np.random.default_rng(seed)
    page = resources.files("keyboard").joinpath("static/index.html").read_text()

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    def suggest_locked(typed: str) -> dict:
        try:
            return {"suggestions": device.suggest(typed), "offline": False}
        except CloudUnavailable as e:
            return {"suggestions": [], "offline": True, "error": str(e)}

    def suggest_blocking(typed: str) -> dict:
        with lock:
            return suggest_locked(typed)

    @app.post("/api/suggest")
    async def suggest(body: Typed) -> dict:
        # Every keystroke lands here. On device the LiteRT model answers in about a
        # millisecond, less than the hop to FastAPI's thread pool costs on a busy machine, so
        # answer on the event loop when the phone is free. Cloud mode (a network round trip)
        # and a busy phone (e.g. training) take the pool, never stalling the loop.
        if lock.acquire(blocking=False):
            try:
                if device.on_device:
                    return suggest_locked(body.text)
            finally:
                lock.release()
        return await run_in_threadpool(suggest_blocking, body.text)

    @app.post("/api/commit")
    def commit(body: Typed) -> dict:
        with lock:
            return {"kept": device.commit(body.text), "stats": device.stats()}

    @app.post("/api/toggle")
    def toggle(body: Toggle) -> dict:
        with lock:
            device.set_on_device(body.on_device)
            note = None
            if on_toggle is not None:
                try:
                    on_toggle(body.on_device)
                except Exception as e:  # offline: the phone still switches locally
                    note = f"coordinator not told: {e}"
            return {**device.stats(), "note": note}

    @app.post("/api/train")
    def train(body: Idle) -> dict:
        with lock:
            report = device.train_if_eligible(body.idle_and_charging, rng)
            return {"trained": report is not None, "report": report, "stats": device.stats()}

    @app.post("/api/idle")
    def idle(body: Idle) -> dict:
        """The simulated idle-and-charging condition under which the phone learns by itself."""
        device.set_idle_and_charging(body.idle_and_charging)
        return stats()

    @app.post("/api/forget")
    def forget() -> dict:
        with lock:
            device.forget()
            return device.stats()

    @app.get("/api/stats")
    def stats() -> dict:
        with lock:
            out = device.stats()
        out["connection"] = connection() if connection else {"state": "none"}
        return out

    @app.get("/api/privacy_log")
    def privacy_log(limit: int = Query(default=0, ge=0)) -> dict:
        """The newest `limit` entries (0 = all) and totals over all of them: in cloud mode the
        log grows by one entry per keystroke, and the page shows only the latest."""
        with lock:
            entries = device.log.entries()
            shown = entries[-limit:] if limit else entries
            return {
                "entries": [e.__dict__ for e in shown],
                "count": len(entries),
                "totals": device.log.totals(),
            }

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, exc: ValueError) -> JSONResponse:
        return JSONResponse({"error": "bad request", "detail": str(exc)}, status_code=400)

    return app
