"""Typed errors the caller can act on; mapped once to HTTP at the API edge.

No HTTP in here: each class names its OpenAI error ``type`` and a default ``code``; the API maps the
class to a status code (``api/errors.py``). The message is shown to users as-is, so it must say what is
wrong and, where possible, what to do.
"""

from __future__ import annotations

from typing import ClassVar


class ServiceError(Exception):
    """Base for errors the caller can act on; the message is shown to users as-is."""

    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code


class InvalidRequest(ServiceError):
    """The request is malformed or names values out of range (HTTP 400)."""

    type = "invalid_request_error"
    default_code = "invalidPayload"


class NotFound(InvalidRequest):
    """The named object does not exist in the caller's project (HTTP 404)."""

    default_code = "notFound"


class Conflict(InvalidRequest):
    """The action is not allowed in the object's current state (HTTP 409)."""

    default_code = "conflict"


class PayloadTooLarge(InvalidRequest):
    """An upload is larger than the configured limit (HTTP 413)."""

    default_code = "fileTooLarge"


class QuotaExceeded(InvalidRequest):
    """A configured per-project limit would be exceeded (HTTP 429)."""

    default_code = "quotaExceeded"


class Unauthorized(ServiceError):
    """No API key, or one that is not valid (HTTP 401)."""

    type = "invalid_request_error"
    default_code = "401"


class Forbidden(ServiceError):
    """The key is valid but its role may not do this (HTTP 403)."""

    type = "permission_error"
    default_code = "forbidden"


class Unavailable(ServiceError):
    """A dependency is temporarily unavailable; retrying later may work (HTTP 503)."""

    type = "server_error"
    default_code = "serviceUnavailable"


class InsufficientStorage(ServiceError):
    """The server's disk (or database) is full; deleting files or models frees space (HTTP 507)."""

    type = "server_error"
    default_code = "insufficientStorage"
