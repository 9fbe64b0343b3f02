"""One consumer of a group on the stream (:mod:`choreography_pattern.redis_bus` says how the
bus works): the loops that read new entries, take over idle ones (XAUTOCLAIM), keep the ones in
hand claimed and trim the stream, and the handling of one entry to its verdict (acknowledged,
left pending to be delivered again, or dead-lettered).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, cast

import structlog
from redis.exceptions import ResponseError

from activities.faults import dependency_of
from choreography_pattern.bus import (
    BatchHandler,
    BeforeAck,
    ConsumerStats,
    Handler,
    Verdict,
    dead_letter_fields,
    deliver,
    rounds,
)
from choreography_pattern.events import EVENT_TYPES, Event, MalformedEvent
from choreography_pattern.redis_entries import (
    StreamRead,
    as_text,
    dead_letter_key,
    decode_fields,
)

log = structlog.get_logger("choreography.redis")

if TYPE_CHECKING:
    from choreography_pattern.redis_bus import RedisEventBus

__all__ = ["StreamConsumer"]


class StreamConsumer:
    """One consumer of ``group`` (made by :meth:`RedisEventBus.consumer`, which runs its loops)."""

    def __init__(
        self,
        bus: RedisEventBus,
        group: str,
        handler: Handler,
        types: Collection[str] | None,
        before_ack: BeforeAck | None,
        batch_handler: BatchHandler | None = None,
    ) -> None:
        self.bus = bus
        self.batch_handler = batch_handler
        self.client = bus.client
        self.group = group
        self.handler = handler
        self.types = types
        self.before_ack = before_ack
        self.name = f"{group}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.stats = ConsumerStats()
        self.outages = bus.outages
        self.slots = asyncio.Semaphore(bus._concurrency)
        self.in_flight: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()

    async def stop(self, loops: list[asyncio.Task[None]], *, grace: float) -> None:
        """Let the loops finish their current command and the handlers their event, then
        cancel what is left after ``grace`` seconds.

        Cancelling a Redis command between its request and its reply can put the connection
        back in the pool with the reply still unread, and the next command on it then waits
        for an answer that never comes: so a stop asks first and cancels only stragglers.
        """
        self.stopping.set()
        for group in (loops, list(self.tasks)):
            if not group:
                continue
            _, late = await asyncio.wait(group, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*group, return_exceptions=True)

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when the consumer is stopping."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    def _spawn(self, entry_id: str, raw: dict[bytes, bytes]) -> None:
        task = asyncio.create_task(self._process(entry_id, raw))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _resilient(self, what: str, step: Any) -> None:
        """Run ``step`` until the consumer stops; survive Redis going away (and the group
        with a restart). An outage is logged once, by :attr:`outages`, not once per turn."""
        failures = 0
        lost: set[str] = set()
        while not self.stopping.is_set():
            try:
                await step()
                self.outages.restore_all(lost)
                failures = 0
            except Exception as exc:
                dependency = dependency_of(exc)
                if dependency is not None:
                    failures += 1
                    lost.add(dependency)
                    self.outages.lost(dependency, exc, group=self.group, loop=what)
                    await self._pause(self.outages.backoff.delay(failures))
                    continue
                if isinstance(exc, ResponseError) and "NOGROUP" in str(exc):
                    await self.bus.ensure_group(self.group)  # Redis restarted without the group
                    continue
                # A loop that died would stop this consumer for good, silently: log, go on.
                log.exception(f"events.{what}_failed", group=self.group)
                await self._pause(1.0)

    async def read(self) -> None:
        async def step() -> None:
            await self.slots.acquire()
            self.slots.release()
            response = cast(
                StreamRead | None,
                await self.client.xreadgroup(
                    self.group,
                    self.name,
                    {self.bus.stream: ">"},
                    count=self.bus._batch,
                    block=self.bus._block_ms,
                ),
            )
            for _stream, entries in response or []:
                # Taken now, handled as slots free up: the claimer must not take them too.
                self.in_flight.update(as_text(entry_id) for entry_id, _ in entries)
                ignored: list[str] = []
                alone: list[tuple[str, dict[bytes, bytes]]] = []
                together: list[tuple[str, Event]] = []
                for entry_id, raw in entries:
                    if self._ignores(raw):
                        ignored.append(as_text(entry_id))
                    elif (event := self._batchable(raw)) is None:
                        alone.append((as_text(entry_id), raw))
                    else:
                        together.append((as_text(entry_id), event))
                if ignored:  # one XACK for all of them; if it fails, they are claimed later
                    try:
                        await self.client.xack(self.bus.stream, self.group, *ignored)
                    finally:
                        self.in_flight.difference_update(ignored)
                for one_id, one_raw in alone:
                    await self.slots.acquire()
                    self._spawn(one_id, one_raw)
                if together:
                    await self._handle_together(together, {as_text(i): raw for i, raw in entries})

        await self._resilient("read", step)

    def _batchable(self, raw: dict[bytes, bytes]) -> Event | None:
        """The event of an entry this consumer may hand to its batch handler: well formed,
        of a type it handles; None for any other (it goes through :meth:`_process`)."""
        if self.batch_handler is None:
            return None
        fields, readable = decode_fields(raw)
        if not readable:
            return None
        try:
            event = Event.from_fields(fields)
        except MalformedEvent:
            return None
        return event if self.types is None or event.type in self.types else None

    async def _handle_together(
        self, events: list[tuple[str, Event]], raw: dict[str, dict[bytes, bytes]]
    ) -> None:
        """Hand ``events`` to the batch handler, a round of different orders at a time, and
        acknowledge each round in one XACK. A round that fails (none of it done) and every
        round after it go through :meth:`_process` one event at a time instead."""
        assert self.batch_handler is not None
        left = rounds(events)
        try:
            while left:
                batch = left[0]
                try:
                    await self.batch_handler([event for _, event in batch])
                except Exception as exc:
                    log.info(
                        "events.batch_failed",
                        group=self.group,
                        events=len(batch),
                        error_type=type(exc).__name__,
                        error=str(exc),
                    )
                    break
                left.pop(0)
                self.stats.handled += len(batch)
                done = [entry_id for entry_id, _ in batch]
                try:
                    if self.before_ack is not None:
                        for _, event in batch:
                            self.before_ack(event)
                    await self.client.xack(self.bus.stream, self.group, *done)
                finally:
                    self.in_flight.difference_update(done)
        except BaseException:
            # Redis failed under the XACK, or the consumer stops: what is left stays pending
            # and is claimed again (what was done is then skipped as a duplicate).
            for batch in left:
                self.in_flight.difference_update(entry_id for entry_id, _ in batch)
            raise
        for batch in left:  # one at a time, as a delivery without a batch handler
            for entry_id, _ in batch:
                await self.slots.acquire()
                self._spawn(entry_id, raw[entry_id])

    def _ignores(self, raw: dict[bytes, bytes]) -> bool:
        """A well-named event of a type this group does not handle (nothing to run)."""
        if self.types is None:
            return False
        event_type = raw.get(b"type", b"").decode(errors="replace")
        return event_type in EVENT_TYPES and event_type not in self.types

    async def trim(self) -> None:
        async def step() -> None:
            await self._pause(self.bus._trim_interval)
            if not self.stopping.is_set():
                await self.bus.trim(self.bus._retain_for)

        await self._resilient("trim", step)

    async def claim(self) -> None:
        interval = max(0.05, self.bus._claim_idle_ms / 2000)
        cursor = "0-0"

        async def step() -> None:
            nonlocal cursor
            await self._pause(interval)
            if self.stopping.is_set():
                return
            # What this consumer holds is touched (JUSTID: no delivery counted) in the same
            # MULTI as the claim, so that the claim never finds one of them idle, however long
            # the process was held up since keep_claimed last ran.
            async with self.client.pipeline(transaction=True) as pipe:
                held = list(self.in_flight)
                if held:
                    self._touch(pipe, held)
                pipe.xautoclaim(
                    self.bus.stream,
                    self.group,
                    self.name,
                    min_idle_time=self.bus._claim_idle_ms,
                    start_id=cursor,
                    count=self.bus._batch,
                )
                response = (await pipe.execute())[-1]
            cursor = as_text(response[0])
            for entry_id, raw in response[1]:
                entry_id = as_text(entry_id)
                if entry_id in self.in_flight or raw is None:
                    continue
                self.stats.claimed += 1
                self.in_flight.add(entry_id)
                deliveries = await self._deliveries(entry_id)
                if deliveries > self.bus._max_deliveries:
                    fields, _ = decode_fields(raw)
                    await self._dead_letter(
                        entry_id, fields, "delivered too many times", deliveries
                    )
                    self.in_flight.discard(entry_id)
                    continue
                await self.slots.acquire()
                self._spawn(entry_id, raw)

        await self._resilient("claim", step)

    async def keep_claimed(self) -> None:
        """Every half ``claim_idle``, reset the idle time of every entry this consumer holds
        (see the module docstring): a loop of its own, so that nothing it waits for (a free
        slot, a handler) can hold it up."""
        interval = max(0.05, self.bus._claim_idle_ms / 2000)

        async def step() -> None:
            await self._pause(interval)
            held = list(self.in_flight)
            if held and not self.stopping.is_set():
                await self._touch(self.client, held)

        await self._resilient("keep_claimed", step)

    def _touch(self, redis: Any, held: list[str]) -> Any:
        """Reset the idle time of the entries ``held`` by this consumer, counting no delivery
        (XCLAIM ``JUSTID``), on ``redis``: a client (await the result) or a pipeline (queued)."""
        return redis.xclaim(
            self.bus.stream,
            self.group,
            self.name,
            min_idle_time=0,
            message_ids=held,
            justid=True,
        )

    async def _uncount(self, entry_id: str) -> None:
        """Take back the delivery the next consumer's claim will count: this consumer stops
        while it holds ``entry_id`` on an infrastructure fault, which is no failed delivery
        (XCLAIM ``RETRYCOUNT`` sets the count; ``JUSTID`` adds none)."""
        try:
            delivered = await self._deliveries(entry_id)
            if delivered:
                await self.client.xclaim(
                    self.bus.stream,
                    self.group,
                    self.name,
                    min_idle_time=0,
                    message_ids=[entry_id],
                    retrycount=delivered - 1,
                    justid=True,
                )
        except Exception as exc:
            dependency = dependency_of(exc)
            if dependency is None:
                raise
            self.outages.lost(dependency, exc, group=self.group)  # counted once more, then

    async def _deliveries(self, entry_id: str) -> int:
        pending = await self.client.xpending_range(
            self.bus.stream, self.group, min=entry_id, max=entry_id, count=1
        )
        return int(pending[0]["times_delivered"]) if pending else 0

    async def _dead_letter(
        self, entry_id: str, fields: dict[str, str], reason: str, deliveries: int | None = None
    ) -> None:
        if deliveries is None:
            deliveries = await self._deliveries(entry_id)
        dead = dead_letter_fields(fields, entry_id, reason, group=self.group, deliveries=deliveries)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(
                dead_letter_key(self.bus.namespace, self.group),
                dead,  # type: ignore[arg-type]
            )
            pipe.xack(self.bus.stream, self.group, entry_id)
            await pipe.execute()
        self.stats.dead_lettered += 1
        log.error("event.dead_lettered", group=self.group, entry_id=entry_id, reason=reason)

    async def _process(self, entry_id: str, raw: dict[bytes, bytes]) -> None:
        held = False

        async def on_fault(_dependency: str) -> None:
            nonlocal held
            held = True

        try:
            fields, readable = decode_fields(raw)
            if not readable:
                await self._dead_letter(entry_id, fields, "entry is not UTF-8")
                return
            try:
                verdict, event, reason = await deliver(
                    self.group,
                    fields,
                    self.handler,
                    self.types,
                    self.stats,
                    self.outages,
                    on_fault=on_fault,
                )
            except asyncio.CancelledError:
                if held:
                    await self._uncount(entry_id)
                raise
            if verdict is Verdict.DEAD:
                await self._dead_letter(entry_id, fields, reason)
            elif verdict is Verdict.RETRY:
                # Left pending: XAUTOCLAIM delivers it again after claim_idle; counted there.
                deliveries = await self._deliveries(entry_id)
                if deliveries >= self.bus._max_deliveries:
                    await self._dead_letter(entry_id, fields, reason, deliveries)
            else:
                if verdict is Verdict.DONE and self.before_ack is not None and event is not None:
                    self.before_ack(event)
                await self.client.xack(self.bus.stream, self.group, entry_id)
        except Exception as exc:
            dependency = dependency_of(exc)
            if dependency is None:
                raise
            # The entry stays pending and is claimed again once Redis is back.
            self.outages.lost(dependency, exc, group=self.group, entry_id=entry_id)
        finally:
            self.in_flight.discard(entry_id)
            self.slots.release()
