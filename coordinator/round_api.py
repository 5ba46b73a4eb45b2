"""HTTP routes of federated rounds: thin handlers over `coordinator.rounds`.

  GET  /v1/rounds/current            is this device in a running round: params, its client id,
                                      its neighbours' identity keys, the stage, which stage's
                                      server message waits in its inbox, and (buffered) the
                                      version it must have trained from and its weight
  POST /v1/rounds/ready              buffered mode: {"version": v} = trained from version v,
                                      ready to join a round (409 sync mode, duplicate, in a
                                      round, too stale; 403 cloud mode; 400 unknown version)
  GET  /v1/admin/rounds              operator (Bearer operator token): mode, running round,
                                      devices ready, the latest rounds
  POST /v1/admin/rounds              operator: open a round now
  GET  /v1/rounds/{id}               public status of a round (stage, reason, new version)
  GET  /v1/rounds/{id}/inbox?stage=s the server's binary message that lets it answer stage s
                                      (200 octet-stream; 204 not yet; 409 round over/dropped)
  POST /v1/rounds/{id}/{stage}       one binary secagg message (application/octet-stream)

Protocol errors (replays, wrong stage, another round) are 409 and bad bytes or signatures 400,
all JSON, and change nothing. Masked inputs are larger than the global request limit: the size
limit of a round's upload routes is the round's own `max_message_bytes` (`RoundSizeLimit`).
"""

import logging
import re
from collections.abc import Callable
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from coordinator import (
    admin,
    api_errors,
    buffered,
    devices,
    rounds,
    scheduler,
    schemas,
    traffic,
)
from coordinator.api_errors import ApiError
from coordinator.errors import CoordinatorError
from coordinator.middleware import LimitAndAccount
from coordinator.service import Coordinator

__all__ = ["router", "admin_router", "RoundSizeLimit", "tick_forever"]

log = logging.getLogger(__name__)

ERRORS = api_errors.responses(400, 401, 404, 409, 413, 429)
_UPLOAD = re.compile(r"^/v1/rounds/(\d+)/[a-z_]+$")


def _kind_in(stage: str) -> str:
    return "masked_vector" if stage == "masked_input" else "secagg"


def router(coord: Coordinator, device: Callable[..., Any], mark: Callable[..., None]) -> APIRouter:
    """The round routes; `device` is the app's bearer dependency, `mark` its traffic marker."""
    r = APIRouter()
    authed = Annotated[devices.DeviceInfo, Depends(device)]

    @r.get("/v1/rounds/current", responses=ERRORS)
    def current(request: Request, dev: authed) -> dict:
        rounds.tick(coord)
        view = rounds.current_for(coord, dev.id)
        mark(request, dev.id, "/v1/rounds/current", "request", "round_task")
        if view is None:
            return {"round_id": None}
        return {
            "round_id": view.round_id,
            "status": view.status,
            "stage": view.stage,
            "client_id": view.client_id,
            "params": view.params,
            "identities": {str(k): v.hex() for k, v in view.identities.items()},
            "pending": view.pending,
            "model_version": view.model_version,
            "mode": view.mode,
            "trained_from": view.trained_from,
            "staleness": view.staleness,
            "weight": view.weight,
            "subset": view.subset,
        }

    @r.post("/v1/rounds/ready", responses=api_errors.responses(400, 401, 403, 409, 422, 429))
    def ready(body: schemas.ReadyRequest, request: Request, dev: authed) -> dict:
        out = buffered.ready(coord, dev.id, body.version)
        mark(request, dev.id, "/v1/rounds/ready", "checkin", "round_task")
        return out

    @r.get("/v1/rounds/{round_id}", responses=ERRORS)
    def round_status(round_id: int, request: Request, dev: authed) -> dict:
        rounds.tick(coord)
        mark(request, dev.id, "/v1/rounds/{id}", "request", "round_status")
        st = rounds.status(coord, round_id)
        return {k: st[k] for k in ("round_id", "status", "stage", "reason", "result_version")}

    @r.get("/v1/rounds/{round_id}/inbox", responses=ERRORS)
    def inbox(
        round_id: int, request: Request, dev: authed, stage: Annotated[str, Query()]
    ) -> Response:
        msg = rounds.inbox(coord, round_id, dev.id, stage)
        mark(request, dev.id, "/v1/rounds/{id}/inbox", "request", "secagg")
        if msg is None:
            return Response(status_code=204)
        return Response(msg, media_type="application/octet-stream")

    @r.post("/v1/rounds/{round_id}/{stage}", status_code=202, responses=ERRORS)
    async def upload(round_id: int, stage: str, request: Request, dev: authed) -> dict:
        body = await request.body()
        after = await anyio.to_thread.run_sync(rounds.submit, coord, round_id, dev.id, stage, body)
        mark(request, dev.id, "/v1/rounds/{id}/{stage}", _kind_in(stage), "ack")
        return {"accepted": True, "round_id": round_id, "stage": after}

    return r


