"""The primitives ``cloudmart bench floor`` measures (:mod:`cloudmart.floor` says what each
is and how it is measured), each ready to run, and the echo server that answers the RabbitMQ
round trip from a process of its own (``python -m cloudmart.floor_primitives URL NAMESPACE``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from cloudmart.bench import percentiles
from cloudmart.costs import Meter, find, local_port, per_unit
from prepared_sql import Prepared

__all__ = [
    "Primitive",
    "mariadb_commit",
    "one_at_a_time",
    "rabbitmq_round_trip",
    "redis_stream_hop",
    "under_load",
]


@dataclass
class Primitive:
    """One primitive ready to run: ``operation(i)`` does it once; ``processes`` (``{name:
    pid}``) are the processes that do its work on this machine, the measuring one included."""

    operation: Callable[[int], Awaitable[None]]
    processes: dict[str, int]


async def one_at_a_time(
    operation: Callable[[int], Awaitable[None]], samples: int, warmup: int
) -> dict[str, float]:
    """``samples`` runs of ``operation``, one at a time after ``warmup`` unmeasured ones: the
    percentiles of their latency (ms) and its standard deviation."""
    for i in range(warmup):
        await operation(i)
    took: list[float] = []
    for i in range(samples):
        began = time.perf_counter()
        await operation(warmup + i)
        took.append((time.perf_counter() - began) * 1000)
    figures = percentiles(took)
    figures["stdev"] = round(statistics.pstdev(took), 3)
    return figures


async def under_load(primitive: Primitive, operations: int, concurrency: int) -> dict[str, Any]:
    """``operations`` runs of the primitive, ``concurrency`` at a time, numbered from 10**9 (past
    the sampled ones): how many a second, and the CPU each cost the watched processes."""
    numbers = iter(range(10**9, 10**9 + operations))
    meter = Meter(primitive.processes)

    async def worker() -> None:
        for i in numbers:
            await primitive.operation(i)

    meter.start()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    used = meter.stop()
    cost = per_unit(used, operations)
    return {
        "concurrency": concurrency,
        "operations": operations,
        "per_second": round(operations / used["seconds"], 1),
        "cpu_ms": cost["ms"],
        "cpu_ms_total": cost["total_ms"],
        "busy": cost["busy"],
    }


@contextlib.asynccontextmanager
async def mariadb_commit(database_url: str, pool_size: int) -> AsyncIterator[Primitive]:
    """INSERT + COMMIT of one small row (module docstring)."""
    from activities.db import create_engine
    from cloudmart.schema import ensure_database

    await ensure_database(database_url)
    engine = create_engine(database_url, pool_size=pool_size, max_overflow=0)
    table = sa.Table(
        "bench_floor",
        sa.MetaData(),
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("note", sa.String(64), nullable=False),
    )
    try:
        async with engine.begin() as conn:
            await conn.run_sync(table.create, checkfirst=True)

        insert = Prepared(table.insert())

        async def commit(i: int) -> None:
            async with engine.begin() as conn:
                await insert.run(conn, {"note": f"floor {i}"}, commit=True)

        yield Primitive(commit, _watched({"mariadb": local_port(database_url, 3306)}))
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(table.drop, checkfirst=True)
        await engine.dispose()


@contextlib.asynccontextmanager
async def rabbitmq_round_trip(rabbitmq_url: str) -> AsyncIterator[Primitive]:
    """A command round trip to an echo server in another process."""
    from engine.adapters.rabbitmq import RabbitMQTransport

    namespace = f"floor-{uuid.uuid4().hex[:10]}"
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cloudmart.floor_primitives", rabbitmq_url, namespace,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        async with asyncio.timeout(30):
            ready = await server.stdout.readline()
        if ready.strip() != b"ready":
            raise RuntimeError("the floor's echo server did not start")
        # max_batch=1: one message per round trip, however many are in flight. The ceiling
        # is the naive one (a saga's commands each cost a round trip); batching is what the
        # system does to pass it, not part of the yardstick.
        async with RabbitMQTransport(rabbitmq_url, namespace=namespace, max_batch=1) as transport:

            async def round_trip(i: int) -> None:
                await transport.request(
                    _ECHO, "echo", {"i": i}, timeout=10, idempotency_key=f"floor-{i}"
                )

            processes = _watched({"rabbitmq": local_port(rabbitmq_url, 5672)})
            yield Primitive(round_trip, {**processes, "server": server.pid})
    finally:
        if server.returncode is None:
            server.terminate()
        await server.wait()
        await _delete_topology(rabbitmq_url, namespace)


@contextlib.asynccontextmanager
async def redis_stream_hop(redis_url: str) -> AsyncIterator[Primitive]:
    """From XADD by one client to XACK by a consumer group's reader."""
    import redis.asyncio as aioredis

    stream = f"floor-{uuid.uuid4().hex[:10]}:events"
    producer = aioredis.Redis.from_url(redis_url)
    reader = aioredis.Redis.from_url(redis_url)
    await producer.xgroup_create(stream, "floor", id="$", mkstream=True)
    arrived: asyncio.Queue[bytes | Exception] = asyncio.Queue()

    stop = asyncio.Event()

    async def consume() -> None:
        try:
            while not stop.is_set():
                batches: Any = await reader.xreadgroup(
                    "floor", "c1", {stream: ">"}, count=16, block=100
                )
                for _, entries in batches or []:
                    for entry_id, _fields in entries:
                        await reader.xack(stream, "floor", entry_id)
                        arrived.put_nowait(entry_id)
        except Exception as exc:  # handed to the waiting hop, which raises it
            arrived.put_nowait(exc)

    consumer = asyncio.create_task(consume())
    try:

        async def hop(i: int) -> None:
            await producer.xadd(stream, {"i": str(i)})
            # Bounded: a Redis restart (the group gone) must fail the measurement, not hang it.
            async with asyncio.timeout(10):
                got = await arrived.get()
            if isinstance(got, Exception):
                raise got

        yield Primitive(hop, _watched({"redis": local_port(redis_url, 6379)}))
    finally:
        # Stopped, not cancelled: a read cancelled while blocked in redis-py can leave the
        # task unable to finish.
        stop.set()
        await asyncio.wait([consumer], timeout=5)
        if not consumer.done():
            consumer.cancel()
        await producer.delete(stream)
        await producer.aclose()
        await reader.aclose()


def _watched(servers: dict[str, int | None]) -> dict[str, int]:
    """This process, and each server found listening on its port on this machine."""
    return {"client": os.getpid(), **find(servers)}


# -- the echo server (a process of its own) --------------------------------------------------

_ECHO = "floor"


async def _delete_topology(url: str, namespace: str) -> None:
    import aio_pika

    from engine.adapters import amqp_names as names

    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(names.command_queue(namespace, _ECHO))
        await channel.queue_delete(names.dead_letter_queue(namespace, _ECHO))
        await channel.exchange_delete(names.commands_exchange(namespace))
        await channel.exchange_delete(names.dead_letter_exchange(namespace))


async def _echo(method: str, payload: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    return payload


async def _serve_echo(url: str, namespace: str) -> None:
    import signal

    from services._kit.command_server import RabbitMQCommandServer

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with RabbitMQCommandServer(url, namespace=namespace, service=_ECHO, handler=_echo):
        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    import logging

    import structlog

    from cloudmart.runner import run

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    run(_serve_echo(sys.argv[1], sys.argv[2]))
