"""The event bus on Redis Streams: one stream, one consumer group per service.

Keys (all under the deployment's namespace, so test runs and deployments share one Redis):

- ``<ns>:events`` — the stream every service publishes to (XADD) and every group reads.
- ``<ns>:events:dead:<group>`` — a group's dead letters, with the reason and original id.

Why one stream: an order's events then sit in one log in publication order, which makes
``cloudmart events tail`` and debugging trivial; a group reads every entry and acknowledges the
types it does not handle without work: one XACK for all of them in a read. Four groups on one
stream cost each entry four reads, far below the database work per event.

Each consumer (one per service process, named ``<group>-<host>-<pid>-<random>``) reads new
entries with XREADGROUP ``>`` and acknowledges (XACK) each after its handler returned — after
the handler's transaction committed. With a batch handler, the events of one read go to it
together, a round of different orders at a time (one transaction each), and each round is
acknowledged in one XACK; a round that fails, and those after it, are handled one event at a
time as without it. Entries left pending by a consumer that died (or by a
handler that raised) are taken over with XAUTOCLAIM once idle for ``claim_idle`` seconds;
the entry's delivery count (XPENDING ``times_delivered``) decides when it has failed often
enough (``max_deliveries``) to be dead-lettered. A dead-lettered entry is XADDed to the dead
stream and XACKed in one MULTI/EXEC.

An entry whose handler meets an infrastructure fault is held by its consumer and run again
until the fault heals (:func:`choreography_pattern.bus.deliver`). Held or merely slow, an
entry this consumer is working on is claimed again by it (XCLAIM ``JUSTID``, which counts no
delivery) every half ``claim_idle``, so it never looks idle: no other consumer takes it over
and XAUTOCLAIM never counts a delivery against it; a consumer that stops while it holds one
sets its count back (XCLAIM ``RETRYCOUNT``), so the claim of the next consumer does not count
the stop as a failure. Redis itself going away is waited out by
every loop, logged once when it goes and once when it is back (:class:`activities.faults.Outages`).

The stream is trimmed (:meth:`RedisEventBus.trim`, every ``trim_interval`` seconds from each
consumer) below the oldest entry some group still needs: its oldest pending entry, or the
entries after its last delivered one. Nothing is trimmed until every group named in
``retain_for`` exists, since a group created later reads the stream from its start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError, ResponseError

from activities.faults import Outages, dependency_of
from choreography_pattern.bus import (
    DEFAULT_MAX_DELIVERIES,
    Backlog,
    BatchHandler,
    BeforeAck,
    ConsumerStats,
    Handler,
    Verdict,
    dead_letter_fields,
    deliver,
    redriven_fields,
    rounds,
)
from choreography_pattern.events import EVENT_TYPES, Event, MalformedEvent

log = structlog.get_logger("choreography.redis")

# What redis-py returns without decoding, which its type hints leave loose.
_Entry = tuple[bytes, dict[bytes, bytes]]
_StreamRead = list[tuple[bytes, list[_Entry]]]


def stream_key(namespace: str) -> str:
    return f"{namespace}:events"


def dead_letter_key(namespace: str, group: str) -> str:
    return f"{namespace}:events:dead:{group}"


def _decode(raw: dict[bytes, bytes]) -> tuple[dict[str, str], bool]:
    """The entry's fields as text; False when some were not UTF-8 (a malformed entry)."""
    try:
        return {k.decode(): v.decode() for k, v in raw.items()}, True
    except UnicodeDecodeError:
        return {
            k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()
        }, False


