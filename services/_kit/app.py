"""The app factory every CloudMart HTTP service is built with.

A service is its routers plus one call::

    def build_app(settings: Settings | None = None) -> FastAPI:
        return create_app("inventory", settings or get_settings(), router)

:func:`create_app` adds what every service shares: the database (built from the settings in
the lifespan, on ``app.state.db``; :func:`db_of` is the route dependency), structured logging,
the error mapping of :mod:`services._kit.errors`, the request middleware (request id, latency
metrics, prod bearer token, 405 for an undeclared method, body limit), ``GET /health`` and
``GET /metrics`` (the app's own registry, ``app.state.metrics``, with the process's
:class:`~services._kit.metrics.Telemetry` on ``app.state.telemetry``), and an OpenAPI document
that declares the kit's own responses on every operation (:mod:`services._kit._openapi`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit

import structlog
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.telemetry import TelemetryConfig
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from pydantic import BaseModel
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route

from activities.db import Database
from activities.faults import Outages
from services._kit import console, failpoints
from services._kit._middleware import ApiKeyGuard, BodyLimit, MethodCheck, RequestContext
from services._kit._openapi import document_kit_responses, integral_bounds
from services._kit.errors import install_error_handlers
from services._kit.logging import configure_logging
from services._kit.metrics import Telemetry
from services._kit.settings import Settings

log = structlog.get_logger("services.app")

HealthCheck = Callable[[], Awaitable[bool]]
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]

HEALTH_CHECK_TIMEOUT = 5.0
MAX_BOUND_ID = 128
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ConfigurationError(ValueError):
    """The settings cannot run this service (e.g. prod without an API key)."""


class HealthView(BaseModel):
    status: str
    checks: dict[str, str]


async def db_of(request: Request) -> Database:
    """The app's :class:`Database` (a FastAPI dependency).

    ``async`` on purpose: FastAPI runs a plain ``def`` dependency in a thread pool, which costs
    a thread hand-off on every request.
    """
    db: Database = request.app.state.db
    return db


async def settings_of(request: Request) -> Settings:
    """The app's :class:`Settings` (a FastAPI dependency)."""
    settings: Settings = request.app.state.settings
    return settings


async def bind_order_id(request: Request) -> None:
    """Bind the request's order id — the correlation id — to every line it logs.

    From the ``{order_id}`` path parameter, else from a JSON body's ``order_id`` (the body is
    already read and cached by then). A route that creates the order binds the new id itself.
    """
    order_id = request.path_params.get("order_id")
    if order_id is None and request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError:  # FastAPI answers malformed JSON itself; nothing to bind
            body = None
        order_id = body.get("order_id") if isinstance(body, dict) else None
    if isinstance(order_id, str) and 0 < len(order_id) <= MAX_BOUND_ID:
        structlog.contextvars.bind_contextvars(order_id=order_id)


class _ServiceApp(FastAPI):
    """A FastAPI app whose OpenAPI document also declares what the kit answers on every route."""

    def openapi(self) -> dict[str, Any]:
        settings: Settings = self.state.settings
        openapi = integral_bounds(super().openapi())
        return document_kit_responses(openapi, bearer=settings.env == "prod")


# The kit measures with Prometheus (/metrics) and logs with structlog. FastAPI's native
# OpenTelemetry, on by default, asks OpenTelemetry's global registry and the environment
# whether anyone configured a provider on every request: 2% of the co-located process's CPU at
# 32 sagas in flight, for nothing.
_NO_OPENTELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}

DatabaseDep = Annotated[Database, Depends(db_of)]
SettingsDep = Annotated[Settings, Depends(settings_of)]


