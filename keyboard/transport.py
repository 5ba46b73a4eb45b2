"""The device's only way to the coordinator: an httpx client that logs every request.

Each request is written into the device's privacy log (`Device.log`) with when, where, bytes
up and down, its kind and a description of what it carried; for `/v1/predict` the typed text
itself, verbatim, because that is exactly what left the phone. The device's credentials (its
Ed25519 identity private key and bearer token) are sealed with its store key next to the rest
of its local data, never written in the clear.
"""

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from Crypto.PublicKey import ECC

from keyboard import store
from keyboard.device import Device

__all__ = ["Credentials", "Transport", "TransportError"]


class TransportError(RuntimeError):
    """The coordinator answered with an error (status and its JSON error body)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"coordinator answered {status}: {body}")
        self.status = status


@dataclass(frozen=True)
class Credentials:
    device_id: str
    identity_seed: bytes  # Ed25519 private key (32-byte seed): signs secagg adverts
    public_key: bytes
    token: str | None


def _credentials_doc(device: Device) -> store.SealedDocument:
    # Sealed with the device's store key, like the typing history (keyboard.store).
    return device.sealed("credentials.bin", {})


class Transport:
    """HTTP to one coordinator for one device; use as a context manager or call `close`."""

    def __init__(
        self, device: Device, base_url: str, client: httpx.Client | None = None, timeout=30.0
    ) -> None:
        self.device = device
        self.http = client or httpx.Client(base_url=base_url, timeout=timeout)
        self._doc = _credentials_doc(device)
        saved = self._doc.load()
        self.credentials: Credentials | None = (
            Credentials(
                saved["device_id"],
                bytes.fromhex(saved["seed"]),
                bytes.fromhex(saved["public_key"]),
                saved["token"],
            )
            if saved
            else None
        )

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- one logged request ---------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        kind: str,
        contents: str,
        log_path: str | None = None,
        ok: tuple[int, ...] = (),
        **kw: Any,
    ) -> httpx.Response:
        """Send, log (even a failed request: the bytes left the phone), raise on errors."""
        headers = dict(kw.pop("headers", {}))
        if self.credentials and self.credentials.token:
            headers["Authorization"] = f"Bearer {self.credentials.token}"
        req = self.http.build_request(method, path, headers=headers, **kw)
        resp = self._send(req)
        self.device.log.record(
            method, log_path or path, kind, len(req.content), len(resp.content), contents
        )
        if resp.status_code >= 400 and resp.status_code not in ok:
            raise TransportError(resp.status_code, resp.text)
        return resp

    def _send(self, req: httpx.Request) -> httpx.Response:
        """Deliver one built request (over HTTP here; the simulator delivers in-process)."""
        return self.http.send(req)

    # -- enrolment, check-in, downloads ---------------------------------------------------
    def enrol(self, device_id: str, mode: str = "on_device") -> Credentials:
        """Make an identity key pair (kept sealed on the phone) and enrol its public half."""
        key = ECC.generate(curve="Ed25519")
        seed, pub = key.seed, key.public_key().export_key(format="raw")
        body = {"device_id": device_id, "public_key": base64.b64encode(pub).decode(), "mode": mode}
        what = f"device id {device_id!r}, identity public key, mode {mode}"
        r = self.request("POST", "/v1/devices", "enrol", what, json=body)
        self.credentials = Credentials(device_id, seed, pub, r.json()["token"])
        self._doc.save(
            {"device_id": device_id, "seed": seed.hex(), "public_key": pub.hex(),
             "token": self.credentials.token}
        )  # fmt: skip
        return self.credentials

    def checkin(self) -> dict:
        # Version 0 is the model the app ships with, not a coordinator version.
        version = self.device.version or None
        body = {"version": version, "base_sha256": self.device.model_sha256}
        what = f"model version {version}, model file hash"
        return self.request("POST", "/v1/checkin", "checkin", what, json=body).json()

    def update(self) -> bool:
        """Check in; download and install the current global version if it is new."""
        c = self.checkin()
        if c["version"] == self.device.version:
            return False
        if c["base"]["download"]:
            model = self.request(
                "GET", c["base"]["url"], "model_download", "request for the LiteRT model file",
                log_path="/v1/models/{sha256}",
            ).content  # fmt: skip
        else:
            model = (self.device.models / f"{self.device.model_sha256}.tflite").read_bytes()
        part = self.request(
            "GET", c["device_part"]["url"], "device_part_download",
            f"request for the device part of version {c['version']}",
        ).content  # fmt: skip
        self.device.install(c["version"], model, part)
        return True

    # -- cloud mode -----------------------------------------------------------------------
    def set_mode(self, on_device: bool) -> None:
        """Tell the coordinator which path this phone takes (it gates predict and rounds)."""
        mode = "on_device" if on_device else "cloud"
        self.request("POST", "/v1/mode", "checkin", f"mode {mode}", json={"mode": mode})

    def predict(self, typed: str) -> list[str]:
        r = self.request("POST", "/v1/predict", "raw_text", typed, json={"text": typed})
        return list(r.json()["suggestions"])

    def cloud_predictor(self) -> Callable[[str], list[str]]:
        """For `Device.cloud_predict`: suggestions from the coordinator, logged verbatim."""
        return self.predict

    # -- rounds ---------------------------------------------------------------------------
    def round_task(self) -> dict:
        return self.request(
            "GET", "/v1/rounds/current", "secagg", "request for a round task (no data)"
        ).json()

    def round_status(self, round_id: int) -> dict:
        return self.request(
            "GET", f"/v1/rounds/{round_id}", "secagg", "request for a round's status (no data)"
        ).json()

    def round_inbox(self, round_id: int, stage: str) -> bytes | None:
        """The server's message for `stage`, or None while it is not ready."""
        r = self.request(
            "GET", f"/v1/rounds/{round_id}/inbox", "secagg",
            f"request for the server's {stage} message (no data)", params={"stage": stage},
        )  # fmt: skip
        return None if r.status_code == 204 else r.content

    def round_send(self, round_id: int, stage: str, message: bytes) -> dict:
        kind = "masked_vector" if stage == "masked_input" else "secagg"
        what = (
            "the model update, masked: indistinguishable from random without the cohort"
            if kind == "masked_vector"
            else f"secure-aggregation {stage} message: keys, encrypted shares or signatures"
        )
        return self.request(
            "POST", f"/v1/rounds/{round_id}/{stage}", kind, what, content=message,
            headers={"Content-Type": "application/octet-stream"},
        ).json()  # fmt: skip
