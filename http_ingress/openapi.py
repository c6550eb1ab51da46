"""The OpenAPI 3.1 document of the ingress, served at ``GET /openapi.json``.

The body schemas are pydantic's own JSON Schema of what it validates, so the document cannot drift from what is
validated.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import falcon.asgi
from pydantic import TypeAdapter

from service.routee.callbacks import InboundMessage, ViberCallback
from service.routee.sms import SmsCallback, SmsInbound

_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_PROBLEMS = {
    HTTPStatus.BAD_REQUEST: "The body is not JSON.",
    HTTPStatus.FORBIDDEN: "The sender is not one of Routee's addresses.",
    HTTPStatus.REQUEST_TIMEOUT: "The body did not arrive within --body-timeout; the connection is closed.",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "The body is longer than 64 KiB.",
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE: "The Content-Type is not application/json.",
    HTTPStatus.UNPROCESSABLE_ENTITY: "The body is JSON but cannot be identified; `field` names the first problem.",
    HTTPStatus.SERVICE_UNAVAILABLE: "The callback could not be kept now (store, allowlist); Routee retries.",
}


def _problem_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/problem+json": {"schema": _PROBLEM_REF}}}


def _json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _post(operation: str, summary: str, schema: str) -> dict[str, Any]:
    return {
        "post": {
            "operationId": operation,
            "summary": summary,
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
            },
            "responses": {
                "200": _json_response(
                    "Stored (accepted) or already stored (duplicate).", {"$ref": "#/components/schemas/Outcome"}
                ),
                **{str(status.value): _problem_response(text) for status, text in _PROBLEMS.items()},
            },
        }
    }


_OUTCOME: dict[str, Any] = {
    "type": "object",
    "required": ["status"],
    "properties": {
        "status": {"enum": ["accepted", "duplicate"]},
        "sequence": {"type": "integer", "minimum": 1, "description": "The stored event's sequence (accepted)."},
    },
}
_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "reason": {"type": "string", "description": "A short, stable name of the problem."},
        "field": {"type": "string", "description": "The offending field (422)."},
    },
}
_PROBE = {"type": "object"}
_MONITORING_PATHS = {
    "/healthz": {"get": {"operationId": "health", "responses": {"200": _json_response("The process is up.", _PROBE)}}},
    "/readyz": {
        "get": {
            "operationId": "ready",
            "responses": {
                "200": _json_response("Ready to keep callbacks.", _PROBE),
                "503": _json_response("Not ready; `checks` says which check fails.", _PROBE),
            },
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "responses": {
                "200": {
                    "description": "Prometheus text format.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    },
}


def _schemas() -> dict[str, Any]:
    """The bodies' schemas, from the models that validate them, with the answers'."""
    schemas: dict[str, Any] = {}
    for body in (ViberCallback, InboundMessage, SmsCallback, SmsInbound):
        schema = TypeAdapter(body).json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[body.__name__] = schema
    return {**schemas, "Outcome": _OUTCOME, "Problem": _PROBLEM_SCHEMA}


def document() -> dict[str, Any]:
    """Build the OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "routee-callbacks ingress",
            "version": "1",
            "description": "Receives Routee's Viber delivery-status callbacks and inbound messages (replies), and"
            " its SMS delivery reports and inbound SMS. Only Routee's addresses may post.",
        },
        "paths": {
            "/v1/callbacks/viber": _post(
                "postViberCallback",
                "Keep one Routee Viber status callback (the campaign's `callbackUrl`); 200 only once it is durably"
                " stored.",
                "ViberCallback",
            ),
            "/v1/callbacks/viber/inbound": _post(
                "postViberInbound",
                "Keep one inbound Viber message, a reply (the campaign's `inboundUrl`); 200 only once it is durably"
                " stored. It has no id: the same content again is a duplicate.",
                "InboundMessage",
            ),
            "/v1/callbacks/sms": _post(
                "postSmsReport",
                "Keep one Routee SMS delivery report, of one part (the `callback.url` of an SMS send, or the"
                " application's); 200 only once it is durably stored. A report without `part` is part 1 of 1.",
                "SmsCallback",
            ),
            "/v1/callbacks/sms/inbound": _post(
                "postSmsInbound",
                "Keep one inbound SMS (the number's `inboundSmsCallbackUrl`); 200 only once it is durably stored. The"
                " same `messageId` again is a duplicate.",
                "SmsInbound",
            ),
            **_MONITORING_PATHS,
        },
        "components": {"schemas": _schemas()},
    }


class OpenApiResource:
    """``GET /openapi.json``."""

    def __init__(self) -> None:
        self._document = document()

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Answer the document."""
        resp.media = self._document
