"""`sotto keyboard`: one phone's device process with its web UI on loopback."""

import logging
from pathlib import Path

import uvicorn

from keyboard.device import Device, DeviceConfig
from keyboard.web import create_app

__all__ = ["serve"]

log = logging.getLogger(__name__)


def serve(data_dir: Path, host: str = "127.0.0.1", port: int = 8600) -> None:
    device = Device.open(DeviceConfig(Path(data_dir)))
    log.info("keyboard for %s: open http://%s:%d/ (Ctrl-C stops)", data_dir, host, port)
    uvicorn.run(create_app(device), host=host, port=port, log_level="warning")