def create_app(
    service: str,
    settings: Settings,
    *routers: APIRouter,
    database: Database | None = None,
    lifespan: Lifespan | None = None,
    health_checks: Mapping[str, HealthCheck] | None = None,
    description: str | None = None,
) -> FastAPI:
    """Build service ``service``'s FastAPI app from ``settings`` and its ``routers``.

    ``database``: share an existing :class:`Database` (embedded mode runs every service in one
    process on one SQLite file); the app then leaves disposing it to its owner. Otherwise the
    app builds its own from the settings at startup and disposes it at shutdown.
    ``lifespan``: the service's own start-up/shut-down (consumers...), run inside the kit's,
    with the database already on ``app.state.db``; it may add checks to
    ``app.state.health_checks`` (name → ``async () -> bool``).

    Raises :class:`ConfigurationError` in the prod profile without ``CLOUDMART_API_KEY``.
    """
    api_key = settings.api_key.get_secret_value() if settings.api_key else ""
    if settings.env == "prod" and not api_key:
        raise ConfigurationError(
            f"{service}: CLOUDMART_API_KEY must be set in the prod profile "
            "(every endpoint but /health, /metrics and the API docs requires it as a bearer "
            "token)"
        )
    if settings.env == "prod" and _default_broker_login(settings.rabbitmq_url):
        raise ConfigurationError(
            f"{service}: CLOUDMART_RABBITMQ_URL uses RabbitMQ's default guest login on a "
            "non-loopback host; give the broker a user of its own in the prod profile"
        )
    configure_logging(settings)
    failpoints.arm(settings.failpoint, env=settings.env)

    metrics = CollectorRegistry(auto_describe=True)
    latency = Histogram(
        "cloudmart_http_request_duration_seconds",
        "Latency of HTTP requests by service, method, route template and status.",
        ["service", "method", "route", "status"],
        buckets=LATENCY_BUCKETS,
        registry=metrics,
    )
    # One per process's app: whether each dependency is down, as every part of it saw it.
    outages = Outages()
    telemetry = Telemetry(metrics, outages=outages)

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        db = database or Database.from_url(
            settings.effective_database_url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            pool_timeout=settings.db_pool_timeout,
            lock_retries=settings.db_lock_retries,
            idle_transaction_timeout=settings.db_idle_transaction_timeout,
        )
        app.state.db = db
        telemetry.database = db
        log.info("service.started", service=service, dialect=db.dialect)
        try:
            if lifespan is None:
                yield
            else:
                async with lifespan(app):
                    yield
        finally:
            if database is None:
                await db.dispose()
            log.info("service.stopped", service=service)

    middleware = [Middleware(RequestContext, service=service, latency=latency, outages=outages)]
    if settings.env == "prod":
        # A service with a console answers its pages' key prompt (see services._kit.console).
        serves_console = any(
            getattr(route, "path", "").startswith(console.UI_PREFIX)
            for router in routers
            for route in router.routes
        )
        key_page = console.key_page() if serves_console else b""
        middleware.append(Middleware(ApiKeyGuard, api_key=api_key, key_page=key_page))
    routes: list[BaseRoute] = []  # every route, in the router's order; filled below
    middleware.append(Middleware(MethodCheck, routes=routes))
    middleware.append(Middleware(BodyLimit, max_bytes=settings.max_body_bytes))

    app = _ServiceApp(
        title=f"CloudMart {service} service",
        description=description or f"The {service} service of CloudMart sagas.",
        version="0.1.0",
        lifespan=run,
        middleware=middleware,
        telemetry=_NO_OPENTELEMETRY,
    )
    app.state.service = service
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.telemetry = telemetry
    app.state.outages = outages
    app.state.health_checks = dict(health_checks or {})
    install_error_handlers(app)
    operations = _operations_router()
    app.include_router(operations)
    for router in routers:
        app.include_router(router, dependencies=[Depends(bind_order_id)])
    # The routers' own routes, not app.routes: FastAPI may keep an included router as one
    # opaque route. Included without a prefix, each route's path is the one served.
    routes.extend(route for route in app.router.routes if isinstance(route, Route))
    for router in (operations, *routers):
        routes.extend(router.routes)
    return app


def _default_broker_login(url: str | None) -> bool:
    """True for an AMQP URL that logs in as guest/guest to a host other than loopback."""
    if not url:
        return False
    parsed = urlsplit(url)
    loopback = parsed.hostname in (None, "localhost", "127.0.0.1", "::1")
    user = unquote(parsed.username or "guest")
    password = unquote(parsed.password or "guest")
    return not loopback and user == "guest" and password == "guest"  # noqa: S105 - detecting it


def _operations_router() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get(
        "/health",
        response_model=HealthView,
        responses={503: {"model": HealthView, "description": "A dependency is down."}},
        summary="200 when the database (and any other dependency) answers, else 503",
    )
    async def health(request: Request, db: DatabaseDep) -> JSONResponse:
        checks: dict[str, HealthCheck] = {"database": db.ping, **request.app.state.health_checks}
        outages: Outages = request.app.state.outages
        results = {name: await _probe(name, check, outages) for name, check in checks.items()}
        healthy = all(results.values())
        return JSONResponse(
            {
                "status": "ok" if healthy else "unavailable",
                "checks": {name: "ok" if ok else "down" for name, ok in results.items()},
            },
            status_code=200 if healthy else 503,
        )

    @router.get(
        "/metrics",
        response_class=Response,
        summary="Prometheus metrics (text exposition format)",
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def metrics(request: Request) -> Response:
        await request.app.state.telemetry.refresh()
        return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)

    return router


async def _probe(name: str, check: HealthCheck, outages: Outages) -> bool:
    """Run one check; a dependency that goes down or comes back is logged once, through
    ``outages`` (a health check polled every second during an outage adds no lines)."""
    failure: BaseException | None = None
    try:
        async with asyncio.timeout(HEALTH_CHECK_TIMEOUT):
            healthy = bool(await check())
    except TimeoutError as exc:
        healthy, failure = False, exc
    except Exception as exc:  # a failing probe is a "down", and must not become a 500
        healthy, failure = False, exc
    if healthy:
        outages.restored(name)
    else:
        outages.lost(name, failure, where="health")
    return healthy
