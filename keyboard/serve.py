"""`sotto keyboard`: one phone's device process with its web UI on loopback.

With a coordinator URL the phone enrols once (credentials sealed in its store), downloads the
current global model, tells the coordinator when "Process on device" flips, and in cloud
mode asks it for suggestions; every request lands in the privacy log. A background worker
(`keyboard.background`) learns when the phone is idle and charging and takes part in rounds.
Without a coordinator, or while it is unreachable, the phone keeps predicting and learning on
its own, and its update waits.
"""

import logging
import secrets
from pathlib import Path

import httpx
import numpy as np
import uvicorn

from keyboard.background import Background
from keyboard.device import Device, DeviceConfig
from keyboard.transport import Transport, TransportError
from keyboard.web import create_app

__all__ = ["connect", "serve"]

log = logging.getLogger(__name__)


def connect(device: Device, coordinator_url: str) -> Transport | None:
    """Enrol (first time), fetch the current model, and route cloud mode to the coordinator."""
    transport = Transport(device, coordinator_url)
    try:
        if transport.credentials is None:
            mode = "on_device" if device.on_device else "cloud"
            transport.enrol(f"phone-{secrets.token_hex(4)}", mode)
        transport.set_mode(device.on_device)
        if transport.update():
            log.info("installed global version %d from the coordinator", device.version)
    except (httpx.HTTPError, TransportError) as e:
        log.warning("coordinator %s unreachable (%s): working offline", coordinator_url, e)
    device.cloud_predict = transport.cloud_predictor()
    return transport


def serve(
    data_dir: Path, host: str = "127.0.0.1", port: int = 8600, coordinator_url: str | None = None
) -> None:
    device = Device.open(DeviceConfig(Path(data_dir)))
    transport = connect(device, coordinator_url) if coordinator_url else None
    worker = Background(device, transport, np.random.default_rng(secrets.randbits(64)))
    app = create_app(
        device, on_toggle=transport.set_mode if transport else None, connection=worker.status
    )
    thread, stop = worker.start()
    log.info("keyboard for %s: open http://%s:%d/ (Ctrl-C stops)", data_dir, host, port)
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning")
    finally:
        stop.set()
        thread.join(timeout=5)
