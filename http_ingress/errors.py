"""The one place errors become HTTP responses: RFC 9457 problem+json bodies."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

import falcon
import falcon.asgi

from service.domain.errors import (
    AllowlistUnavailableError,
    BodyTimeoutError,
    InvalidCallbackError,
    MalformedJsonError,
    PayloadTooLargeError,
    RouteeCallbacksError,
    SourceNotAllowedError,
    UnavailableError,
    UnsupportedMediaError,
)

_LOGGER = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

_STATUSES: dict[type[RouteeCallbacksError], HTTPStatus] = {
    SourceNotAllowedError: HTTPStatus.FORBIDDEN,
    MalformedJsonError: HTTPStatus.BAD_REQUEST,
    PayloadTooLargeError: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    UnsupportedMediaError: HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
    BodyTimeoutError: HTTPStatus.REQUEST_TIMEOUT,
    InvalidCallbackError: HTTPStatus.UNPROCESSABLE_ENTITY,
    UnavailableError: HTTPStatus.SERVICE_UNAVAILABLE,
}


def http_status(error: RouteeCallbacksError) -> HTTPStatus:
    """Map an error of the tree to its HTTP status; anything unforeseen means "cannot keep it now"."""
    for kind, status in _STATUSES.items():
        if isinstance(error, kind):
            return status
    return HTTPStatus.SERVICE_UNAVAILABLE


def problem(status: HTTPStatus, detail: str, **extensions: Any) -> str:
    """Render a problem+json body."""
    return json.dumps(
        {"type": "about:blank", "title": status.phrase, "status": status.value, "detail": detail, **extensions}
    )


def _respond(resp: falcon.asgi.Response, status: HTTPStatus, body: str) -> None:
    resp.status = status.value
    resp.content_type = PROBLEM_JSON
    resp.text = body


async def handle_error(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, error: RouteeCallbacksError, params: dict[str, Any]
) -> None:
    """Answer an error of the tree with its status and a short problem+json body."""
    status = http_status(error)
    extensions: dict[str, Any] = {"reason": error.reason}
    if isinstance(error, InvalidCallbackError) and error.field:
        extensions["field"] = error.field
    if isinstance(error, AllowlistUnavailableError | UnavailableError):
        resp.set_header("Retry-After", "30")
    if isinstance(error, BodyTimeoutError | PayloadTooLargeError):
        resp.set_header("Connection", "close")  # What is left of the body must not be read as the next request.
    _respond(resp, status, problem(status, str(error), **extensions))


async def handle_unexpected(
    req: falcon.asgi.Request, resp: falcon.asgi.Response, error: Exception, params: dict[str, Any]
) -> None:
    """Answer a bug with 503 (Routee retries; a 200 would lose the callback) and log it with its traceback."""
    _LOGGER.error("unexpected error on %s %s", req.method, req.path, exc_info=error)
    status = HTTPStatus.SERVICE_UNAVAILABLE
    _respond(resp, status, problem(status, "an internal error occurred; try again later", reason="internal_error"))


def serialize_http_error(req: falcon.Request, resp: falcon.Response, error: falcon.HTTPError) -> None:
    """Render Falcon's own errors (404, 405, ...) as problem+json too."""
    status = HTTPStatus(error.status_code)
    detail = error.description or f"{req.method} {req.path}: {status.phrase}"
    _respond(resp, status, problem(status, detail))  # type: ignore[arg-type]
