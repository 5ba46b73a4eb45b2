"""Start the dashboard: `streamlit run dashboard/app.py`, headless, on loopback by default.

The database URL reaches the app through `SOTTO_DATABASE_URL` (the app reads nothing else),
so the child process gets it in its environment, never on its command line.
"""

import os
import subprocess
import sys
from pathlib import Path

from dashboard.queries import ENV_URL

__all__ = ["APP", "DEFAULT_PORT", "command", "environment", "run"]

APP = Path(__file__).resolve().parent / "app.py"
DEFAULT_PORT = 8501


def command(host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> list[str]:
    """The argv that serves the app (this interpreter, so the same environment)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.headless", "true",
        "--server.address", host,
        "--server.port", str(port),
        "--browser.gatherUsageStats", "false",
    ]  # fmt: skip


def environment(database_url: str | None) -> dict[str, str]:
    """This process's environment, with the database URL if one was given."""
    env = dict(os.environ)
    if database_url:
        env[ENV_URL] = database_url
    return env


def run(database_url: str | None, host: str = "127.0.0.1", port: int = DEFAULT_PORT) -> int:
    """Serve until interrupted; returns Streamlit's exit code."""
    return subprocess.call(command(host, port), env=environment(database_url))
