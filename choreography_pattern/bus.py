"""The event bus port, what every adapter shares, and the in-process adapter.

::

    EventBus.publish(events)                 append events to the bus (at least once)
    EventBus.consumer(group, handler, ...)   async context manager: while open, every event
                                             published reaches ``handler`` in this group
                                             (once per group, however many consumers it has)
                                             or, several at once, ``batch_handler``
    EventBus.dead_letters(group)             what the group gave up on

Delivery is at least once: an entry is acknowledged only after ``handler`` returned (so after
the handler's database transaction committed). A handler that fails on an infrastructure fault
(:func:`activities.faults.is_infrastructure_fault`: the database, a broker or the network did
not answer) is run again on the same delivery, after a capped back-off, until the fault heals:
the entry stays unacknowledged meanwhile and no delivery is counted
(:meth:`activities.faults.Outages.wait_out`). A handler that raises anything else leaves the
entry unacknowledged and it is delivered again, up to ``max_deliveries`` times, then moved to
the group's dead-letter list. An entry that does not decode as an event
(:class:`MalformedEvent`) is dead-lettered at once; the consumer carries on. Handlers must
therefore be idempotent — the choreography's are (see :mod:`choreography_pattern.handlers`).

A consumer given a ``batch_handler`` may hand it several events of *different orders* at
once (the Redis bus: those of one read): it handles them all, or raises and has done none of
them; the events are then handed to ``handler`` one by one, as without it, so a failing event
fails (and is dead-lettered) alone. Events of one order reach it in separate calls, in the order
they were read. The in-process bus hands every event to ``handler``.

A dead letter is the entry's fields plus ``dead_entry_id``, ``dead_group``, ``dead_reason``
(the last failure), ``dead_deliveries`` and ``dead_at`` (:func:`dead_letter_fields`);
:func:`redriven_fields` is the entry to publish again.

Two adapters obey this contract (``tests/contract/test_choreography_bus_contract.py``):
:class:`InMemoryEventBus` here (an asyncio fan-out per group: embedded mode and unit tests) and
:class:`choreography_pattern.redis_bus.RedisEventBus` (Redis Streams, consumer groups).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Protocol, runtime_checkable

import structlog

from activities.faults import Outages
from choreography_pattern.events import Event, MalformedEvent

log = structlog.get_logger("choreography.bus")

Handler = Callable[[Event], Awaitable[None]]
BatchHandler = Callable[[Sequence[Event]], Awaitable[None]]
BeforeAck = Callable[[Event], None]
DEFAULT_MAX_DELIVERIES = 5


@dataclass
class ConsumerStats:
    """What one consumer did, for metrics and tests."""

    handled: int = 0
    failed: int = 0
    dead_lettered: int = 0
    claimed: int = 0


class Verdict(Enum):
    DONE = "done"  # handled: acknowledge
    SKIP = "skip"  # not a type this group handles: acknowledge
    DEAD = "dead"  # malformed: dead-letter now
    RETRY = "retry"  # the handler failed (not on a fault): leave it for another delivery


class EventBus(Protocol):
    async def publish(self, events: Sequence[Event]) -> None: ...

    def consumer(
        self,
        group: str,
        handler: Handler,
        *,
        types: Collection[str] | None = None,
        before_ack: BeforeAck | None = None,
        batch_handler: BatchHandler | None = None,
    ) -> AbstractAsyncContextManager[ConsumerStats]: ...

    async def dead_letters(self, group: str) -> list[dict[str, str]]: ...


@dataclass(frozen=True)
class Backlog:
    """A consumer group's backlog, for metrics.

    ``pending``: delivered, not yet acknowledged; ``lag``: not yet delivered to the group
    (``None`` when the bus cannot tell); ``dead``: entries in the group's dead letters, kept
    under the name ``dead_letters``.
    """

    pending: int
    lag: int | None
    dead: int
    dead_letters: str


@runtime_checkable
class ReportsBacklog(Protocol):
    """A bus that can tell a group's backlog (the Redis one; metrics read it on scrape)."""

    async def backlog(self, group: str) -> Backlog: ...


async def deliver(
    group: str,
    fields: dict[str, str],
    handler: Handler,
    types: Collection[str] | None,
    stats: ConsumerStats,
    outages: Outages,
    on_fault: Callable[[str], Awaitable[None]] | None = None,
) -> tuple[Verdict, Event | None, str]:
    """Decode one entry and run ``handler`` on it; the verdict, the event and a reason.

    An infrastructure fault is waited out here (``outages``; ``on_fault(dependency)`` at each
    pause): it never becomes a verdict.
    """
    try:
        event = Event.from_fields(fields)
    except MalformedEvent as exc:
        return Verdict.DEAD, None, str(exc)
    if types is not None and event.type not in types:
        return Verdict.SKIP, event, ""
    try:
        # The order id is the correlation id: every line logged while handling it carries it.
        with structlog.contextvars.bound_contextvars(
            order_id=event.order_id, event_type=event.type, event_id=event.event_id
        ):
            await outages.wait_out(
                lambda: handler(event), on_fault=on_fault, group=group, event_type=event.type
            )
    except Exception as exc:  # neither done nor a fault: redelivered later, dead after max tries
        stats.failed += 1
        log.warning(
            "event.handler_failed",
            group=group,
            event_type=event.type,
            order_id=event.order_id,
            error_type=type(exc).__name__,
            error=str(exc),
        )
        return Verdict.RETRY, event, f"{type(exc).__name__}: {exc}"
    stats.handled += 1
    return Verdict.DONE, event, ""


