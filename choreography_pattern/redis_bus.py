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

This module holds the bus (publish, dead letters, backlog, trim, a consumer's life) and
:func:`tail`; a consumer's loops and the handling of an entry are
:class:`~choreography_pattern.redis_consumer.StreamConsumer`; the keys and the decoding of
entries :mod:`choreography_pattern.redis_entries`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError, ResponseError

from activities.faults import Outages
from choreography_pattern.bus import (
    DEFAULT_MAX_DELIVERIES,
    Backlog,
    BatchHandler,
    BeforeAck,
    ConsumerStats,
    Handler,
    redriven_fields,
)
from choreography_pattern.events import Event
from choreography_pattern.redis_consumer import StreamConsumer
from choreography_pattern.redis_entries import (
    Entry,
    StreamRead,
    as_text,
    dead_letter_key,
    decode_fields,
    entry_order,
    stream_key,
)

log = structlog.get_logger("choreography.redis")


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
        return as_text(await self.client.xadd(self.stream, fields))  # type: ignore[arg-type]

    async def dead_letters(self, group: str) -> list[dict[str, str]]:
        return [fields for _, fields in await self.dead_letter_entries(group)]

    async def dead_letter_entries(self, group: str) -> list[tuple[str, dict[str, str]]]:
        """``group``'s dead letters with their ids in the dead-letter stream, oldest first."""
        entries = cast(
            list[Entry], await self.client.xrange(dead_letter_key(self.namespace, group))
        )
        return [(as_text(entry_id), decode_fields(fields)[0]) for entry_id, fields in entries]

    async def redrive(self, group: str, dead_id: str) -> str | None:
        """Publish dead letter ``dead_id`` of ``group`` again and delete it, in one MULTI/EXEC;
        the new entry's id, or None when there is no such dead letter.

        The entry goes back on the one stream, so every group sees it again: those that had
        handled it skip it as a duplicate (its event id is the same), and ``group`` runs it.
        """
        key = dead_letter_key(self.namespace, group)
        found = cast(list[Entry], await self.client.xrange(key, min=dead_id, max=dead_id))
        if not found:
            return None
        fields, _ = decode_fields(found[0][1])
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(self.stream, redriven_fields(fields))  # type: ignore[arg-type]
            pipe.xdel(key, dead_id)
            new_id, _deleted = await pipe.execute()
        log.info("event.redriven", group=group, dead_id=dead_id, entry_id=as_text(new_id))
        return as_text(new_id)

    async def backlog(self, group: str) -> Backlog:
        """``group``'s pending entries and lag (XINFO GROUPS) and dead-letter length (XLEN)."""
        dead_key = dead_letter_key(self.namespace, group)
        try:
            groups = await self.client.xinfo_groups(self.stream)
        except ResponseError as exc:
            if "no such key" not in str(exc):
                raise
            groups = []  # nothing published yet: no stream, no backlog
        info = next((g for g in groups if as_text(g["name"]) == group), None)
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
        by_name = {as_text(g["name"]): g for g in info}
        if not groups or not set(groups) <= set(by_name):
            return 0
        needed: list[str] = []
        for name in groups:
            needed.append(as_text(by_name[name]["last-delivered-id"]))
            if int(by_name[name]["pending"]) > 0:
                summary = await self.client.xpending(self.stream, name)
                if summary["min"] is not None:  # acknowledged since XINFO: nothing pending
                    needed.append(as_text(summary["min"]))
        keep_from = min(needed, key=entry_order)
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
        runner = StreamConsumer(self, group, handler, types, before_ack, batch_handler)
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
                StreamRead | None,
                await client.xread({stream_key(namespace): last}, block=1000, count=100),
            )
            for _stream, entries in response or []:
                for entry_id, raw in entries:
                    last = as_text(entry_id)
                    yield last, decode_fields(raw)[0]
    finally:
        with contextlib.suppress(RedisError, OSError):
            await client.aclose()
