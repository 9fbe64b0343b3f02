"""What the kit answers on every route, declared once on every operation of the OpenAPI document.

A route declares its own outcomes (its response model, its domain errors through
:func:`~services._kit.errors.error_responses`); these it does not, because the kit answers
them before or around the route, with :class:`~services._kit.errors.ErrorBody`:

======  ===========================  =================================================
status  ``error``                    declared on
======  ===========================  =================================================
400     ``malformed_json``,          every operation (a body that is not JSON, an
        ``bad_request``              invalid ``Content-Length``)
401     ``unauthorized``             mutating operations, in the prod profile only
413     ``payload_too_large``        every operation (the body limit reads every body)
422     ``validation_error``         every operation with parameters or a body
500     ``internal``                 every operation
503     ``unavailable``              every operation, with ``Retry-After``
======  ===========================  =================================================

A route's own declaration of a status stands (``/health`` answers 503 with its own body), but
FastAPI's ``HTTPValidationError`` is replaced: the kit never answers with that shape. A method
a path does not declare is a 405 with ``Allow`` (:class:`~services._kit._middleware.MethodCheck`);
OpenAPI has no operation to declare it on.

:func:`integral_bounds` mends one thing FastAPI's document says wrong: it writes every bound
as a float, so an id of ``minimum: 1`` reads ``minimum: 1.0`` — which a client (or a
schema-driven test) sends as the JSON number ``1.0``, and strict validation refuses.
"""

from __future__ import annotations

import json
from typing import Any

from services._kit._middleware import OPEN_PATHS
from services._kit.errors import ErrorBody

ERROR_BODY_REF = "#/components/schemas/ErrorBody"
BEARER_SCHEME = "bearer"
_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
_NUMERIC_KEYWORDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
# FastAPI's own validation-error schemas, which no kit response uses.
_FASTAPI_VALIDATION_SCHEMAS = ("HTTPValidationError", "ValidationError")

_VALIDATION = (
    "The request is not valid (`validation_error`): `details.errors` names each field (`loc`) "
    "and the rule it breaks (`type`)."
)
_UNREADABLE_BODY = (
    "The request cannot be read: its body is not valid JSON (`malformed_json`) or its "
    "Content-Length is not a number (`bad_request`)."
)
_UNREADABLE = "The request cannot be read: its Content-Length is not a number (`bad_request`)."


def _error(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": ERROR_BODY_REF}}},
    }
    if headers:
        response["headers"] = headers
    return response


def _kit_responses(*, has_body: bool, has_input: bool, needs_token: bool) -> dict[str, Any]:
    responses = {
        "400": _error(_UNREADABLE_BODY if has_body else _UNREADABLE),
        "413": _error("The body is over the service's limit (`payload_too_large`)."),
        "500": _error("A bug (`internal`); the body says nothing more."),
        "503": _error(
            "The database is unavailable (`unavailable`); try again shortly.",
            {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}},
        ),
    }
    if has_input:
        responses["422"] = _error(_VALIDATION)
    if needs_token:
        responses["401"] = _error(
            "No valid `Authorization: Bearer <CLOUDMART_API_KEY>` (`unauthorized`).",
            {"WWW-Authenticate": {"schema": {"type": "string"}}},
        )
    return responses


def document_kit_responses(openapi: dict[str, Any], *, bearer: bool) -> dict[str, Any]:
    """Declare the kit's responses on every operation of FastAPI's document ``openapi``.

    ``bearer``: the prod profile, where every operation but the open ones (health, metrics,
    the documentation) needs the API key. Changes
    ``openapi`` in place (idempotent: a second call changes nothing) and returns it.
    """
    components = openapi.setdefault("components", {})
    components.setdefault("schemas", {}).setdefault("ErrorBody", ErrorBody.model_json_schema())
    for path, item in openapi.get("paths", {}).items():
        for method, operation in item.items():
            if method not in _HTTP_METHODS:
                continue
            needs_token = bearer and path not in OPEN_PATHS
            kit = _kit_responses(
                has_body="requestBody" in operation,
                has_input=bool(operation.get("parameters")) or "requestBody" in operation,
                needs_token=needs_token,
            )
            responses: dict[str, Any] = operation.setdefault("responses", {})
            for status, response in kit.items():
                _declare(responses, status, response)
            operation["responses"] = dict(sorted(responses.items()))
            if needs_token:
                operation["security"] = [{BEARER_SCHEME: []}]
    if bearer:
        components.setdefault("securitySchemes", {})[BEARER_SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "The deployment's CLOUDMART_API_KEY.",
        }
    _drop_unreferenced(openapi, _FASTAPI_VALIDATION_SCHEMAS)
    return openapi


def integral_bounds(openapi: dict[str, Any]) -> dict[str, Any]:
    """Write the bounds of every integer schema in ``openapi`` as integers (in place; returned)."""
    _integral_bounds(openapi)
    return openapi


def _integral_bounds(node: Any) -> None:
    if isinstance(node, list):
        for child in node:
            _integral_bounds(child)
        return
    if not isinstance(node, dict):
        return
    types = node.get("type")
    if types == "integer" or (isinstance(types, list) and "integer" in types):
        for keyword in _NUMERIC_KEYWORDS:
            value = node.get(keyword)
            if isinstance(value, float) and value.is_integer():
                node[keyword] = int(value)
    for child in node.values():
        _integral_bounds(child)


def _declare(responses: dict[str, Any], status: str, kit: dict[str, Any]) -> None:
    own = responses.get(status)
    if own is None or _refers_to(own, "HTTPValidationError"):
        responses[status] = kit
    elif (
        status == "422"
        and _refers_to(own, "ErrorBody")
        and "validation_error" not in str(own.get("description"))
    ):
        # A domain error the route answers with 422 too (IdempotencyKeyReused...).
        own["description"] = f"{kit['description']} Or: {own.get('description')}"


def _refers_to(response: dict[str, Any], schema: str) -> bool:
    content = response.get("content", {}).get("application/json", {})
    return bool(content.get("schema") == {"$ref": f"#/components/schemas/{schema}"})


def _drop_unreferenced(openapi: dict[str, Any], names: tuple[str, ...]) -> None:
    schemas: dict[str, Any] = openapi.get("components", {}).get("schemas", {})
    for name in names:
        schema = schemas.pop(name, None)
        if schema is not None and f'"#/components/schemas/{name}"' in json.dumps(openapi):
            schemas[name] = schema  # still referenced: it stays
