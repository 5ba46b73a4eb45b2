"""An in-process `Transport`: the same device code, with the coordinator called directly.

For simulating large populations without sockets: `InProcessTransport` is a
`keyboard.transport.Transport` that replaces only `_send`: `Transport.request` builds, signs
and logs the very HTTP request the device would send (so the privacy log records the same
bytes), and `_send` hands it to the coordinator's library functions (`coordinator.devices`,
`coordinator.registry`, `coordinator.rounds`, `coordinator.buffered`) instead of the FastAPI
app, wrapping the answer in an `httpx.Response`. Everything above `_send` —
enrolment, check-in, downloads, and the secagg client in `keyboard.contribute` — is unchanged.
Coordinator errors map onto the status codes the HTTP app gives them (409, 400, 404). The
server's traffic accounting and rate limits are HTTP middleware, so they do not apply here.
"""

from __future__ import annotations

import base64
import json
import re
from typing import TYPE_CHECKING

import httpx

from coordinator import buffered, devices, rounds
from coordinator.errors import Conflict, CoordinatorError, Invalid, NotFound
from keyboard.device import Device
from keyboard.transport import Transport

if TYPE_CHECKING:
    from coordinator.service import Coordinator

__all__ = ["InProcessTransport"]

_STATUS = {Conflict: 409, Invalid: 400, NotFound: 404}
_ROUND = re.compile(r"^/v1/rounds/(\d+)$")
_INBOX = re.compile(r"^/v1/rounds/(\d+)/inbox$")
_UPLOAD = re.compile(r"^/v1/rounds/(\d+)/([a-z_]+)$")
_PART = re.compile(r"^/v1/versions/(\d+)/device_part$")
_MODEL = re.compile(r"^/v1/models/([0-9a-f]{64})$")


class InProcessTransport(Transport):
    """One device's link to a coordinator object in the same process."""

    def __init__(self, device: Device, coordinator: Coordinator) -> None:
        self.coord = coordinator
        self.http = httpx.Client(base_url="http://coordinator.local")  # builds requests only
        super().__init__(device, "http://coordinator.local", client=self.http)

    def _send(self, req: httpx.Request) -> httpx.Response:
        """The coordinator's answer to `req`, computed by calling it directly; the request is
        built, authorised and logged by `Transport.request` exactly as over HTTP."""
        method, path = req.method, req.url.path
        try:
            status, body, media = self._handle(method, path, req, dict(req.url.params))
        except CoordinatorError as e:
            status, media = _STATUS.get(type(e), 400), "application/json"
            body = json.dumps({"error": e.code, "detail": str(e)}).encode()
        return httpx.Response(status, content=body, headers={"content-type": media}, request=req)

    # -- the coordinator's handlers, without HTTP -------------------------------------------
    def _device_id(self) -> str:
        if self.credentials is None or self.credentials.token is None:
            raise Invalid("unauthorized: enrol first")
        found = devices.authenticate(self.coord.db, self.credentials.token)
        if found is None:
            raise Invalid("unauthorized: unknown token")
        return found.id

    def _handle(
        self, method: str, path: str, req: httpx.Request, params: dict
    ) -> tuple[int, bytes, str]:
        c = self.coord
        js = "application/json"
        if method == "POST" and path == "/v1/devices":
            body = json.loads(req.content)
            token = devices.enrol(
                c.db, body["device_id"], base64.b64decode(body["public_key"]), body["mode"]
            )
            return 201, json.dumps({**body, "token": token}).encode(), js
        dev = self._device_id()
        if method == "POST" and path == "/v1/checkin":
            body = json.loads(req.content)
            current = c.registry.current()
            devices.checkin(c.db, dev, body["version"])
            out = {
                "version": current.id,
                "parent": current.parent,
                "base": {
                    "sha256": current.base.sha256,
                    "url": f"/v1/models/{current.base.sha256}",
                    "download": body.get("base_sha256") != current.base.sha256,
                },
                "device_part": {
                    "sha256": current.device_part.sha256,
                    "url": f"/v1/versions/{current.id}/device_part",
                    "download": body["version"] != current.id,
                },
            }
            return 200, json.dumps(out).encode(), js
        if method == "POST" and path == "/v1/mode":
            devices.set_mode(c.db, dev, json.loads(req.content)["mode"])
            return 200, b"{}", js
        if method == "GET" and (m := _MODEL.match(path)):
            return 200, c.registry.file_path(m.group(1)).read_bytes(), "application/octet-stream"
        if method == "GET" and (m := _PART.match(path)):
            return 200, c.registry.device_part_bytes(int(m.group(1))), "application/octet-stream"
        if method == "GET" and path == "/v1/rounds/current":
            rounds.tick(c)
            v = rounds.current_for(c, dev)
            if v is None:
                return 200, b'{"round_id": null}', js
            out = {
                "round_id": v.round_id,
                "status": v.status,
                "stage": v.stage,
                "client_id": v.client_id,
                "params": v.params,
                "identities": {str(k): x.hex() for k, x in v.identities.items()},
                "pending": v.pending,
                "model_version": v.model_version,
                "mode": v.mode,
                "trained_from": v.trained_from,
                "staleness": v.staleness,
                "weight": v.weight,
                "subset": v.subset,
            }
            return 200, json.dumps(out).encode(), js
        if method == "POST" and path == "/v1/rounds/ready":
            out = buffered.ready(c, dev, int(json.loads(req.content)["version"]))
            return 200, json.dumps(out).encode(), js
        if method == "GET" and (m := _ROUND.match(path)):
            rounds.tick(c)
            st = rounds.status(c, int(m.group(1)))
            keys = ("round_id", "status", "stage", "reason", "result_version")
            return 200, json.dumps({k: st[k] for k in keys}).encode(), js
        if method == "GET" and (m := _INBOX.match(path)):
            msg = rounds.inbox(c, int(m.group(1)), dev, params["stage"])
            if msg is None:
                return 204, b"", js
            return 200, msg, "application/octet-stream"
        if method == "POST" and (m := _UPLOAD.match(path)):
            rid, stage = int(m.group(1)), m.group(2)
            after = rounds.submit(c, rid, dev, stage, req.content)
            return 202, json.dumps({"accepted": True, "round_id": rid, "stage": after}).encode(), js
        raise NotFound(f"no route {method} {path} in the in-process transport")
