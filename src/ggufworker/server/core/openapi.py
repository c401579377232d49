"""What ``/openapi.json`` says: every route's real statuses, content types and error bodies.

A route declares what it can answer itself with ``responses=``, built from the shared table::

    @router.post("/v1/thing", responses=openai_errors(400, 404, 503) | event_stream_ok())

:func:`install_openapi` then adds to every operation what the middleware and the exception
handlers answer for any route, unless the route declared that status itself:

- 400 (OpenAI envelope) where a body or parameters are validated; FastAPI's 422 is dropped,
  the server never sends it (validation errors are 400);
- 401 on every route but the public ones (API keys, when configured);
- 413 on methods with a body (the body-size limit);
- 500 everywhere.

A route that returns a text response class (``-> PlainTextResponse``) is documented with that
media type instead of FastAPI's default JSON.

Routes with their own error shape (Ollama's ``{"error": "..."}``) declare their statuses on
their router; the additions above keep the OpenAI envelope because the middleware and the
app-level handlers produce it, except under ``/v1/messages``, where they answer (and the
additions document) Anthropic's ``{"type": "error", "error": {"type", "message"}}``.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.datastructures import DefaultPlaceholder
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from ggufworker.server.core.auth import is_public
from ggufworker.server.core.sse import is_anthropic_path

Responses = dict[int | str, dict[str, Any]]

ERROR_SCHEMA = "OpenAIErrorResponse"
ANTHROPIC_ERROR_SCHEMA = "AnthropicErrorResponse"
SSE_EVENT_SCHEMA = "ServerSentEvent"
# OpenAPI 3.1 has no keyword for streams: the schema of text/event-stream describes one event
SSE_EVENT = {
    "type": "object",
    "description": "one server-sent event: data is a JSON chunk (an error chunk holds OpenAI's "
    "error envelope), the last event's data is [DONE]",
    "properties": {
        "data": {"type": "string"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
    "required": ["data"],
}
_REF = "#/components/schemas/{model}"


class OpenAIErrorDetail(BaseModel):
    """The ``error`` object of OpenAI's error envelope."""

    message: str = Field(description="what went wrong, for people")
    type: str = Field(description="invalid_request_error, server_error, server_overloaded")
    param: str | None = Field(default=None, description="the request field at fault")
    code: str | None = Field(default=None, description="machine-readable reason")


class OpenAIErrorResponse(BaseModel):
    """Every error of the OpenAI-compatible routes: ``{"error": {...}}``."""

    error: OpenAIErrorDetail


class AnthropicErrorDetail(BaseModel):
    """The ``error`` object of Anthropic's error envelope."""

    type: str = Field(
        description="invalid_request_error, authentication_error, not_found_error, "
        "request_too_large, rate_limit_error, api_error, overloaded_error"
    )
    message: str = Field(description="what went wrong, for people")


class AnthropicErrorResponse(BaseModel):
    """Every error of the Anthropic Messages routes: ``{"type": "error", "error": {...}}``."""

    type: Literal["error"] = "error"
    error: AnthropicErrorDetail


# status -> what it means on this server (one table; routes pick their statuses from it)
ERROR_STATUSES: dict[int, str] = {
    400: "invalid request: body not JSON, a field missing or out of range, bad grammar",
    401: "missing or wrong API key (only when the server has API keys)",
    404: "the model is not served, or no such route",
    413: "request body larger than --max-body-bytes",
    429: "every slot busy and the queue full (Retry-After)",
    500: "internal error, or the model could not be loaded or its engine stopped (named)",
    503: "the model is loading or its engine is shutting down (Retry-After)",
}
_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}
}


def openai_errors(*statuses: int) -> Responses:
    """``responses=`` entries for error statuses answered in OpenAI's envelope."""
    out: Responses = {}
    for status in statuses:
        entry: dict[str, Any] = {
            "model": OpenAIErrorResponse,
            "description": ERROR_STATUSES[status],
        }
        if status in (429, 503):
            entry["headers"] = _RETRY_AFTER
        out[status] = entry
    return out


def anthropic_errors(*statuses: int) -> Responses:
    """``responses=`` entries for error statuses answered in Anthropic's envelope."""
    out = openai_errors(*statuses)
    for entry in out.values():
        entry["model"] = AnthropicErrorResponse
    return out


