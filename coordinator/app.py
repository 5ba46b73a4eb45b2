"""The HTTP API (FastAPI): thin handlers over `coordinator.service.Coordinator`.

Every device endpoint needs `Authorization: Bearer <token>` and is rate limited per device.
Errors are JSON `{"error": "...", "detail": "..."}`. Request bodies are never logged; the
typed text of cloud-mode predictions is used and dropped (only its size is recorded).
"""

import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Annotated

import anyio
from fastapi import Depends, FastAPI, Path, Request
from fastapi.responses import FileResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from coordinator import admin, api_errors, devices, round_api, schemas, traffic
from coordinator.api_errors import ApiError
from coordinator.config import CoordinatorConfig
from coordinator.ratelimit import TokenBucketLimiter
from coordinator.service import Coordinator

__all__ = ["create_app"]

log = logging.getLogger(__name__)

# Every authenticated endpoint may answer these (bad token, unknown id, limits, bad input).
DEVICE_ERRORS = api_errors.responses(400, 401, 404, 413, 422, 429)


def create_app(
    config: CoordinatorConfig,
    coordinator: Coordinator | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The API over `coordinator` (opened from `config` if not given, and then closed with
    the app). `clock` drives the rate limiter (tests pass a fake one)."""
    coord = coordinator or Coordinator.open(config)
    limiter = TokenBucketLimiter(config.rate_per_second, config.rate_burst, clock)
    bearer = HTTPBearer(auto_error=False, description="token from POST /v1/devices")

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        async with anyio.create_task_group() as tasks:
            if config.round_tick_s > 0:
                tasks.start_soon(round_api.tick_forever, coord, config.round_tick_s)
            yield
            tasks.cancel_scope.cancel()
        traffic.flush(coord.db)
        if coordinator is None:
            coord.close()

    app = FastAPI(title="Sotto coordinator", version="1", lifespan=lifespan)
    app.state.coordinator = coord
    api_errors.install(app)

    def device(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> devices.DeviceInfo:
        if creds is None:
            raise ApiError(401, "unauthorized", "missing 'Authorization: Bearer <token>'")
        found = devices.authenticate(coord.db, creds.credentials)
        if found is None:
            raise ApiError(401, "unauthorized", "unknown token")
        if not limiter.allow(found.id):
            wait = limiter.retry_after(found.id)
            raise ApiError(
                429,
                "rate_limited",
                f"more than {config.rate_burst} requests at {config.rate_per_second}/s",
                {"Retry-After": str(max(1, round(wait)))},
            )
        return found

    authed = Annotated[devices.DeviceInfo, Depends(device)]

    def mark(request: Request, device_id: str, endpoint: str, kind_in: str, kind_out: str):
        request.state.traffic = (device_id, endpoint, kind_in, kind_out)

    @app.post(
        "/v1/devices",
        status_code=201,
        response_model=schemas.EnrolResponse,
        responses=api_errors.responses(400, 409, 413, 422),
    )
    def enrol(body: schemas.EnrolRequest, request: Request):
        token = devices.enrol(coord.db, body.device_id, body.key_bytes(), body.mode)
        log.info("enrolled device %s (%s)", body.device_id, body.mode)
        mark(request, body.device_id, "/v1/devices", "enrolment", "enrolment")
        return schemas.EnrolResponse(device_id=body.device_id, token=token, mode=body.mode)

    @app.post("/v1/checkin", response_model=schemas.CheckinResponse, responses=DEVICE_ERRORS)
    def checkin(
        body: schemas.CheckinRequest,
        request: Request,
        dev: authed,
    ):
        current = coord.registry.current()
        if current is None:
            raise ApiError(404, "not_found", "no global model registered yet")
        devices.checkin(coord.db, dev.id, body.version)
        mark(request, dev.id, "/v1/checkin", "checkin", "checkin")
        return schemas.CheckinResponse(
            version=current.id,
            parent=current.parent,
            base=schemas.Download(
                sha256=current.base.sha256,
                size=current.base.size,
                url=f"/v1/models/{current.base.sha256}",
                download=body.base_sha256 != current.base.sha256,
            ),
            device_part=schemas.Download(
                sha256=current.device_part.sha256,
                size=current.device_part.size,
                url=f"/v1/versions/{current.id}/device_part",
                download=body.version != current.id,
            ),
            training=schemas.Training(
                eligible=dev.mode == "on_device",
                learning_rate=config.train_learning_rate,
                steps=config.train_steps,
            ),
        )

    @app.get("/v1/models/{sha256}", response_class=FileResponse, responses=DEVICE_ERRORS)
    def model_file(
        sha256: Annotated[str, Path(pattern=schemas.SHA256_PATTERN)],
        request: Request,
        dev: authed,
    ):
        path = coord.registry.file_path(sha256)
        mark(request, dev.id, "/v1/models/{sha256}", "request", "model_download")
        return FileResponse(path, media_type="application/octet-stream")

    @app.get("/v1/versions/{version_id}/device_part", responses=DEVICE_ERRORS)
    def device_part(version_id: int, request: Request, dev: authed) -> Response:
        payload = coord.registry.device_part_bytes(version_id)
        mark(request, dev.id, "/v1/versions/{id}/device_part", "request", "device_part")
        return Response(payload, media_type="application/octet-stream")

    @app.post("/v1/mode", responses=api_errors.responses(400, 401, 413, 422, 429))
    def set_mode(body: schemas.ModeRequest, request: Request, dev: authed) -> dict:
        devices.set_mode(coord.db, dev.id, body.mode)
        mark(request, dev.id, "/v1/mode", "request", "checkin")
        log.info("device %s switched to %s", dev.id, body.mode)
        return {"device_id": dev.id, "mode": body.mode}

    @app.post(
        "/v1/predict",
        response_model=schemas.PredictResponse,
        responses=api_errors.responses(400, 401, 403, 413, 422, 429),
    )
    def predict(
        body: schemas.PredictRequest,
        request: Request,
        dev: authed,
    ):
        if dev.mode != "cloud":
            raise ApiError(403, "wrong_mode", "device processes on device; predict is cloud only")
        if len(body.text) > config.max_predict_chars:
            raise ApiError(
                422, "invalid_request", f"text longer than {config.max_predict_chars} characters"
            )
        version, words = coord.predictor.suggest(body.text)
        traffic.record_raw_text(coord.db, dev.id, len(body.text.encode("utf-8")))
        mark(request, dev.id, "/v1/predict", "raw_text", "suggestions")
        return schemas.PredictResponse(version=version, suggestions=words)

    @app.get("/v1/health", response_model=schemas.HealthResponse)
    def health():
        current = coord.registry.current()
        return schemas.HealthResponse(
            status="ok", database=coord.db.dialect, current_version=current and current.id
        )

    @app.get("/v1/stats", response_model=schemas.StatsResponse)
    def stats():
        versions = coord.registry.versions()
        return schemas.StatsResponse(
            devices=devices.count_by_mode(coord.db),
            current_version=versions[-1].id if versions else None,
            versions=[
                schemas.VersionSummary(
                    id=v.id,
                    parent=v.parent,
                    created_at=v.created_at.isoformat(),
                    base_sha256=v.base.sha256,
                    base_size=v.base.size,
                    device_part_size=v.device_part.size,
                    metrics=v.metrics,
                )
                for v in versions
            ],
            raw_text=traffic.raw_text_totals(coord.db),
            traffic=traffic.totals(coord.db),
        )

    app.include_router(round_api.router(coord, device, mark))
    # Operator routes: the token lives in the data dir (0600), made on first start.
    app.include_router(round_api.admin_router(coord, admin.ensure_token(config.data_dir)))

    def sink(device_id, endpoint, rows):
        traffic.record_later(coord.db, device_id, endpoint, rows)

    # The global request limit, except round uploads: those get their round's own limit.
    app.add_middleware(
        round_api.RoundSizeLimit, coord=coord, max_bytes=config.max_request_bytes, sink=sink
    )
    return app
