"""Every error as ``{"error": {"code", "message"}}`` with a stable code and one-line message."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from buildfarm.accounts import AuthError, ForbiddenError
from buildfarm.model.errors import (
    BuildfarmError,
    ConflictError,
    ManifestError,
    NameError_,
    NotFoundError,
    PlanError,
    TemporaryError,
)

log = logging.getLogger(__name__)

HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class TooLargeError(BuildfarmError):
    """An upload over the configured limit (413)."""


class BadSourceError(BuildfarmError):
    """An uploaded source tarball that is not what it claims or not safe to unpack (400)."""


class RateLimitedError(TemporaryError):
    """Too many requests from one token, or too many running builds of one user (429)."""

    def __init__(self, message: str, retry_after: float, code: str = "rate_limited") -> None:
        super().__init__(message, retry_after)
        self.code = code


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody} for status in (400, 401, 403, 404, 409, 413, 422, 429, 503)
}


def _classify(exc: BuildfarmError) -> tuple[int, str]:
    if isinstance(exc, RateLimitedError):
        return 429, exc.code
    table: list[tuple[type[BuildfarmError], int, str]] = [
        (AuthError, 401, "unauthenticated"),
        (ForbiddenError, 403, "forbidden"),
        (NotFoundError, 404, "not_found"),
        (ConflictError, 409, "conflict"),
        (TooLargeError, 413, "too_large"),
        (BadSourceError, 400, "bad_source"),
        (ManifestError, 400, "bad_manifest"),
        (PlanError, 400, "bad_manifest"),
        (NameError_, 400, "bad_request"),
        (TemporaryError, 503, "unavailable"),
    ]
    for kind, status, code in table:
        if isinstance(exc, kind):
            return status, code
    return 400, "bad_request"


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": " ".join(message.split())}}
    return JSONResponse(body, status_code=status, headers=headers)


def farm_error_response(exc: BuildfarmError) -> JSONResponse:
    """The answer to one of the farm's own errors: its status, code and message."""
    status, code = _classify(exc)
    headers = None
    if isinstance(exc, TemporaryError):
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return error_response(status, code, str(exc), headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(BuildfarmError)
    async def _farm_error(_request: Request, exc: BuildfarmError) -> JSONResponse:
        return farm_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")  # a model's own check
        return error_response(422, "invalid", f"{where}: {message}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette's Allow names the methods of the first route matching the path only.
            headers["Allow"] = allowed_methods(request)
        return error_response(exc.status_code, code, str(exc.detail), headers)

    @app.exception_handler(DataError)
    async def _data(_request: Request, exc: DataError) -> JSONResponse:
        # a value the database cannot hold (e.g. a NUL byte) that slipped past the name checks
        return error_response(400, "bad_request", f"a value cannot be stored or searched: {exc.orig}")

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, "internal", f"internal error ({type(exc).__name__}); see the API's log")


def allowed_methods(request: Request) -> str:
    """Every method some route of the app takes at the request's path (a 405's ``Allow``)."""
    # Asked route by route for each method: a router included in the app is one route of it that
    # answers for the routes inside, so only ``matches`` sees every route wherever it was declared.
    routes = request.app.router.routes
    methods = [
        method
        for method in HTTP_METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]
    return ", ".join(sorted(methods))