def event_stream_ok(
    description: str = "the result; with stream=true, server-sent events",
) -> Responses:
    """A 200 that is JSON, or with ``stream: true`` ``text/event-stream`` events
    (``data: {json}`` chunks; an error mid-stream is an error event; then ``data: [DONE]``)."""
    return {
        200: {
            "description": description,
            "content": {
                "text/event-stream": {"schema": {"$ref": _REF.format(model=SSE_EVENT_SCHEMA)}}
            },
        }
    }


def text_ok(media_type: str = "text/plain", description: str = "plain text") -> Responses:
    """A 200 whose body is text of ``media_type`` (not JSON)."""
    return {
        200: {
            "description": description,
            "content": {media_type: {"schema": {"type": "string"}}},
        }
    }


_BODY_METHODS = {"post", "put", "patch", "delete"}


def _error_ref(path: str) -> dict[str, Any]:
    schema = ANTHROPIC_ERROR_SCHEMA if is_anthropic_path(path) else ERROR_SCHEMA
    return {"application/json": {"schema": {"$ref": _REF.format(model=schema)}}}


def _complete(path: str, method: str, op: dict[str, Any]) -> None:
    responses: dict[str, Any] = op.setdefault("responses", {})
    responses.pop("422", None)
    wanted: list[int] = [500]
    if "requestBody" in op or op.get("parameters"):
        wanted.append(400)
    if not is_public(path):
        wanted.append(401)
    if method in _BODY_METHODS:
        wanted.append(413)
    for status in sorted(wanted):
        responses.setdefault(
            str(status), {"description": ERROR_STATUSES[status], "content": _error_ref(path)}
        )
    op["responses"] = dict(sorted(responses.items()))


def _returned_media_type(route: APIRoute) -> str | None:
    """The media type of a route that returns a non-JSON response class (``-> PlainTextResponse``)
    and declares no ``response_class`` of its own (FastAPI would document JSON for it)."""
    if route.response_class is not JSONResponse and not isinstance(
        route.response_class, DefaultPlaceholder
    ):
        return None
    try:
        returned = typing.get_type_hints(route.endpoint).get("return")
    except (NameError, TypeError):
        return None
    if not (isinstance(returned, type) and issubclass(returned, Response)):
        return None
    if issubclass(returned, JSONResponse) or not returned.media_type:
        return None
    return str(returned.media_type)


def _api_routes(routes: Iterable[Any], prefix: str = "") -> Iterator[tuple[str, APIRoute]]:
    """(path, route) of every API route, inside included routers too (FastAPI >= 0.16x keeps
    an included router as one entry of ``app.routes``)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path_format, route
        elif (inner := getattr(route, "original_router", None)) is not None:
            context = getattr(route, "include_context", None)
            yield from _api_routes(inner.routes, prefix + (getattr(context, "prefix", "") or ""))


def _text_routes(app: FastAPI) -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for path, route in _api_routes(app.routes):
        if route.include_in_schema:
            media = _returned_media_type(route)
            if media is not None:
                for method in route.methods or ():
                    out[(path, method.lower())] = media
    return out


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document with the server-wide statuses added (see module doc)."""
    doc = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    for (path, method), media in _text_routes(app).items():
        ok = doc.get("paths", {}).get(path, {}).get(method, {}).get("responses", {}).get("200")
        if ok is not None and set(ok.get("content", {})) == {"application/json"}:
            ok["content"] = {media: {"schema": {"type": "string"}}}
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            if isinstance(op, dict) and "responses" in op:
                _complete(path, method, op)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name, schema in (
        ("OpenAIErrorDetail", OpenAIErrorDetail),
        (ERROR_SCHEMA, OpenAIErrorResponse),
        ("AnthropicErrorDetail", AnthropicErrorDetail),
        (ANTHROPIC_ERROR_SCHEMA, AnthropicErrorResponse),
    ):
        if name not in schemas:
            js = schema.model_json_schema(ref_template=_REF)
            js.pop("$defs", None)
            schemas[name] = js
    schemas.setdefault(SSE_EVENT_SCHEMA, SSE_EVENT)
    text = repr(doc["paths"])
    for unused in ("HTTPValidationError", "ValidationError"):
        if f"/{unused}'" not in text:
            schemas.pop(unused, None)
    return doc


def install_openapi(app: FastAPI) -> None:
    """Serve :func:`build_openapi`'s document at ``/openapi.json`` (built once, on first use)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


__all__: list[str] = [
    "ERROR_STATUSES",
    "AnthropicErrorResponse",
    "anthropic_errors",
    "OpenAIErrorResponse",
    "event_stream_ok",
    "install_openapi",
    "openai_errors",
    "text_ok",
]
