"""Maps typed service errors, validation errors and unknown failures to one error envelope.

The body is the superset the spec recommends (§2.5): ``{"error": {"message", "type", "param", "code"}}``
— what the ``openai`` client reads — so ``openai.NotFoundError`` and friends are raised client-side.
Unknown exceptions are logged with the request id and answered 500 without internals.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunery.api.edge import param_name
from tunery.domain.errors import (
    Conflict,
    Forbidden,
    InsufficientStorage,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    ServiceError,
    Unauthorized,
    Unavailable,
)
from tunery.storage.disk import disk_full, is_disk_full

log = logging.getLogger(__name__)

# Most specific first: the first matching class wins.
STATUS_BY_ERROR: tuple[tuple[type[ServiceError], int], ...] = (
    (NotFound, 404),
    (Conflict, 409),
    (PayloadTooLarge, 413),
    (QuotaExceeded, 429),
    (InvalidRequest, 400),
    (Unauthorized, 401),
    (Forbidden, 403),
    (Unavailable, 503),
    (InsufficientStorage, 507),
)
HTTP_CODES = {404: "notFound", 405: "methodNotAllowed", 413: "fileTooLarge", 401: "401"}


def error_body(message: str, *, type_: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def status_for(exc: ServiceError) -> int:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return 500


def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    status = status_for(exc)
    # A quota frees only when the user deletes something: no retry-after, so clients do not retry in vain.
    headers = {"retry-after": "5"} if status == 503 else None
    if status == 401:
        headers = {"www-authenticate": "Bearer"}
    return JSONResponse(
        error_body(exc.message, type_=exc.type, param=exc.param, code=exc.code), status, headers=headers
    )


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    location = [part for part in first.get("loc", ()) if part not in ("body", "query", "path", "header")]
    param = param_name(location) or None
    if first.get("type") == "json_invalid":
        param = None  # the location is a character offset, not a param
    reason = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    message = f"Invalid value for '{param}': {reason}." if param else f"Invalid request: {reason}."
    if first.get("type") == "missing" and param:
        message = f"Missing required parameter: '{param}'."
    elif first.get("type") == "json_invalid":
        message = "The request body is not valid JSON."
    return JSONResponse(error_body(message, type_="invalid_request_error", param=param, code="invalidPayload"), 400)


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"Resource not found: {request.method} {request.url.path}"
    return JSONResponse(
        error_body(message, type_="invalid_request_error", param=None, code=HTTP_CODES.get(exc.status_code)),
        exc.status_code,
        headers=getattr(exc, "headers", None),
    )


def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    request_id = getattr(request.state, "request_id", "?")
    if is_disk_full(exc):  # wherever it surfaced: a clear 507, never internals
        log.error("request %s: the disk is full (%s)", request_id, exc)
        return _service_error(request, disk_full("this request"))
    log.exception("unhandled error in request %s", request_id)
    return JSONResponse(
        error_body(
            f"The server had an error while processing your request (request id {request_id}).",
            type_="server_error",
            param=None,
            code="internalFailure",
        ),
        500,
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