def _entry_order(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisEventBus:
    """:class:`choreography_pattern.bus.EventBus` on Redis Streams."""

    def __init__(
        self,
        client: aioredis.Redis,
        namespace: str,
        *,
        claim_idle: float = 30.0,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        batch: int = 64,
        concurrency: int = 16,
        block: float = 1.0,
        retain_for: Collection[str] = (),
        trim_interval: float = 60.0,
        outages: Outages | None = None,
    ) -> None:
        self.client = client
        self.outages = outages or Outages()
        self.namespace = namespace
        self.stream = stream_key(namespace)
        self._claim_idle_ms = max(1, int(claim_idle * 1000))
        self._max_deliveries = max_deliveries
        self._batch = batch
        self._concurrency = concurrency
        self._block_ms = max(1, int(block * 1000))
        self._retain_for = tuple(retain_for)
        self._trim_interval = trim_interval

    @classmethod
    def from_url(cls, url: str, namespace: str, **options: Any) -> RedisEventBus:
        return cls(aioredis.Redis.from_url(url, decode_responses=False), namespace, **options)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def ping(self) -> bool:
        return bool(await self.client.ping())

    async def publish(self, events: Sequence[Event]) -> None:
        if not events:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.xadd(self.stream, event.to_fields())  # type: ignore[arg-type]
            await pipe.execute()

    async def publish_fields(self, fields: dict[str, str]) -> str:
        """XADD a raw entry (tests use it for malformed entries and duplicates); its id."""
        return _text(await self.client.xadd(self.stream, fields))  # type: ignore[arg-type]

    async def dead_letters(self, group: str) -> list[dict[str, str]]:
        return [fields for _, fields in await self.dead_letter_entries(group)]

    async def dead_letter_entries(self, group: str) -> list[tuple[str, dict[str, str]]]:
        """``group``'s dead letters with their ids in the dead-letter stream, oldest first."""
        entries = cast(
            list[_Entry], await self.client.xrange(dead_letter_key(self.namespace, group))
        )
        return [(_text(entry_id), _decode(fields)[0]) for entry_id, fields in entries]

    async def redrive(self, group: str, dead_id: str) -> str | None:
        """Publish dead letter ``dead_id`` of ``group`` again and delete it, in one MULTI/EXEC;
        the new entry's id, or None when there is no such dead letter.

        The entry goes back on the one stream, so every group sees it again: those that had
        handled it skip it as a duplicate (its event id is the same), and ``group`` runs it.
        """
        key = dead_letter_key(self.namespace, group)
        found = cast(list[_Entry], await self.client.xrange(key, min=dead_id, max=dead_id))
        if not found:
            return None
        fields, _ = _decode(found[0][1])
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(self.stream, redriven_fields(fields))  # type: ignore[arg-type]
            pipe.xdel(key, dead_id)
            new_id, _deleted = await pipe.execute()
        log.info("event.redriven", group=group, dead_id=dead_id, entry_id=_text(new_id))
        return _text(new_id)

    async def backlog(self, group: str) -> Backlog:
        """``group``'s pending entries and lag (XINFO GROUPS) and dead-letter length (XLEN)."""
        dead_key = dead_letter_key(self.namespace, group)
        try:
            groups = await self.client.xinfo_groups(self.stream)
        except ResponseError as exc:
            if "no such key" not in str(exc):
                raise
            groups = []  # nothing published yet: no stream, no backlog
        info = next((g for g in groups if _text(g["name"]) == group), None)
        dead = int(await self.client.xlen(dead_key))
        if info is None:
            return Backlog(pending=0, lag=0, dead=dead, dead_letters=dead_key)
        lag = info.get("lag")
        return Backlog(
            pending=int(info["pending"]),
            lag=None if lag is None else int(lag),
            dead=dead,
            dead_letters=dead_key,
        )

    async def trim(self, groups: Collection[str]) -> int:
        """Delete the entries every group in ``groups`` has read and acknowledged.

        Keeps everything from the oldest entry a group still needs (its oldest pending entry,
        or the one after its last delivered entry); trims nothing while one of ``groups`` does
        not exist yet. Returns how many entries went.
        """
        try:
            info = await self.client.xinfo_groups(self.stream)
        except ResponseError:  # no stream yet
            return 0
        by_name = {_text(g["name"]): g for g in info}
        if not groups or not set(groups) <= set(by_name):
            return 0
        needed: list[str] = []
        for name in groups:
            needed.append(_text(by_name[name]["last-delivered-id"]))
            if int(by_name[name]["pending"]) > 0:
                summary = await self.client.xpending(self.stream, name)
                if summary["min"] is not None:  # acknowledged since XINFO: nothing pending
                    needed.append(_text(summary["min"]))
        keep_from = min(needed, key=_entry_order)
        if keep_from == "0-0":
            return 0
        # MINID deletes ids below keep_from; the last delivered entry itself stays (harmless)
        removed = int(await self.client.xtrim(self.stream, minid=keep_from, approximate=False))
        if removed:
            log.info("events.trimmed", removed=removed, keep_from=keep_from)
        return removed

    async def ensure_group(self, group: str) -> None:
        """Create ``group`` on the stream (from its start) unless it exists."""
        try:
            await self.client.xgroup_create(self.stream, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    @asynccontextmanager
    async def consumer(
        self,
        group: str,
        handler: Handler,
        *,
        types: Collection[str] | None = None,
        before_ack: BeforeAck | None = None,
        batch_handler: BatchHandler | None = None,
    ) -> AsyncIterator[ConsumerStats]:
        await self.ensure_group(group)
        runner = _Consumer(self, group, handler, types, before_ack, batch_handler)
        tasks = [
            asyncio.create_task(runner.read()),
            asyncio.create_task(runner.claim()),
            asyncio.create_task(runner.keep_claimed()),
        ]
        if self._retain_for:
            tasks.append(asyncio.create_task(runner.trim()))
        try:
            yield runner.stats
        finally:
            await runner.stop(tasks, grace=self._block_ms / 1000 + 5.0)


class _Consumer:
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
                _StreamRead | None,
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
                self.in_flight.update(_text(entry_id) for entry_id, _ in entries)
                ignored: list[str] = []
                alone: list[tuple[str, dict[bytes, bytes]]] = []
                together: list[tuple[str, Event]] = []
                for entry_id, raw in entries:
                    if self._ignores(raw):
                        ignored.append(_text(entry_id))
                    elif (event := self._batchable(raw)) is None:
                        alone.append((_text(entry_id), raw))
                    else:
                        together.append((_text(entry_id), event))
                if ignored:  # one XACK for all of them; if it fails, they are claimed later
                    try:
                        await self.client.xack(self.bus.stream, self.group, *ignored)
                    finally:
                        self.in_flight.difference_update(ignored)
                for one_id, one_raw in alone:
                    await self.slots.acquire()
                    self._spawn(one_id, one_raw)
                if together:
                    await self._handle_together(together, {_text(i): raw for i, raw in entries})

        await self._resilient("read", step)

    def _batchable(self, raw: dict[bytes, bytes]) -> Event | None:
        """The event of an entry this consumer may hand to its batch handler: well formed,
        of a type it handles; None for any other (it goes through :meth:`_process`)."""
        if self.batch_handler is None:
            return None
        fields, readable = _decode(raw)
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
            cursor = _text(response[0])
            for entry_id, raw in response[1]:
                entry_id = _text(entry_id)
                if entry_id in self.in_flight or raw is None:
                    continue
                self.stats.claimed += 1
                self.in_flight.add(entry_id)
                deliveries = await self._deliveries(entry_id)
                if deliveries > self.bus._max_deliveries:
                    fields, _ = _decode(raw)
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
            fields, readable = _decode(raw)
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


async def tail(
    url: str, namespace: str, stop: asyncio.Event | None = None
) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """Entries as they are added to the stream from now on (XREAD from ``$``), until ``stop``
    is set (checked at least every second)."""
    client = aioredis.Redis.from_url(url, decode_responses=False)
    try:
        last = "$"
        while stop is None or not stop.is_set():
            response = cast(
                _StreamRead | None,
                await client.xread({stream_key(namespace): last}, block=1000, count=100),
            )
            for _stream, entries in response or []:
                for entry_id, raw in entries:
                    last = _text(entry_id)
                    yield last, _decode(raw)[0]
    finally:
        with contextlib.suppress(RedisError, OSError):
            await client.aclose()