def rounds(events: Sequence[tuple[str, Event]]) -> list[list[tuple[str, Event]]]:
    """``events`` (with their entry ids) in rounds of different orders: round k holds each
    order's k-th event, so that an order's events stay in the order they came in."""
    out: list[list[tuple[str, Event]]] = []
    seen: dict[str, int] = {}
    for entry in events:
        k = seen.get(entry[1].order_id, 0)
        seen[entry[1].order_id] = k + 1
        if k == len(out):
            out.append([])
        out[k].append(entry)
    return out


DEAD_LETTER_FIELDS = ("dead_entry_id", "dead_group", "dead_reason", "dead_deliveries", "dead_at")


def dead_letter_fields(
    fields: dict[str, str], entry_id: str, reason: str, *, group: str = "", deliveries: int = 0
) -> dict[str, str]:
    """The dead letter of entry ``entry_id`` (``fields``): what failed, how often, when."""
    return {
        **redriven_fields(fields),
        "dead_entry_id": entry_id,
        "dead_group": group,
        "dead_reason": reason[:1000],
        "dead_deliveries": str(deliveries),
        "dead_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }


def redriven_fields(dead: dict[str, str]) -> dict[str, str]:
    """The entry a dead letter came from, to publish again (its ``dead_*`` fields gone)."""
    return {key: value for key, value in dead.items() if key not in DEAD_LETTER_FIELDS}


@dataclass
class _Group:
    queue: asyncio.Queue[tuple[str, dict[str, str]]]
    dead: list[dict[str, str]]


class InMemoryEventBus:
    """The bus inside one process: every group gets its own queue of every event.

    A group created after events were published still receives them (like a Redis group
    created from id 0). :meth:`drain` waits until every group's queue is empty and no
    handler is running — the unit tests' ``run_until_idle``.
    """

    def __init__(
        self,
        *,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        retry_delay: float = 0.01,
        concurrency: int = 16,
        outages: Outages | None = None,
    ) -> None:
        self.outages = outages or Outages()
        self._log: list[tuple[str, dict[str, str]]] = []
        self._groups: dict[str, _Group] = {}
        self._ids = itertools.count(1)
        self._max_deliveries = max_deliveries
        self._retry_delay = retry_delay
        self._concurrency = concurrency
        self._busy = 0
        self._pending_retries = 0
        self._changed = asyncio.Condition()

    def _group(self, name: str) -> _Group:
        group = self._groups.get(name)
        if group is None:
            group = _Group(asyncio.Queue(), [])
            for entry in self._log:
                group.queue.put_nowait(entry)
            self._groups[name] = group
        return group

    async def publish(self, events: Sequence[Event]) -> None:
        for event in events:
            await self.publish_fields(event.to_fields())

    async def publish_fields(self, fields: dict[str, str]) -> str:
        """Append a raw entry (tests use it for malformed ones); its id."""
        entry = (f"{next(self._ids)}-0", dict(fields))
        self._log.append(entry)
        for group in self._groups.values():
            group.queue.put_nowait(entry)
        return entry[0]

    async def dead_letters(self, group: str) -> list[dict[str, str]]:
        return list(self._group(group).dead)

    @property
    def published(self) -> list[dict[str, str]]:
        return [fields for _, fields in self._log]

    async def drain(self) -> None:
        """Wait until no entry is queued, retried or being handled in any running group."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: (
                    self._busy == 0
                    and self._pending_retries == 0
                    and all(g.queue.empty() for g in self._groups.values())
                )
            )

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    @asynccontextmanager
    async def consumer(
        self,
        group: str,
        handler: Handler,
        *,
        types: Collection[str] | None = None,
        before_ack: BeforeAck | None = None,
        batch_handler: BatchHandler | None = None,  # this bus hands every event to handler
    ) -> AsyncIterator[ConsumerStats]:
        state = self._group(group)
        stats = ConsumerStats()
        deliveries: dict[str, int] = {}
        slots = asyncio.Semaphore(self._concurrency)
        tasks: set[asyncio.Task[None]] = set()

        def requeue(entry: tuple[str, dict[str, str]]) -> None:
            self._pending_retries -= 1
            state.queue.put_nowait(entry)

        async def one(entry: tuple[str, dict[str, str]]) -> None:
            entry_id, fields = entry
            try:
                deliveries[entry_id] = deliveries.get(entry_id, 0) + 1
                verdict, event, reason = await deliver(
                    group, fields, handler, types, stats, self.outages
                )
                if verdict is Verdict.RETRY and deliveries[entry_id] < self._max_deliveries:
                    self._pending_retries += 1
                    asyncio.get_running_loop().call_later(self._retry_delay, requeue, entry)
                elif verdict in (Verdict.RETRY, Verdict.DEAD):
                    state.dead.append(
                        dead_letter_fields(
                            fields, entry_id, reason, group=group, deliveries=deliveries[entry_id]
                        )
                    )
                    stats.dead_lettered += 1
                    log.error("event.dead_lettered", group=group, entry_id=entry_id, reason=reason)
                elif verdict is Verdict.DONE and before_ack is not None and event is not None:
                    before_ack(event)
            finally:
                self._busy -= 1
                slots.release()
                await self._notify()

        async def pump() -> None:
            while True:
                entry = await state.queue.get()
                await slots.acquire()
                self._busy += 1
                task = asyncio.create_task(one(entry))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        pumping = asyncio.create_task(pump())
        try:
            yield stats
        finally:
            pumping.cancel()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(pumping, *tasks, return_exceptions=True)
