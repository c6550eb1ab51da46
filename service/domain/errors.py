"""The one exception tree of routee-callbacks.

::

    RouteeCallbacksError
    ├── ConfigError               a bad option value          → exit status 2
    ├── StartupError              start-up failed at run time → exit status 1
    ├── RejectedError             the request is wrong; retrying it cannot help
    │   ├── SourceNotAllowedError     HTTP 403
    │   ├── MalformedJsonError        HTTP 400
    │   ├── PayloadTooLargeError      HTTP 413
    │   ├── UnsupportedMediaError     HTTP 415
    │   ├── BodyTimeoutError          HTTP 408
    │   ├── InvalidCallbackError      HTTP 422
    │   ├── InvalidArgumentError      gRPC INVALID_ARGUMENT
    │   ├── NotFoundError             gRPC NOT_FOUND
    │   └── OutOfRangeError           gRPC OUT_OF_RANGE
    ├── ResourceExhaustedError    a limit is reached; retry later   gRPC RESOURCE_EXHAUSTED
    └── UnavailableError          the service cannot do it now; retry later
        ├── StoreUnavailableError     HTTP 503, gRPC UNAVAILABLE
        ├── AllowlistUnavailableError HTTP 503
        └── ShuttingDownError         gRPC UNAVAILABLE

``http_ingress.errors`` maps the tree to HTTP statuses and ``service.api.servicer``
maps it to gRPC status codes; nothing else does.
"""

from __future__ import annotations


class RouteeCallbacksError(Exception):
    """Base of every error this service raises on purpose."""

    #: A short, stable name of the problem, used in problem+json bodies, metrics and between processes.
    reason = "error"


class ConfigError(RouteeCallbacksError):
    """An option has a bad value; start-up stops with exit status 2."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option


class StartupError(RouteeCallbacksError):
    """Start-up failed at run time (port in use, database unusable); exit status 1."""


class RejectedError(RouteeCallbacksError):
    """The request is wrong and sending it again unchanged cannot succeed."""

    reason = "rejected"


class SourceNotAllowedError(RejectedError):
    """The client address is not one of Routee's."""

    reason = "source_not_allowed"


class MalformedJsonError(RejectedError):
    """The body is not valid JSON."""

    reason = "malformed_json"


class PayloadTooLargeError(RejectedError):
    """The body is longer than the ingress accepts."""

    reason = "payload_too_large"


class UnsupportedMediaError(RejectedError):
    """The body is not declared as ``application/json``."""

    reason = "unsupported_media_type"


class BodyTimeoutError(RejectedError):
    """The request body did not arrive in time (a slow or stalled sender)."""

    reason = "body_timeout"


class InvalidCallbackError(RejectedError):
    """The body is JSON but not a Viber status callback."""

    reason = "invalid_callback"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.detail = message


class InvalidArgumentError(RejectedError):
    """A gRPC request has a bad field."""

    reason = "invalid_argument"


class NotFoundError(RejectedError):
    """The requested message is not known."""

    reason = "not_found"


class OutOfRangeError(RejectedError):
    """A resume point lies outside what is stored."""

    reason = "out_of_range"


class UnavailableError(RouteeCallbacksError):
    """The service cannot do this right now; the caller should retry later."""

    reason = "unavailable"


class StoreUnavailableError(UnavailableError):
    """The store cannot read or write right now."""

    reason = "store_unavailable"


class AllowlistUnavailableError(UnavailableError):
    """The DNS allowlist has not been resolved yet, or its last answer is too old."""

    reason = "allowlist_unavailable"


class ShuttingDownError(UnavailableError):
    """The service is shutting down; the caller should retry or resume elsewhere."""

    reason = "shutting_down"


class TrackingApiUnavailableError(UnavailableError):
    """Routee's tracking API did not answer usefully (down, too busy, after the retries it was worth)."""

    reason = "tracking_api_unavailable"


class CredentialsRejectedError(RouteeCallbacksError):
    """Routee refused the application id and secret: nothing will work until an operator fixes them."""

    reason = "credentials_rejected"


class ResourceExhaustedError(RouteeCallbacksError):
    """A limit of the service is reached (for example the number of open streams)."""

    reason = "resource_exhausted"


def error_from_reason(reason: str, message: str, field: str = "") -> RouteeCallbacksError:
    """Rebuild an error of the tree from its ``reason`` (errors cross process boundaries this way).

    An unknown reason becomes a StoreUnavailableError: when in doubt, Routee must retry.
    """
    if reason == InvalidCallbackError.reason:
        return InvalidCallbackError(field, message)
    for kind in _WIRE_ERRORS:
        if kind.reason == reason:
            return kind(message)
    return StoreUnavailableError(message)


_WIRE_ERRORS: tuple[type[RouteeCallbacksError], ...] = (
    MalformedJsonError,
    PayloadTooLargeError,
    UnsupportedMediaError,
    StoreUnavailableError,
    ShuttingDownError,
)
