"""Run the coordinator with uvicorn: `serve(config)` (what `sotto coordinator` calls)."""

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

import uvicorn

from coordinator import admin
from coordinator.app import create_app
from coordinator.config import CoordinatorConfig
from coordinator.service import Coordinator

__all__ = ["serve", "build_server", "running"]

log = logging.getLogger(__name__)


def build_server(config: CoordinatorConfig, coordinator: Coordinator | None = None):
    """A uvicorn `Server` for the app (not yet running); tests run it in a thread."""
    app = create_app(config, coordinator)
    # Access logs carry method and path only (never bodies); keep them at the app's level.
    uv = uvicorn.Config(app, host=config.host, port=config.port, log_config=None, workers=1)
    return uvicorn.Server(uv)


@contextlib.contextmanager
def running(
    config: CoordinatorConfig, coordinator: Coordinator | None = None, start_timeout: float = 60
) -> Iterator[tuple[str, Coordinator]]:
    """Serve in a background thread until the block ends; yields (base URL, `Coordinator`).
    Port 0 lets the OS pick a free port (tests); the demo runs it beside the keyboard."""
    srv = build_server(config, coordinator)
    thread = threading.Thread(target=srv.run, name="coordinator", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the coordinator did not start on {config.host}:{config.port}")
        time.sleep(0.02)
    port = srv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{config.host}:{port}", srv.config.app.state.coordinator
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
    if thread.is_alive():
        raise RuntimeError("the coordinator did not stop")


def serve(config: CoordinatorConfig) -> None:
    """Open the database, bootstrap the model registry, then serve until interrupted."""
    coordinator = Coordinator.open(config)
    current = coordinator.registry.current()
    log.info(
        "Sotto coordinator on http://%s:%d (database %s, data %s, model version %s)",
        config.host,
        config.port,
        coordinator.db.describe(),
        config.data_dir,
        current and current.id,
    )
    log.info(
        "rounds: %s; operator token (for `sotto round open|status`): %s",
        config.round_mode,
        config.data_dir / admin.TOKEN_FILE,
    )
    try:
        build_server(config, coordinator).run()
    finally:
        coordinator.close()
