"""The demo: a coordinator and one phone's keyboard, connected, on loopback.

Pretrains the base and exports its LiteRT file first if they are missing (both ship in
`assets/`). The coordinator keeps its SQLite database in `runs/coordinator`, the phone its
sealed store in `runs/phone`; a second run reuses both. Ctrl-C stops everything.
"""

import logging
from pathlib import Path

from coordinator.config import CoordinatorConfig
from coordinator.server import running
from coordinator.service import Coordinator
from keyboard import serve
from model import export, paths, pipeline

__all__ = ["ensure_model", "run"]

log = logging.getLogger(__name__)


def ensure_model(base: Path) -> None:
    if not pipeline.has_checkpoint(base):
        print(f"No pretrained base in {base}: pretraining on public users first (a few minutes).")
        pipeline.pretrain(
            base,
            pipeline.data_config("default"),
            pipeline.model_config("default"),
            pipeline.pretrain_config("default"),
        )
    if not paths.BASE_TFLITE.exists():
        print("Exporting the base to LiteRT (the model the phone runs).")
        export.export_checkpoint(base, paths.BASE_TFLITE)


def run(
    base: Path, phone_dir: Path, host: str = "127.0.0.1", port: int = 8600, coord_port: int = 8470
) -> None:
    ensure_model(base)
    cfg = CoordinatorConfig(host=host, port=coord_port)
    coordinator = Coordinator.open(cfg)
    try:
        with running(cfg, coordinator) as (url, _):
            print(
                f"Coordinator: {url}  (API docs {url}/docs, database {coordinator.db.describe()})"
            )
            print(
                f"Keyboard:    http://{host}:{port}/  <- open this in a browser; Ctrl-C stops both"
            )
            serve.serve(phone_dir, host, port, url)
    finally:
        coordinator.close()
