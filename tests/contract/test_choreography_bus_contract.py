"""One contract for every event bus adapter: the in-process bus and Redis Streams.

Each test names what every adapter must do: fan-out per group, at-least-once delivery with
redelivery of failed entries, dead-lettering after too many deliveries, malformed entries
dead-lettered at once without stopping the consumer, infrastructure faults waited out without
counting a delivery, and type filtering.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from conftest import TEST_REDIS_URL, until
from sqlalchemy import exc as sa_exc

from activities.faults import DATABASE, Backoff, Outages
from choreography_pattern import Event, InMemoryEventBus
from choreography_pattern import events as ev
from choreography_pattern.redis_bus import RedisEventBus


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield InMemoryEventBus(max_deliveries=3, retry_delay=0.01, outages=fast_outages())
        return
    async with redis_bus_and_client() as (redis_bus, _client):
        yield redis_bus


@asynccontextmanager
async def redis_bus_and_client() -> AsyncIterator[tuple[RedisEventBus, aioredis.Redis]]:
    """A Redis bus in a namespace of its own and a plain client; every key of the namespace is
    deleted afterwards."""
    namespace = f"test-bus-{uuid.uuid4().hex[:8]}"
    redis_bus = RedisEventBus.from_url(
        TEST_REDIS_URL,
        namespace,
        claim_idle=0.1,
        max_deliveries=3,
        block=0.1,
        outages=fast_outages(),
    )
    client = aioredis.Redis.from_url(TEST_REDIS_URL)
    try:
        yield redis_bus, client
    finally:
        keys = [k async for k in client.scan_iter(match=f"{namespace}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        await redis_bus.aclose()


def fast_outages() -> Outages:
    return Outages(backoff=Backoff(initial=0.01, maximum=0.05))


def database_away_error() -> Exception:
    return sa_exc.OperationalError("SELECT 1", {}, Exception("Can't connect to MySQL server"))


def created(order_id: str | None = None) -> Event:
    return Event(ev.ORDER_CREATED, order_id or uuid.uuid4().hex, {"customer_id": 1})


async def test_every_group_receives_every_event_once(bus: Any) -> None:
    seen: dict[str, list[str]] = {"a": [], "b": []}

    def recorder(group: str) -> Any:
        async def handler(event: Event) -> None:
            seen[group].append(event.event_id)

        return handler

    events = [created() for _ in range(5)]
    async with bus.consumer("a", recorder("a")), bus.consumer("b", recorder("b")):
        await bus.publish(events)
        await until(lambda: len(seen["a"]) == 5 and len(seen["b"]) == 5, timeout=10)
    assert sorted(seen["a"]) == sorted(seen["b"]) == sorted(e.event_id for e in events)


async def test_events_published_before_the_group_exists_are_delivered(bus: Any) -> None:
    event = created()
    await bus.publish([event])
    got: list[Event] = []

    async def handler(e: Event) -> None:
        got.append(e)

    async with bus.consumer("late", handler):
        await until(lambda: got, timeout=10)
    assert got[0].event_id == event.event_id and got[0].payload == {"customer_id": 1}


async def test_a_failing_handler_gets_the_event_again_until_it_succeeds(bus: Any) -> None:
    attempts: list[int] = []

    async def flaky(event: Event) -> None:
        attempts.append(1)
        if len(attempts) < 2:
            raise RuntimeError("database away")

    async with bus.consumer("g", flaky) as stats:
        await bus.publish([created()])
        await until(lambda: stats.handled == 1, timeout=10)
    assert len(attempts) == 2
    assert await bus.dead_letters("g") == []


async def test_an_infrastructure_fault_is_waited_out_without_counting_a_delivery(
    bus: Any,
) -> None:
    # Failing on the database more often than max_deliveries (3) allows, for longer than
    # claim_idle (Redis: 0.1 s): held and run again until it succeeds, never dead-lettered.
    attempts: list[int] = []

    async def database_down_for_a_while(event: Event) -> None:
        attempts.append(1)
        if len(attempts) <= 8:
            raise database_away_error()

    async with bus.consumer("g", database_down_for_a_while) as stats:
        await bus.publish([created()])
        await until(lambda: stats.handled == 1, timeout=15)
    assert len(attempts) == 9
    assert (stats.failed, stats.dead_lettered, stats.claimed) == (0, 0, 0)
    assert bus.outages.retries[DATABASE] == 8 and bus.outages.waiting[DATABASE] == 0
    assert not bus.outages.is_down(DATABASE)
    assert await bus.dead_letters("g") == []


async def test_an_event_that_always_fails_is_dead_lettered_and_counted(bus: Any) -> None:
    async def broken(event: Event) -> None:
        raise RuntimeError("cannot handle")

    event = created()
    async with bus.consumer("g", broken) as stats:
        await bus.publish([event])
        await until(lambda: stats.dead_lettered == 1, timeout=15)
    dead = await bus.dead_letters("g")
    assert [d["event_id"] for d in dead] == [event.event_id]
    assert "cannot handle" in dead[0]["dead_reason"] or "too many" in dead[0]["dead_reason"]
    # what `cloudmart dead-letters list` shows
    assert dead[0]["dead_group"] == "g" and int(dead[0]["dead_deliveries"]) >= 3
    assert datetime.fromisoformat(dead[0]["dead_at"]).tzinfo is not None


async def test_a_malformed_entry_is_dead_lettered_at_once_and_the_consumer_goes_on(
    bus: Any,
) -> None:
    calls: list[str] = []

    async def handler(event: Event) -> None:
        calls.append(event.order_id)

    async with bus.consumer("g", handler) as stats:
        await bus.publish_fields({"type": "NoSuchEvent", "order_id": "x"})
        await bus.publish_fields({"garbage": "\x00{"})
        await bus.publish([created("after")])
        await until(lambda: calls == ["after"] and stats.dead_lettered == 2, timeout=10)
    assert stats.failed == 0
    assert len(await bus.dead_letters("g")) == 2


async def test_a_group_only_handles_the_types_it_asks_for(bus: Any) -> None:
    got: list[str] = []

    async def handler(event: Event) -> None:
        got.append(event.type)

    async with bus.consumer("g", handler, types={ev.STOCK_RESERVED}):
        await bus.publish([created(), Event(ev.STOCK_RESERVED, "o1", {}), created()])
        await bus.publish([Event(ev.STOCK_RESERVED, "o2", {})])
        await until(lambda: len(got) == 2, timeout=10)
    assert got == [ev.STOCK_RESERVED, ev.STOCK_RESERVED]


@pytest.mark.redis
async def test_redis_acks_the_types_a_group_ignores_and_dead_letters_unknown_ones() -> None:
    got: list[str] = []

    async def handler(event: Event) -> None:
        got.append(event.type)

    async with redis_bus_and_client() as (redis_bus, client):

        async def nothing_pending() -> bool:
            return int((await client.xpending(redis_bus.stream, "g"))["pending"]) == 0

        async with redis_bus.consumer("g", handler, types={ev.STOCK_RESERVED}) as stats:
            await redis_bus.publish([created(), created(), Event(ev.STOCK_RESERVED, "o1", {})])
            await redis_bus.publish_fields({"type": "NoSuchEvent", "order_id": "x"})
            await until(lambda: got == [ev.STOCK_RESERVED] and stats.dead_lettered == 1)
            await until(nothing_pending)  # the ignored ones were acknowledged too
        assert got == [ev.STOCK_RESERVED]


@pytest.mark.redis
async def test_redis_consumer_recreates_its_group_when_the_stream_was_lost() -> None:
    # A Redis restarted without its data: the stream and every group are gone. The next
    # XADD creates the stream without groups; the consumer's read then fails with NOGROUP,
    # and the consumer must create its group again and go on, not stop or spin on errors.
    got: list[str] = []

    async def handler(event: Event) -> None:
        got.append(event.event_id)

    async with redis_bus_and_client() as (redis_bus, client):
        async with redis_bus.consumer("g", handler):
            before, after = created(), created()
            await redis_bus.publish([before])
            await until(lambda: got == [before.event_id])
            await client.delete(redis_bus.stream)
            await redis_bus.publish([after])
            await until(lambda: got == [before.event_id, after.event_id])
        groups = await client.xinfo_groups(redis_bus.stream)
        assert [g["name"] for g in groups] == [b"g"]


@pytest.mark.redis
@pytest.mark.parametrize("keep_alive", ["running", "stalled"])
async def test_redis_keeps_an_entry_held_through_a_fault_at_its_first_delivery(
    keep_alive: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Held longer than claim_idle, the entry is claimed again by its own consumer with
    # JUSTID, which counts nothing: when the fault heals it is still at its first delivery.
    # "stalled": as when the process is too busy to refresh what it holds in time, its own
    # XAUTOCLAIM meets the entry it is still working on, and must not count a delivery either.
    if keep_alive == "stalled":

        async def stalled(self: object) -> None:
            await asyncio.Event().wait()

        monkeypatch.setattr(
            "choreography_pattern.redis_consumer.StreamConsumer.keep_claimed", stalled
        )
    deliveries_seen: list[int] = []

    async with redis_bus_and_client() as (redis_bus, client):

        async def handler(event: Event) -> None:
            pending = await client.xpending_range(redis_bus.stream, "g", "-", "+", 10)
            deliveries_seen.append(int(pending[0]["times_delivered"]))
            if len(deliveries_seen) <= 10:
                raise database_away_error()

        async with redis_bus.consumer("g", handler) as stats:
            await redis_bus.publish([created()])
            await until(lambda: stats.handled == 1, timeout=15)
        assert set(deliveries_seen) == {1}
        assert await redis_bus.dead_letters("g") == []


@pytest.mark.redis
async def test_redis_redrive_publishes_a_dead_letter_again_once_and_deletes_it() -> None:
    calls: list[str] = []
    broken = True

    async def handler(event: Event) -> None:
        calls.append(event.event_id)
        if broken:
            raise RuntimeError("a bug")

    async with redis_bus_and_client() as (redis_bus, _client):
        event = created()
        async with redis_bus.consumer("g", handler) as stats:
            await redis_bus.publish([event])
            await until(lambda: stats.dead_lettered == 1, timeout=15)
            [(dead_id, _fields)] = await redis_bus.dead_letter_entries("g")
            broken = False
            calls.clear()
            assert await redis_bus.redrive("g", dead_id) is not None
            await until(lambda: stats.handled == 1, timeout=15)
        assert calls == [event.event_id]
        assert await redis_bus.dead_letters("g") == []
        assert await redis_bus.redrive("g", dead_id) is None  # gone: nothing to put back


@pytest.mark.redis
async def test_redis_a_consumer_stopping_on_a_fault_leaves_its_entry_uncounted() -> None:
    # A service restarted during an outage: the next consumer claims the entry it held and
    # runs it, not counting the stop as a failed delivery (here one counted failure too many
    # would dead-letter it: max_deliveries=1).
    async with redis_bus_and_client() as (redis_bus, client):
        strict = RedisEventBus(
            redis_bus.client, redis_bus.namespace, claim_idle=0.1, max_deliveries=1, block=0.1
        )
        strict.outages = fast_outages()

        async def database_away(event: Event) -> None:
            raise database_away_error()

        deliveries_seen: list[int] = []

        async def healthy(event: Event) -> None:
            pending = await client.xpending_range(strict.stream, "g", "-", "+", 10)
            deliveries_seen.append(int(pending[0]["times_delivered"]))

        async with strict.consumer("g", database_away):
            await strict.publish([created()])
            await until(lambda: strict.outages.retries[DATABASE] >= 3, timeout=10)
        async with strict.consumer("g", healthy) as stats:
            await until(lambda: stats.handled == 1, timeout=15)
        assert deliveries_seen == [1]
        assert stats.dead_lettered == 0 and await strict.dead_letters("g") == []
