"""Error types shared by every process. The HTTP layer maps them to status codes in one place."""

from __future__ import annotations


class MiniSGLError(Exception):
    """Base class for errors that carry a user-facing message."""

    http_status = 500
    error_type = "internal_error"


class InvalidRequest(MiniSGLError, ValueError):
    """The request is malformed or has out-of-range values."""

    http_status = 400
    error_type = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ContextTooLong(InvalidRequest):
    """Prompt (plus requested output) does not fit the model's context window."""

    def __init__(self, message: str, param: str | None = "messages") -> None:
        super().__init__(message, param)


class ModelNotFound(MiniSGLError):
    http_status = 404
    error_type = "not_found_error"


class Conflict(MiniSGLError):
    """The server's state does not allow it now (e.g. a cache flush while requests run)."""

    http_status = 409
    error_type = "conflict_error"


class ServiceUnavailable(MiniSGLError):
    """The server is draining or not yet ready."""

    http_status = 503
    error_type = "service_unavailable"