def admin_router(coord: Coordinator, token: str) -> APIRouter:
    """The operator's routes, behind `Authorization: Bearer <operator token>`."""
    r = APIRouter()
    bearer = HTTPBearer(auto_error=False, description="the operator token (data dir)")

    def operator(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if creds is None:
            raise ApiError(401, "unauthorized", "missing 'Authorization: Bearer <operator token>'")
        if not admin.check(token, creds.credentials):
            raise ApiError(403, "forbidden", "wrong operator token")

    guarded = [Depends(operator)]
    errs = api_errors.responses(400, 401, 403, 409)

    @r.get("/v1/admin/rounds", dependencies=guarded, responses=errs)
    def overview() -> dict:
        return scheduler.overview(coord)

    @r.post("/v1/admin/rounds", status_code=201, dependencies=guarded, responses=errs)
    def open_now() -> dict:
        rid = scheduler.open_now(coord)
        log.info("operator opened round %d", rid)
        return rounds.status(coord, rid)

    return r


class RoundSizeLimit:
    """The request limit and accounting of `LimitAndAccount`, with round uploads limited by
    their round's `max_message_bytes` instead of the global limit."""

    def __init__(self, app, coord: Coordinator, max_bytes: int, sink) -> None:
        self.app, self.coord, self.sink = app, coord, sink
        self.default = LimitAndAccount(app, max_bytes, sink)
        self._limits: dict[int, int] = {}  # round id -> its limit (params never change)

    async def _limit(self, round_id: int) -> int | None:
        if round_id not in self._limits:
            try:
                n = await anyio.to_thread.run_sync(rounds.max_message_bytes, self.coord, round_id)
            except CoordinatorError:
                return None  # unknown round: the global limit, then the handler's 404
            self._limits[round_id] = n
        return self._limits[round_id]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            m = _UPLOAD.match(scope["path"])
            if m:
                limit = await self._limit(int(m.group(1)))
                if limit is not None:
                    inner = LimitAndAccount(self.app, limit, self.sink)
                    await inner(scope, receive, send)
                    return
        await self.default(scope, receive, send)


async def tick_forever(coord: Coordinator, interval_s: float) -> None:
    """Close timed-out stages every `interval_s`, so a round whose devices all went silent
    ends on time even when nobody asks about it, and open the rounds the schedule says are
    due (`coordinator.scheduler`); the app runs this for its lifetime."""
    while True:
        await anyio.sleep(interval_s)
        try:
            await anyio.to_thread.run_sync(rounds.tick, coord)
            await anyio.to_thread.run_sync(traffic.flush, coord.db)
            rid = await anyio.to_thread.run_sync(scheduler.schedule, coord)
            if rid is not None:
                log.info("opened round %d (%s)", rid, coord.config.round_mode)
        except Exception:  # keep ticking: one failed tick must not stop the round clock
            log.exception("closing timed-out round stages or opening a round failed")
