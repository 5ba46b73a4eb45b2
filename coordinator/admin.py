"""Operator control: the operator token, and the client behind `sotto round open|status`.

The token is made on the coordinator's first start (32 random bytes, hex) in
`<data dir>/operator_token`, mode 0600, and its path is logged; whoever can read that file may
open rounds through `POST /v1/admin/rounds`. The server compares tokens in constant time.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path

import httpx

__all__ = ["TOKEN_FILE", "ensure_token", "read_token", "check", "open_round", "status"]

log = logging.getLogger(__name__)

TOKEN_FILE = "operator_token"


def ensure_token(data_dir: Path) -> str:
    """The operator token of this data dir, created (0600) if missing."""
    path = Path(data_dir) / TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_token(data_dir)
    token = secrets.token_hex(32)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    log.info("operator token written to %s (mode 0600)", path)
    return token


def read_token(data_dir: Path) -> str:
    return (Path(data_dir) / TOKEN_FILE).read_text().strip()


def check(expected: str, given: str | None) -> bool:
    """Constant-time comparison of the operator token."""
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())


def _call(url: str, token: str, method: str, timeout: float = 30.0) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    r = httpx.request(method, url.rstrip("/") + "/v1/admin/rounds", headers=headers,
                      timeout=timeout)  # fmt: skip
    body = r.json()
    if r.status_code >= 400:
        raise RuntimeError(f"coordinator answered {r.status_code}: {body.get('detail', body)}")
    return body


def open_round(url: str, token: str) -> dict:
    """Ask the coordinator at `url` to open a round now; returns its status."""
    return _call(url, token, "POST")


def status(url: str, token: str) -> dict:
    """The coordinator's round overview (mode, running round, ready devices, last rounds)."""
    return _call(url, token, "GET")
