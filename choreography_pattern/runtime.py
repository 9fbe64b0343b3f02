"""The choreography inside one process: consumer groups, the outbox relay, and their counters.

:class:`Choreography` is an async context manager. While open it runs, on the given bus, one
consumer per service in ``services`` (a real service process runs its own; the embedded
process runs all four on the in-process bus) and one relay for the events those services
produce. Every handled event wakes the relay, so an event written by a handler goes out at
once instead of at the next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection, Iterable
from contextlib import AsyncExitStack
from types import TracebackType

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from activities.db import Database
from activities.shipping import DEFAULT_SERVED_COUNTRIES
from choreography_pattern.bus import BeforeAck, ConsumerStats, EventBus
from choreography_pattern.events import Event
from choreography_pattern.handlers import Deps, handle, types_of
from choreography_pattern.relay import BeforePublish, OutboxRelay


class Choreography:
    def __init__(
        self,
        db: Database,
        bus: EventBus,
        services: Collection[str],
        *,
        served_countries: Collection[str] = DEFAULT_SERVED_COUNTRIES,
        poll_interval: float = 0.5,
        before_ack: dict[str, BeforeAck] | None = None,
        before_publish: BeforePublish | None = None,
    ) -> None:
        self.db = db
        self.bus = bus
        self.services = list(services)
        self.deps = Deps(db, served_countries=served_countries)
        self.relay = OutboxRelay(
            db,
            bus,
            producers=self.services,
            poll_interval=poll_interval,
            before_publish=before_publish,
        )
        self.consumers: dict[str, ConsumerStats] = {}
        self._handled = asyncio.Event()
        self._before_ack = before_ack or {}
        self._stack = AsyncExitStack()
        self._relay_task: asyncio.Task[None] | None = None

    def notify(self) -> None:
        """An event was written in this process: publish it now."""
        self.relay.notify()

    async def next_handled(self, timeout: float) -> None:
        """Wait until this process handled another event, or ``timeout`` seconds passed.

        Lets a reader (``GET /orders/{id}?wait=``) look again exactly when something changed.
        """
        handled = self._handled
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await handled.wait()

    def _handler(self, service: str) -> Callable[[Event], Awaitable[None]]:
        async def on_event(event: Event) -> None:
            await handle(self.deps, service, event)
            self.relay.notify()
            handled, self._handled = self._handled, asyncio.Event()
            handled.set()

        return on_event

    async def __aenter__(self) -> Choreography:
        await self._stack.__aenter__()
        for service in self.services:
            self.consumers[service] = await self._stack.enter_async_context(
                self.bus.consumer(
                    service,
                    self._handler(service),
                    types=types_of(service),
                    before_ack=self._before_ack.get(service),
                )
            )
        self._relay_task = asyncio.create_task(self.relay.run())
        self.relay.notify()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._relay_task is not None:
            self._relay_task.cancel()
            await asyncio.gather(self._relay_task, return_exceptions=True)
        await self._stack.__aexit__(exc_type, exc, tb)

    # metrics ------------------------------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterable[Metric]:
        """Prometheus collector: dead letters, duplicates skipped, outbox lag, events handled."""
        dead = CounterMetricFamily(
            "cloudmart_events_dead_lettered",
            "Events moved to the dead-letter stream.",
            labels=["service"],
        )
        dups = CounterMetricFamily(
            "cloudmart_events_duplicates_skipped",
            "Events skipped as already processed.",
            labels=["service"],
        )
        handled = CounterMetricFamily(
            "cloudmart_events_handled", "Events handled by this process.", labels=["service"]
        )
        for service in self.services:
            consumer = self.consumers.get(service, ConsumerStats())
            stats = self.deps.stats_of(service)
            dead.add_metric([service], consumer.dead_lettered)
            dups.add_metric([service], stats.duplicates)
            handled.add_metric([service], stats.handled)
        lag = GaugeMetricFamily(
            "cloudmart_outbox_unpublished",
            "Outbox rows of this process's events not yet published.",
        )
        lag.add_metric([], self.relay.lag)
        published = CounterMetricFamily(
            "cloudmart_outbox_published", "Events published by this process's relay."
        )
        published.add_metric([], self.relay.published)
        return [dead, dups, handled, lag, published]
