"""``cloudmart bench floor``: what the parts cost, and so the least one saga can take.

Three primitives, each measured one at a time (concurrency 1) with the clients and settings the
system itself uses:

``rabbitmq_round_trip``
    A command and its reply through :class:`~engine.adapters.rabbitmq.RabbitMQTransport`
    (persistent message, publisher confirms, reply queue) to a
    :class:`~engine.adapters.rabbitmq.RabbitMQCommandServer` whose handler echoes the payload,
    served by a separate process (``python -m cloudmart.floor``), as the services are.
``mariadb_commit``
    ``INSERT`` of one small row and ``COMMIT`` through SQLAlchemy async Core on the engine
    :func:`activities.db.create_engine` builds (aiomysql, READ COMMITTED), into a scratch table
    ``bench_floor`` that is dropped afterwards.
``redis_stream_hop``
    ``XADD`` by one client, ``XREADGROUP`` (blocking) and ``XACK`` by another, as the
    choreography's bus does: from the XADD until the XACK returned.

What one saga costs, counted from the code (:data:`SAGA_COSTS`), on the path the caller waits
for; the floor of a pattern is the sum of those counts times each primitive's p50 (and p99, a
pessimistic bound). HTTP and the services' own CPU come on top.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TextIO

import sqlalchemy as sa

from cloudmart.bench import database_version, machine, percentiles

PRIMITIVES = ("rabbitmq_round_trip", "mariadb_commit", "redis_stream_hop")

SAGA_COSTS: dict[str, dict[str, Any]] = {
    "orchestration": {
        "counts": {"rabbitmq_round_trip": 5, "mariadb_commit": 12, "redis_stream_hop": 0},
        "why": (
            "5 command round trips (create_order, reserve_stock, process_payment, "
            "arrange_shipping, complete_order), each answered after 1 service commit (effect + "
            "inbox); 7 history commits: the saga row with WorkflowStarted, 1 per StepScheduled "
            "(carrying the previous step's StepCompleted) and 1 for WorkflowCompleted"
        ),
    },
    "choreography": {
        "counts": {"rabbitmq_round_trip": 0, "mariadb_commit": 9, "redis_stream_hop": 3},
        "why": (
            "critical path: create_order + outbox commit, relay commit, hop; reserve_stock "
            "(payment in parallel) commit, relay commit, hop; shipping's prerequisite commit "
            "and arrange_shipping commit, relay commit, hop; the order service's event-log "
            "commit and complete_order commit. In all one saga commits 16 times (5 relay "
            "passes, 5 order event logs) and its 5 events are handled 9 times"
        ),
    },
}


def formula(pattern: str) -> str:
    """``"5 × rabbitmq_round_trip + 12 × mariadb_commit"`` for ``pattern``."""
    counts = SAGA_COSTS[pattern]["counts"]
    return " + ".join(f"{n} × {name}" for name, n in counts.items() if n)


def saga_floors(primitives: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Per pattern: the formula, its counts and its p50/p99 sums over ``primitives``."""
    floors: dict[str, dict[str, Any]] = {}
    for pattern, cost in SAGA_COSTS.items():
        counts = cost["counts"]
        floors[pattern] = {
            "formula": formula(pattern),
            "counts": dict(counts),
            "why": cost["why"],
            "p50_ms": round(sum(n * primitives[p]["p50"] for p, n in counts.items() if n), 2),
            "p99_ms": round(sum(n * primitives[p]["p99"] for p, n in counts.items() if n), 2),
        }
    return floors


async def _sample(
    operation: Callable[[int], Awaitable[None]], samples: int, warmup: int
) -> dict[str, float]:
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


async def mariadb_commit(database_url: str, samples: int, warmup: int) -> dict[str, float]:
    """p50/p99 (ms) of INSERT + COMMIT of one small row (module docstring)."""
    from activities.db import create_engine
    from cloudmart.schema import ensure_database

    await ensure_database(database_url)
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    table = sa.Table(
        "bench_floor",
        sa.MetaData(),
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("note", sa.String(64), nullable=False),
    )
    try:
        async with engine.begin() as conn:
            await conn.run_sync(table.create, checkfirst=True)

        async def commit(i: int) -> None:
            async with engine.begin() as conn:
                await conn.execute(table.insert().values(note=f"floor {i}"))

        return await _sample(commit, samples, warmup)
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(table.drop, checkfirst=True)
        await engine.dispose()


async def rabbitmq_round_trip(rabbitmq_url: str, samples: int, warmup: int) -> dict[str, float]:
    """p50/p99 (ms) of a command round trip to an echo server in another process."""
    from engine.adapters.rabbitmq import RabbitMQTransport

    namespace = f"floor-{uuid.uuid4().hex[:10]}"
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cloudmart.floor", rabbitmq_url, namespace,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        async with asyncio.timeout(30):
            ready = await server.stdout.readline()
        if ready.strip() != b"ready":
            raise RuntimeError("the floor's echo server did not start")
        async with RabbitMQTransport(rabbitmq_url, namespace=namespace) as transport:

            async def round_trip(i: int) -> None:
                await transport.request(
                    _ECHO, "echo", {"i": i}, timeout=10, idempotency_key=f"floor-{i}"
                )

            return await _sample(round_trip, samples, warmup)
    finally:
        if server.returncode is None:
            server.terminate()
        await server.wait()
        await _delete_topology(rabbitmq_url, namespace)


async def redis_stream_hop(redis_url: str, samples: int, warmup: int) -> dict[str, float]:
    """p50/p99 (ms) from XADD by one client to XACK by a consumer group's reader."""
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

        return await _sample(hop, samples, warmup)
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


async def measure(
    *,
    database_url: str,
    rabbitmq_url: str,
    redis_url: str,
    samples: int = 1000,
    warmup: int = 100,
    progress: TextIO | None = None,
) -> dict[str, Any]:
    """Every primitive, the saga floors, and where it was measured (the floor file's content)."""
    measured: dict[str, dict[str, float]] = {}
    steps: list[tuple[str, Callable[[], Awaitable[dict[str, float]]]]] = [
        ("rabbitmq_round_trip", lambda: rabbitmq_round_trip(rabbitmq_url, samples, warmup)),
        ("mariadb_commit", lambda: mariadb_commit(database_url, samples, warmup)),
        ("redis_stream_hop", lambda: redis_stream_hop(redis_url, samples, warmup)),
    ]
    for name, step in steps:
        if progress is not None:
            progress.write(f"measuring {name} ({samples} samples)...\n")
            progress.flush()
        measured[name] = await step()
    from activities.db import create_engine
    from cloudmart.bench import _versions

    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        versions = {**_versions(), "database": await database_version(engine)}
    finally:
        await engine.dispose()
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "samples": samples,
        "warmup": warmup,
        "primitives": measured,
        "sagas": saga_floors(measured),
        "machine": machine(),
        "versions": versions,
    }


def report(floor: dict[str, Any]) -> str:
    """The floor in a few lines of text."""
    lines = [f"floor over {floor['samples']} samples each (ms):"]
    for name, figures in floor["primitives"].items():
        lines.append(f"  {name:<20} p50 {figures['p50']:>6}  p99 {figures['p99']:>6}")
    for pattern, saga in floor["sagas"].items():
        lines.append(
            f"  one {pattern} saga: {saga['formula']} = p50 {saga['p50_ms']} ms "
            f"(p99 {saga['p99_ms']} ms)"
        )
    return "\n".join(lines)


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

    from engine.adapters.rabbitmq import RabbitMQCommandServer

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
