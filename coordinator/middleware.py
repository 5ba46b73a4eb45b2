"""ASGI middleware: request size limit and traffic accounting, around every request.

The body is read (at most `max_bytes` of it) before the app sees it, so an oversized request
gets 413 without being buffered whole, whether or not it declares a Content-Length. Bytes in
and out are counted on the wire; a handler that served a device marks the request with
`request.state.traffic = (device_id, endpoint, kind_in, kind_out)`, and if the response
succeeded the counts are written to the traffic table before the response completes.
"""

import json
import logging
from collections.abc import Callable

import anyio

__all__ = ["LimitAndAccount", "error_body"]

log = logging.getLogger(__name__)

TrafficSink = Callable[[str | None, str, list[tuple[str, int, str]]], None]


def error_body(error: str, detail: str) -> bytes:
    return json.dumps({"error": error, "detail": detail}).encode()


class LimitAndAccount:
    def __init__(self, app, max_bytes: int, sink: TrafficSink) -> None:
        self.app, self.max_bytes, self.sink = app, max_bytes, sink

    async def _reject(self, send, status: int, error: str, detail: str) -> None:
        body = error_body(error, detail)
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"request body exceeds {self.max_bytes} bytes"
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            log.info("413 %s %s (declared %s bytes)", scope["method"], scope["path"], declared)
            await self._reject(send, 413, "payload_too_large", too_large)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                log.info("413 %s %s (streamed body)", scope["method"], scope["path"])
                await self._reject(send, 413, "payload_too_large", too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, sent, replayed = b"".join(chunks), 0, False
        status = 500

        async def replay():
            nonlocal replayed
            if replayed:  # after the body: wait for the client to go away, as a server would
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        state = scope.setdefault("state", {})

        async def counting_send(message):
            nonlocal sent, status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
                if not message.get("more_body", False):
                    await self._account(state.get("traffic"), status, len(body), sent)
            await send(message)

        await self.app(scope, replay, counting_send)

    async def _account(self, mark, status: int, bytes_in: int, bytes_out: int) -> None:
        # Before the last body chunk goes out: once a client has its response, the traffic
        # row is already in the database (no race for a reader right after).
        if mark is None or status >= 400:
            return
        device_id, endpoint, kind_in, kind_out = mark
        rows = [("in", bytes_in, kind_in), ("out", bytes_out, kind_out)]
        try:
            await anyio.to_thread.run_sync(self.sink, device_id, endpoint, rows)
        except Exception:  # the response is already started: report, do not break it
            log.exception("traffic of %s on %s not recorded", device_id, endpoint)
