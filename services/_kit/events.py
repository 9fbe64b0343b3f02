"""A service's event consumer: the choreography's reactions, run beside the HTTP API.

In the choreography pattern on real infrastructure each service process runs its consumer
group on the Redis stream and a relay for the events it produces
(:class:`choreography_pattern.runtime.Choreography`). Embedded (one process, SQLite) the order
service's app runs the whole choreography — all four groups and the relay — on the in-process
bus, as the orchestrator's app runs the whole orchestration there; the other apps run none.

Failure points for chaos tests (:mod:`services._kit.failpoints`): ``crash_before_ack:<service>``
kills the process after a handler committed and before the XACK;
``crash_before_publish:<service>`` kills it after the relay locked committed outbox rows and
before it published them; ``poison:<service>`` makes every event the service handles fail
with an error that is neither an answer nor a fault.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import structlog
from fastapi import FastAPI

from activities.db import Database
from services._kit import failpoints
from services._kit.app import Lifespan
from services._kit.roster import CHOREOGRAPHY, services_of
from services._kit.settings import Settings

log = structlog.get_logger("services.events")

CHOREOGRAPHED_SERVICES = tuple(services_of(CHOREOGRAPHY))


def consumes_events(settings: Settings) -> bool:
    """Whether a service process takes part in the choreography under these settings."""
    return settings.pattern == "choreography"


def event_consumer(service: str) -> Lifespan:
    """A lifespan that runs ``service``'s part of the choreography while the app runs."""

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        settings: Settings = app.state.settings
        if not consumes_events(settings) or (settings.in_process and service != "order"):
            yield
            return
        from choreography_pattern.bus import EventBus, InMemoryEventBus
        from choreography_pattern.runtime import Choreography
        from choreography_pattern.saga import Intake

        db: Database = app.state.db
        async with AsyncExitStack() as stack:
            bus: EventBus
            if settings.in_process:
                bus = InMemoryEventBus(
                    max_deliveries=settings.event_max_deliveries, outages=app.state.outages
                )
                services: tuple[str, ...] = CHOREOGRAPHED_SERVICES
            else:
                from choreography_pattern.redis_bus import RedisEventBus

                if not settings.redis_url:
                    raise RuntimeError("the choreography needs CLOUDMART_REDIS_URL")
                redis_bus = RedisEventBus.from_url(
                    settings.redis_url,
                    settings.namespace,
                    claim_idle=settings.event_claim_idle,
                    max_deliveries=settings.event_max_deliveries,
                    retain_for=CHOREOGRAPHED_SERVICES,
                    trim_interval=settings.event_trim_interval,
                    outages=app.state.outages,
                )
                stack.push_async_callback(redis_bus.aclose)
                bus = redis_bus
                services = (service,)
                app.state.health_checks["redis"] = redis_bus.ping
            choreography = Choreography(
                db,
                bus,
                services,
                served_countries=settings.served_countries,
                poll_interval=settings.outbox_poll_interval,
                before_ack={
                    s: hook
                    for s in services
                    if (hook := failpoints.event_hook("crash_before_ack", s)) is not None
                },
                before_publish=failpoints.event_hook("crash_before_publish", service),
                before_handle={
                    s: hook
                    for s in services
                    if (hook := failpoints.event_hook("poison", s)) is not None
                },
                outages=app.state.outages,
            )
            await stack.enter_async_context(choreography)
            app.state.choreography = choreography
            if service == "order":  # where orders come in
                app.state.intake = Intake(settings.max_queued_sagas)
            app.state.metrics.register(choreography)
            app.state.telemetry.add_probe("choreography", choreography.probe)
            stack.callback(app.state.telemetry.remove_probe, "choreography")
            yield

    return run


def all_of(*lifespans: Lifespan) -> Lifespan:
    """One lifespan that runs ``lifespans`` in order (and stops them in reverse)."""

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for lifespan in lifespans:
                await stack.enter_async_context(lifespan(app))
            yield

    return run


def service_lifespan(service: str) -> Lifespan:
    """What a domain service runs beside its API: commands (orchestration) or events."""
    from services._kit.commands import command_consumer

    return all_of(command_consumer(service), event_consumer(service))
