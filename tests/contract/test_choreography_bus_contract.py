"""One contract for every event bus adapter: the in-process bus and Redis Streams.

Each test names what every adapter must do: fan-out per group, at-least-once delivery with
redelivery of failed entries, dead-lettering after too many deliveries, malformed entries
dead-lettered at once without stopping the consumer, and type filtering.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis
from conftest import TEST_REDIS_URL, until

from choreography_pattern import Event, InMemoryEventBus
from choreography_pattern import events as ev
from choreography_pattern.redis_bus import RedisEventBus


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "memory":
        yield InMemoryEventBus(max_deliveries=3, retry_delay=0.01)
        return
    async with redis_bus_and_client() as (redis_bus, _client):
        yield redis_bus


@asynccontextmanager
async def redis_bus_and_client() -> AsyncIterator[tuple[RedisEventBus, aioredis.Redis]]:
    """A Redis bus in a namespace of its own and a plain client; every key of the namespace is
    deleted afterwards."""
    namespace = f"test-bus-{uuid.uuid4().hex[:8]}"
    redis_bus = RedisEventBus.from_url(
        TEST_REDIS_URL, namespace, claim_idle=0.1, max_deliveries=3, block=0.1
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
