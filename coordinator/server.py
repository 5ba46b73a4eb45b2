"""Run the coordinator with uvicorn: `serve(config)` (what `sotto coordinator` calls)."""

import logging

import uvicorn

from coordinator.app import create_app
from coordinator.config import CoordinatorConfig
from coordinator.service import Coordinator

__all__ = ["serve", "build_server"]

log = logging.getLogger(__name__)


def build_server(config: CoordinatorConfig, coordinator: Coordinator | None = None):
    """A uvicorn `Server` for the app (not yet running); tests run it in a thread."""
    app = create_app(config, coordinator)
    # Access logs carry method and path only (never bodies); keep them at the app's level.
    uv = uvicorn.Config(app, host=config.host, port=config.port, log_config=None, workers=1)
    return uvicorn.Server(uv)


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
    try:
        build_server(config, coordinator).run()
    finally:
        coordinator.close()
