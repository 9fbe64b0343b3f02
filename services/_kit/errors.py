"""Every error a CloudMart HTTP service answers with, as one JSON shape.

::

    {"error": "<code>", "message": "<what went wrong>", "details": {...}}

=============================================  ======  ===========================
raised                                          status  ``error``
=============================================  ======  ===========================
``DomainError`` (activities.errors)             its     its class name (StockUnavailable...)
                                                own
body is not JSON / cannot be read               400     ``malformed_json`` / ``bad_request``
validation (body, path, query)                  422     ``validation_error``
unknown path / wrong method                     404/405 ``not_found`` / ``method_not_allowed``
missing or wrong bearer token (prod)            401     ``unauthorized``
body over ``max_body_bytes``                    413     ``payload_too_large``
database, broker or network fault              503     ``unavailable``
anything else (a bug)                           500     ``internal``, nothing more
=============================================  ======  ===========================

Nothing from the request's input and nothing from a driver or a traceback is echoed: a
validation error names the field (``loc``), the rule (``type``) and pydantic's message only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from activities.errors import DomainError
from activities.faults import Outages, dependency_of, is_infrastructure_fault

log = structlog.get_logger("services.errors")

MAX_REPORTED_ERRORS = 20
_SLUGS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    503: "unavailable",
}


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str = Field(description="A stable code: a domain error's name or a generic slug.")
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


def error_json(
    status: int,
    error: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"error": error, "message": message}
    if details is not None:
        body["details"] = _plain(details)
    return JSONResponse(body, status_code=status, headers=headers)


def _plain(value: Any) -> Any:
    """JSON-safe data: non-JSON values (Decimal, bytes, NaN...) become strings."""
    text = json.dumps(value, default=str, allow_nan=True)
    return json.loads(text, parse_constant=str)


def error_responses(*errors: type[DomainError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the domain errors a route may answer with."""
    by_status: dict[int, list[str]] = {}
    for error in errors:
        by_status.setdefault(error.http_status, []).append(error.__name__)
    return {
        status: {"model": ErrorBody, "description": " or ".join(names)}
        for status, names in sorted(by_status.items())
    }


def is_database_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` is an infrastructure fault (:func:`activities.faults.dependency_of`):
    the database, a broker or the network did not answer — also when ``exc`` wraps such an
    error as its cause (the engine's ``StoreUnavailable`` does). Answered 503."""
    return is_infrastructure_fault(exc)


def unexpected_error_response(exc: Exception, outages: Outages | None = None) -> JSONResponse:
    """503 for an infrastructure fault, else a bare 500; never echoed.

    A fault is logged once per outage through ``outages`` (every request during it would
    otherwise add a line); without it, each is logged.
    """
    dependency = dependency_of(exc)
    if dependency is not None:
        if outages is not None:
            outages.lost(dependency, exc, where="http")
        else:
            log.warning("http.dependency_unavailable", dependency=dependency, error=str(exc))
        return error_json(
            503,
            "unavailable",
            f"the {dependency if dependency != 'network' else 'service'} is unavailable; "
            "try again shortly",
            headers={"Retry-After": "1"},
        )
    log.error("http.internal_error", error_type=type(exc).__name__, exc_info=exc)
    return JSONResponse({"error": "internal", "message": "internal server error"}, status_code=500)


def _validation_errors(errors: Iterable[Any]) -> list[dict[str, Any]]:
    reported = []
    for error in errors:
        reported.append(
            {
                "loc": [part if isinstance(part, int) else str(part) for part in error["loc"]],
                "type": str(error.get("type", "")),
                "msg": str(error.get("msg", "")),
            }
        )
        if len(reported) == MAX_REPORTED_ERRORS:
            break
    return reported


async def _on_domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    headers = None if exc.retry_after is None else {"Retry-After": str(exc.retry_after)}
    return error_json(exc.http_status, exc.code, exc.message, dict(exc.details), headers)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(error.get("type") == "json_invalid" for error in errors):
        return error_json(400, "malformed_json", "the request body is not valid JSON", {})
    return error_json(
        422,
        "validation_error",
        "the request is not valid",
        {"errors": _validation_errors(errors), "error_count": len(errors)},
    )


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "error"
    message = exc.detail if isinstance(exc.detail, str) else phrase
    return error_json(
        status,
        _SLUGS.get(status, "http_error"),
        message,
        {},
        headers=dict(exc.headers) if exc.headers else None,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors, validation errors and HTTP errors to :class:`ErrorBody` responses.

    Anything else is answered by the request middleware (:func:`unexpected_error_response`).
    """
    app.add_exception_handler(DomainError, _on_domain_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
