"""The event stream is trimmed only below what every service's group has acknowledged.

Real Redis. Groups read and acknowledge with the raw commands, so each test sets up exactly
which entries a group has not received or not acknowledged, then checks what ``trim`` keeps.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from conftest import TEST_REDIS_URL, until

from choreography_pattern import Event
from choreography_pattern import events as ev
from choreography_pattern.redis_bus import RedisEventBus

pytestmark = pytest.mark.redis


@pytest.fixture
async def bus() -> AsyncIterator[RedisEventBus]:
    namespace = f"test-trim-{uuid.uuid4().hex[:8]}"
    redis_bus = RedisEventBus.from_url(
        TEST_REDIS_URL, namespace, block=0.1, retain_for=("a", "b"), trim_interval=0.05
    )
    try:
        yield redis_bus
    finally:
        keys = [k async for k in redis_bus.client.scan_iter(match=f"{namespace}:*")]
        if keys:
            await redis_bus.client.delete(*keys)
        await redis_bus.aclose()


def events(n: int) -> list[Event]:
    return [Event(ev.ORDER_CREATED, uuid.uuid4().hex, {"customer_id": 1}) for _ in range(n)]


async def ids(client: aioredis.Redis, stream: str) -> list[str]:
    return [entry_id.decode() for entry_id, _ in await client.xrange(stream)]


async def read(bus: RedisEventBus, group: str, count: int, *, ack: bool) -> list[str]:
    response = await bus.client.xreadgroup(group, "c1", {bus.stream: ">"}, count=count)
    got = [entry_id.decode() for _, entries in response for entry_id, _ in entries]
    if ack and got:
        await bus.client.xack(bus.stream, group, *got)
    return got


async def test_nothing_is_trimmed_while_a_group_is_missing(bus: RedisEventBus) -> None:
    await bus.publish(events(5))
    await bus.ensure_group("a")
    await read(bus, "a", 5, ack=True)
    assert await bus.trim(["a", "b"]) == 0  # b would read them from the start once it exists
    assert len(await ids(bus.client, bus.stream)) == 5


async def test_trim_keeps_what_a_group_has_not_received(bus: RedisEventBus) -> None:
    await bus.ensure_group("a")
    await bus.ensure_group("b")
    await bus.publish(events(10))
    everything = await ids(bus.client, bus.stream)
    await read(bus, "a", 10, ack=True)
    await read(bus, "b", 4, ack=True)  # b is behind: entries 5-10 not delivered to it
    assert await bus.trim(["a", "b"]) == 3
    assert await ids(bus.client, bus.stream) == everything[3:]
    assert await read(bus, "b", 10, ack=True) == everything[4:]


async def test_trim_keeps_what_a_group_received_but_did_not_acknowledge(
    bus: RedisEventBus,
) -> None:
    await bus.ensure_group("a")
    await bus.ensure_group("b")
    await bus.publish(events(10))
    everything = await ids(bus.client, bus.stream)
    await read(bus, "a", 10, ack=True)
    await read(bus, "b", 2, ack=True)
    await read(bus, "b", 8, ack=False)  # a consumer died holding entries 3-10
    assert await bus.trim(["a", "b"]) == 2
    assert await ids(bus.client, bus.stream) == everything[2:]
    pending = await bus.client.xpending_range(bus.stream, "b", min="-", max="+", count=20)
    assert [p["message_id"].decode() for p in pending] == everything[2:]


async def test_consumers_trim_the_stream_as_they_go(bus: RedisEventBus) -> None:
    handled: dict[str, int] = {"a": 0, "b": 0}

    def counter(group: str) -> Callable[[Event], Awaitable[None]]:
        async def handler(_: Event) -> None:
            handled[group] += 1

        return handler

    async with bus.consumer("a", counter("a")), bus.consumer("b", counter("b")):
        for _ in range(3):
            await bus.publish(events(20))
        await until(lambda: handled["a"] == handled["b"] == 60, timeout=10)

        async def trimmed() -> bool:
            return await bus.client.xlen(bus.stream) <= 1

        await until(trimmed, timeout=10)
        await bus.publish(events(1))  # still flowing after a trim
        await until(lambda: handled["a"] == handled["b"] == 61, timeout=10)
    assert handled == {"a": 61, "b": 61}


async def test_stopping_consumers_under_load_leaves_the_client_usable(bus: RedisEventBus) -> None:
    # Stopping used to cancel commands between request and reply; the connection went back
    # to the pool with a reply unread and the next command on it waited forever.
    def counter(handled: dict[str, int], group: str) -> Callable[[Event], Awaitable[None]]:
        async def handler(_: Event) -> None:
            handled[group] += 1

        return handler

    for _ in range(30):
        seen = {"a": 0, "b": 0}
        async with asyncio.timeout(20):
            async with bus.consumer("a", counter(seen, "a")), bus.consumer("b", counter(seen, "b")):
                for _ in range(3):
                    await bus.publish(events(20))
                await until(lambda s=seen: s["a"] == s["b"] == 60, timeout=10)  # type: ignore[misc]
            assert await bus.client.ping()
