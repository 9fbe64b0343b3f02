"""The choreography inside one process: consumer groups, the outbox relay, and their counters.

:class:`Choreography` is an async context manager. While open it runs, on the given bus, one
consumer per service in ``services`` (a real service process runs its own; the embedded
process runs all four on the in-process bus) and one relay for the events those services
produce. A bus that reads several events at once hands them over together
(:func:`~choreography_pattern.handlers.handle_together`: one transaction). Every handled
event (or batch) that wrote one wakes the relay, so an event written by a handler goes out at
once instead of at the next poll. ``before_ack`` and ``before_handle`` (per service) are hooks
for failure points; ``outages`` is the process's :class:`activities.faults.Outages`, shared by
the relay (the consumers share the bus's).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from contextlib import AsyncExitStack
from types import TracebackType

import sqlalchemy as sa
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from activities._inbox import now
from activities.db import Database
from activities.faults import Outages
from activities.shipping import DEFAULT_SERVED_COUNTRIES
from activities.tables import outbox
from choreography_pattern.bus import BeforeAck, ConsumerStats, EventBus, ReportsBacklog
from choreography_pattern.events import Event
from choreography_pattern.handlers import handle, handle_together, types_of
from choreography_pattern.relay import BeforePublish, OutboxRelay
from choreography_pattern.steps import Deps


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
        before_handle: dict[str, BeforeAck] | None = None,
        outages: Outages | None = None,
    ) -> None:
        self.db = db
        self.bus = bus
        self.services = list(services)
        self.deps = Deps(db, served_countries=served_countries)
        self.outages = outages or Outages()
        self.relay = OutboxRelay(
            db,
            bus,
            producers=self.services,
            poll_interval=poll_interval,
            before_publish=before_publish,
            outages=self.outages,
        )
        self.consumers: dict[str, ConsumerStats] = {}
        self._before_ack = before_ack or {}
        self._before_handle = before_handle or {}
        self._stack = AsyncExitStack()
        self._relay_task: asyncio.Task[None] | None = None
        self._handled_for: weakref.WeakValueDictionary[str, asyncio.Event] = (
            weakref.WeakValueDictionary()
        )

    def notify(self) -> None:
        """An event was written in this process: publish it now."""
        self.relay.notify()

    def watch(self, order_id: str) -> asyncio.Event:
        """An event set when this process's order service next writes an event for
        ``order_id`` while handling one: the only time the order's status can change
        (``OrderCompleted``, ``OrderCancelled`` are written with the new status).

        Lets a reader (``GET /orders/{id}?wait=``) look again exactly when something changed
        for its order: it takes the watch *before* reading, so no change slips in between,
        and a thousand readers are not all woken by every event. The registry holds it weakly:
        the entry goes with the last reader holding it.
        """
        change = self._handled_for.get(order_id)
        if change is None:
            change = self._handled_for[order_id] = asyncio.Event()
        return change

    def _handler(self, service: str) -> Callable[[Event], Awaitable[None]]:
        async def on_event(event: Event) -> None:
            await self._handled(service, [event], alone=True)

        return on_event

    def _batch_handler(self, service: str) -> Callable[[Sequence[Event]], Awaitable[None]]:
        async def on_events(events: Sequence[Event]) -> None:
            await self._handled(service, events, alone=False)

        return on_events

    async def _handled(self, service: str, events: Sequence[Event], *, alone: bool) -> None:
        """Handle ``events`` (one alone, or several in one transaction), then wake the relay
        and the order's readers once if they wrote an event."""
        before = self._before_handle.get(service)
        if before is not None:
            for event in events:
                before(event)
        written = self.deps.events_written
        if alone:
            await handle(self.deps, service, events[0])
        else:
            await handle_together(self.deps, service, events)
        if self.deps.events_written != written:  # another handler's write also counts
            self.relay.notify()
        # Readers of an order wait for the order service to write one of its events: woken
        # for those orders only, not for every order of a batch.
        for event in events:
            if (service, event.order_id) not in self.deps.orders_written:
                continue
            self.deps.orders_written.discard((service, event.order_id))
            waiting = self._handled_for.pop(event.order_id, None) if service == "order" else None
            if waiting is not None:
                waiting.set()

    async def __aenter__(self) -> Choreography:
        await self._stack.__aenter__()
        for service in self.services:
            self.consumers[service] = await self._stack.enter_async_context(
                self.bus.consumer(
                    service,
                    self._handler(service),
                    types=types_of(service),
                    batch_handler=self._batch_handler(service),
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
        """Prometheus collector: dead letters, duplicates skipped, events handled, published.

        What lives outside the process (the outbox, the groups' backlog) is read on scrape by
        :meth:`probe`.
        """
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
        published = CounterMetricFamily(
            "cloudmart_outbox_published", "Events published by this process's relay."
        )
        published.add_metric([], self.relay.published)
        return [dead, dups, handled, published]

    async def probe(self) -> list[Metric]:
        """Read on scrape: the outbox's unpublished rows and the age of the oldest, and, on a
        bus that reports it, each group's pending entries, lag and dead letters."""
        async with self.db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(sa.func.count(), sa.func.min(outbox.c.created_at)).where(
                        outbox.c.published_at.is_(None), outbox.c.event_type.in_(self.relay.types)
                    )
                )
            ).one()
        unpublished = GaugeMetricFamily(
            "cloudmart_outbox_unpublished",
            "Outbox rows of this process's events not yet published.",
        )
        unpublished.add_metric([], float(row[0] or 0))
        age = GaugeMetricFamily(
            "cloudmart_outbox_lag_seconds",
            "Age of the oldest outbox row of this process's events not yet published (0: none).",
        )
        age.add_metric([], max(0.0, (now() - row[1]).total_seconds()) if row[1] else 0.0)
        metrics: list[Metric] = [unpublished, age]
        if isinstance(self.bus, ReportsBacklog):
            pending = GaugeMetricFamily(
                "cloudmart_consumer_pending",
                "Events delivered to the group and not yet acknowledged (XPENDING).",
                labels=["group"],
            )
            lag = GaugeMetricFamily(
                "cloudmart_consumer_lag",
                "Events on the stream not yet delivered to the group (XINFO GROUPS lag).",
                labels=["group"],
            )
            dead = GaugeMetricFamily(
                "cloudmart_dlq_depth",
                "Messages in this service's dead-letter queue or stream.",
                labels=["queue"],
            )
            for service in self.services:
                backlog = await self.bus.backlog(service)
                pending.add_metric([service], backlog.pending)
                if backlog.lag is not None:
                    lag.add_metric([service], backlog.lag)
                dead.add_metric([backlog.dead_letters], backlog.dead)
            metrics += [pending, lag, dead]
        return metrics
