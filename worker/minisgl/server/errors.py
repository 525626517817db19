"""The one place where errors become HTTP responses: OpenAI error objects with a 4xx status.

`{"error": {"message", "type", "param", "code"}}` — the shape the openai SDK parses, so a client
sees `openai.BadRequestError` with our message rather than a generic failure.
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from minisgl.errors import InvalidRequest, MiniSGLError

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
M = TypeVar("M", bound=BaseModel)
# Pydantic puts union members' type names (str, list[int], TextPart, ...) into error paths.
_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|[a-z-]+\[.*\]|function-.*|[A-Z]\w*)$")


class PayloadTooLarge(MiniSGLError):
    http_status = 413
    error_type = "invalid_request_error"


class Unauthorized(MiniSGLError):
    http_status = 401
    error_type = "invalid_request_error"


def error_body(message: str, error_type: str, param: str | None = None,
               code: str | int | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def error_response(exc: Exception) -> JSONResponse:
    """Map any exception to an OpenAI error response; unknown exceptions are 500 and logged."""
    if isinstance(exc, ValidationError):
        return JSONResponse(validation_error_body(exc), status_code=400)
    if isinstance(exc, MiniSGLError):
        code = "invalid_api_key" if isinstance(exc, Unauthorized) else getattr(exc, "code", exc.http_status)
        body = error_body(str(exc), exc.error_type, getattr(exc, "param", None), code)
        seconds = getattr(exc, "retry_after_s", None)  # 429 / 503: when to come back
        headers = None if seconds is None else {"Retry-After": str(max(1, math.ceil(seconds)))}
        return JSONResponse(body, status_code=exc.http_status, headers=headers)
    logger.exception("internal error while serving a request")
    return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "internal_error",
                                   code=500), status_code=500)


def validation_error_body(exc: ValidationError) -> dict:
    """One readable message for the first problem, naming the field the way the client wrote it."""
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"]]
    # Union members add their type name to the path (e.g. prompt.str); keep the client's path.
    param = ".".join(p for p in loc if not _TYPE_TAG.match(p))
    message = f"{param}: {err['msg']}" if param else err["msg"]
    return error_body(message, "invalid_request_error", param or None, 400)


def _no_constant(name: str) -> None:
    # Python's json accepts NaN / Infinity, which JSON does not; they would slip past range checks.
    raise InvalidRequest(f"request body is not valid JSON: {name} is not a JSON value")


async def read_json(request: Request, model: type[M], max_bytes: int) -> M:
    """Read, decode and validate a JSON body, raising errors that error_response maps to 4xx."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the {max_bytes}-byte limit")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"request body exceeds the {max_bytes}-byte limit")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRequest(f"request body is not valid UTF-8 (byte {e.start})", param=None) from e
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise InvalidRequest(f"request body is not valid JSON: {e.msg} at position {e.pos}") from e
    except RecursionError as e:
        raise InvalidRequest("request body is nested too deeply") from e
    if not isinstance(obj, dict):
        raise InvalidRequest("request body must be a JSON object")
    if "\\ud" in text.lower():  # \uXXXX escapes may spell a lone surrogate: not encodable text
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidRequest("request body contains an unpaired UTF-16 surrogate") from e
    return model.model_validate(obj)


def install_error_handlers(app: FastAPI) -> None:
    """Make 404/405 from routing and anything a handler raises come back as OpenAI errors."""

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), error_type, code=exc.status_code),
                            status_code=exc.status_code)

    @app.exception_handler(MiniSGLError)
    async def _minisgl(_: Request, exc: MiniSGLError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(ValidationError)
    async def _validation(_: Request, exc: ValidationError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)
