"""The pure-ASGI layers every service runs a request through, outermost first.

1. :class:`RequestContext`  request id (``X-Request-ID``) bound in structlog contextvars,
   latency histogram per route template, an access log line, and the last line of defence:
   an unexpected exception becomes a JSON 503 (database outage) or 500, never a traceback.
2. :class:`ApiKeyGuard`     prod only: every request but those of :data:`OPEN_PATHS` (and the
   console's stylesheet and script) needs ``Authorization: Bearer <key>`` (reads return
   orders, addresses and histories); a console page asked for without it is the key prompt.
3. :class:`MethodCheck`     405 with ``Allow`` for a method the request's path does not declare.
4. :class:`BodyLimit`       413 for a body over the limit, by ``Content-Length`` and by
   counting the bytes of a chunked body, before the application reads any of it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Sequence

import structlog
from prometheus_client import Histogram
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from activities.faults import Outages
from services._kit.errors import error_json, unexpected_error_response
from services._kit.logging import (
    CORRELATION_ID_HEADER,
    REQUEST_ID_HEADER,
    request_id_from,
)

log = structlog.get_logger("services.http")

# What stays open in prod: liveness, metrics (no personal data, by design of their labels) and
# the API's own documentation.
OPEN_PATHS = frozenset(
    {"/health", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
)
# The operator console (services._kit.console): its files hold no data; its pages do.
CONSOLE_PREFIX = "/ui"
CONSOLE_FILES_PREFIX = "/ui/static/"
UNMATCHED_ROUTE = "<unmatched>"


class RequestContext:
    """Bind a request id, time the request per route, answer unexpected exceptions."""

    def __init__(
        self, app: ASGIApp, *, service: str, latency: Histogram, outages: Outages | None = None
    ) -> None:
        self.app = app
        self.service = service
        self.latency = latency
        self.outages = outages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = request_id_from(headers.get(REQUEST_ID_HEADER))
        correlation_id = request_id_from(headers.get(CORRELATION_ID_HEADER) or request_id)
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        began = time.perf_counter()
        # order_id: bound by the route (services._kit.app.bind_order_id); "..." (structlog's
        # "unbound") until then, and reset with the rest when the request ends.
        with structlog.contextvars.bound_contextvars(
            request_id=request_id,
            correlation_id=correlation_id,
            service=self.service,
            order_id=...,
        ):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception as exc:
                response = unexpected_error_response(exc, self.outages)
                if started:
                    # Headers are gone already: the client sees a cut-off response; the
                    # error is logged above with the request id.
                    log.error("http.error_after_response_started", status=status)
                else:
                    await response(scope, receive, send_with_id)
            finally:
                elapsed = time.perf_counter() - began
                route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
                self.latency.labels(
                    service=self.service, method=scope["method"], route=route, status=str(status)
                ).observe(elapsed)
                log.info(
                    "http.request",
                    method=scope["method"],
                    path=scope["path"],
                    route=route,
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )


class ApiKeyGuard:
    """Refuse every request outside :data:`OPEN_PATHS` without the right bearer token
    (compared in constant time): mutations, and reads of orders, payments, shipments and
    saga histories, which carry customers' names and addresses.

    A console page (under :data:`CONSOLE_PREFIX`) asked for without the token is answered 401
    with ``key_page``, which holds no data: its script asks for the key and asks again with it.
    """

    def __init__(self, app: ASGIApp, *, api_key: str, key_page: bytes = b"") -> None:
        self.app = app
        self._expected = api_key.encode()
        self._key_page = key_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and not self._open(scope["path"])
            and not self._authorised(scope)
        ):
            response: Response
            if self._key_page and _is_console(scope["path"]):
                response = Response(
                    self._key_page,
                    status_code=401,
                    media_type="text/html; charset=utf-8",
                    headers={"WWW-Authenticate": "Bearer", "Cache-Control": "no-store"},
                )
            else:
                response = error_json(
                    401,
                    "unauthorized",
                    "this endpoint needs 'Authorization: Bearer <CLOUDMART_API_KEY>'",
                    {},
                    headers={"WWW-Authenticate": "Bearer"},
                )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _open(path: str) -> bool:
        return path in OPEN_PATHS or path.startswith(CONSOLE_FILES_PREFIX)

    def _authorised(self, scope: Scope) -> bool:
        value = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, token = value.partition(b" ")
        # Compare bytes: compare_digest refuses non-ASCII str, and a header may hold anything.
        valid_scheme = scheme.lower() == b"bearer"
        return secrets.compare_digest(token.strip(), self._expected) and valid_scheme


def _is_console(path: str) -> bool:
    return path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")


class MethodCheck:
    """Answer 405, with ``Allow`` and the kit's JSON body, for a method the path does not declare.

    ``routes``: every route (``create_app`` fills the list once they all exist). A concrete path
    owns a request's path before a templated one that matches it too, as OpenAPI resolves paths,
    and the owner's methods are all there are: ``GET /inventory/reserve`` is a 405 naming POST,
    where the router alone would hand it to ``GET /inventory/{book_id}``, whose validation would
    refuse "reserve" as a book id (422).
    """

    def __init__(self, app: ASGIApp, *, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            allowed = path_methods(self.routes, scope)
            if allowed is not None and scope["method"] not in allowed:
                methods = sorted(allowed)
                response = error_json(
                    405,
                    "method_not_allowed",
                    "this method is not allowed on this path; Allow lists those that are",
                    {"allowed": methods},
                    headers={"Allow": ", ".join(methods)},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def path_methods(routes: Iterable[BaseRoute], scope: Scope) -> frozenset[str] | None:
    """The methods of the path that owns the request's path: of the routes whose path matches,
    the one with the fewest parameters (the first declared of equals).

    None when no route matches (the router answers 404), or when one that matches is not a route
    with a list of methods (a mount, a route for any method): the router decides those.
    """
    matched = [route for route in routes if route.matches(scope)[0] is not Match.NONE]
    plain = [route for route in matched if isinstance(route, Route)]
    if not plain or len(plain) != len(matched):
        return None
    owner = min(plain, key=lambda route: len(route.param_convertors)).path
    methods = [route.methods for route in plain if route.path == owner]
    if any(declared is None for declared in methods):
        return None
    return frozenset().union(*(declared for declared in methods if declared is not None))


class BodyLimit:
    """Read the body up to ``max_bytes`` before the application sees it; 413 beyond."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await error_json(400, "bad_request", "invalid Content-Length", {})(
                    scope, receive, send
                )
                return
            if int(declared) > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client is gone: nothing to answer
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_json(
            413,
            "payload_too_large",
            f"the request body is larger than {self.max_bytes} bytes",
            {"max_bytes": self.max_bytes},
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)
