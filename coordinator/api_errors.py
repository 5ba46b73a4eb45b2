"""HTTP error mapping: every error is JSON `{"error": "<short name>", "detail": "<why>"}`.

Domain errors (`coordinator.errors`) become 400/404/409; validation errors 400 (malformed
JSON) or 422 (wrong fields or types), naming the field but never echoing the rejected input,
which may be typed text.
"""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from coordinator import schemas
from coordinator.errors import Conflict, CoordinatorError, Forbidden, Invalid, NotFound

__all__ = ["ApiError", "install", "responses"]

log = logging.getLogger(__name__)

_STATUS = {NotFound: 404, Conflict: 409, Invalid: 400, Forbidden: 403}
_HTTP_NAMES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


def _json_error(status: int, error: str, detail: str, headers: dict | None = None):
    return JSONResponse({"error": error, "detail": detail}, status, headers=headers)


def _validation_detail(exc: RequestValidationError) -> tuple[int, str, str]:
    errs = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errs):
        return 400, "malformed_json", "request body is not valid JSON"
    # loc and message only: the rejected input itself may be typed text and is never echoed.
    parts = [".".join(str(p) for p in e.get("loc", ())) + ": " + e.get("msg", "") for e in errs]
    return 422, "invalid_request", "; ".join(parts)


def responses(*codes: int) -> dict:
    """OpenAPI `responses=` entry declaring the JSON error body for these status codes."""
    return {c: {"model": schemas.ErrorResponse} for c in codes}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_req: Request, exc: ApiError):
        return _json_error(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(CoordinatorError)
    async def _domain(_req: Request, exc: CoordinatorError):
        return _json_error(_STATUS.get(type(exc), 400), exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, exc: RequestValidationError):
        return _json_error(*_validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException):
        name = _HTTP_NAMES.get(exc.status_code, "http_error")
        return _json_error(exc.status_code, name, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def _crash(req: Request, exc: Exception):
        # Method and path only (a traceback names code, never the request body).
        log.error("%s %s failed", req.method, req.url.path, exc_info=exc)
        return _json_error(500, "internal_error", "the coordinator failed; see its log")
