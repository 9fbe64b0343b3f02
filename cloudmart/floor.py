"""``cloudmart bench floor``: what the parts cost, and so the least one saga can take.

Three primitives, with the clients and settings the system itself uses:

``rabbitmq_round_trip``
    A command and its reply through :class:`~engine.adapters.rabbitmq.RabbitMQTransport`
    (transient message, publisher confirms, reply queue) to a
    :class:`~services._kit.command_server.RabbitMQCommandServer` whose handler echoes the payload,
    served by a separate process (``python -m cloudmart.floor``), as the services are.
``mariadb_commit``
    ``INSERT`` of one small row and ``COMMIT`` as the hot paths write: a transaction of the
    engine :func:`activities.db.create_engine` builds (aiomysql, READ COMMITTED) whose statement
    runs on the driver's cursor and carries its ``COMMIT``
    (:meth:`~prepared_sql.Prepared.run` with ``commit=True``), into a scratch table
    ``bench_floor`` that is dropped afterwards.
``redis_stream_hop``
    ``XADD`` by one client, ``XREADGROUP`` (blocking) and ``XACK`` by another, as the
    choreography's bus does: from the XADD until the XACK returned.

Each is measured twice:

- **one at a time** (``samples`` after ``warmup``): its latency, p50 and p99;
- **under load** (``load`` operations, ``concurrency`` at a time): how many a second, and what
  each one costs the machine in CPU, summed over the processes that do the work here (this
  client, the echo server, and MariaDB, RabbitMQ or Redis when they run on this machine; see
  :mod:`cloudmart.costs`).

What one saga needs, counted from the code (:data:`SAGA_COSTS`), gives two bounds per pattern:

- the **floor**: the primitives on the path the caller waits for, times their p50 (and p99, a
  pessimistic bound): no saga can end sooner. HTTP and the services' own work come on top;
- the **ceiling**: the primitives every saga needs at the least (history commits, shared by
  many sagas under load, are left out), times their CPU cost: the machine's cores can do no
  more sagas a second than ``cores × 1000 / that sum``, even if the code between the
  primitives cost nothing.
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
from datetime import UTC, datetime
from typing import Any, TextIO

import sqlalchemy as sa

from cloudmart.bench import database_version, machine, percentiles
from cloudmart.costs import Meter, find, local_port, per_unit
from prepared_sql import Prepared

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
        "ceiling_counts": {"rabbitmq_round_trip": 5, "mariadb_commit": 5},
        "ceiling_why": (
            "the 5 command round trips and the 5 service commits; the 7 history commits are "
            "grouped across sagas under load and left out"
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
        "ceiling_counts": {"redis_stream_hop": 9, "mariadb_commit": 5},
        "ceiling_why": (
            "the 5 events handled 9 times, and the 5 commits of the operations that write them "
            "(create_order, reserve_stock, process_payment, arrange_shipping, complete_order); "
            "relay passes, event logs and prerequisite records are left out"
        ),
    },
}


def formula(pattern: str, counts_key: str = "counts") -> str:
    """``"5 × rabbitmq_round_trip + 12 × mariadb_commit"`` for ``pattern``."""
    counts = SAGA_COSTS[pattern][counts_key]
    return " + ".join(f"{n} × {name}" for name, n in counts.items() if n)


def saga_floors(primitives: dict[str, dict[str, Any]], cores: int = 1) -> dict[str, dict[str, Any]]:
    """Per pattern: the floor's formula, counts and p50/p99 sums over ``primitives``; and, when
    the primitives were measured under load, the ceiling (sagas/s on ``cores`` cores)."""
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
        needed = cost["ceiling_counts"]
        if all("load" in primitives[p] for p in needed):
            cpu = sum(n * primitives[p]["load"]["cpu_ms_total"] for p, n in needed.items())
            floors[pattern]["ceiling"] = {
                "formula": formula(pattern, "ceiling_counts"),
                "counts": dict(needed),
                "why": cost["ceiling_why"],
                "cpu_ms": round(cpu, 3),
                "per_second": round(cores * 1000 / cpu, 1) if cpu else None,
            }
    return floors


@dataclass
class Primitive:
    """One primitive ready to run: ``operation(i)`` does it once; ``processes`` (``{name:
    pid}``) are the processes that do its work on this machine, the measuring one included."""

    operation: Callable[[int], Awaitable[None]]
    processes: dict[str, int]


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


async def _load(primitive: Primitive, operations: int, concurrency: int) -> dict[str, Any]:
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


async def measure(
    *,
    database_url: str,
    rabbitmq_url: str,
    redis_url: str,
    samples: int = 1000,
    warmup: int = 100,
    load: int = 2000,
    concurrency: int = 32,
    progress: TextIO | None = None,
) -> dict[str, Any]:
    """Every primitive, the saga floors and ceilings, and where it was measured (the floor
    file's content). ``load``: operations per primitive at ``concurrency`` for its CPU cost
    (0 leaves the ceilings out)."""
    measured: dict[str, dict[str, Any]] = {}
    primitives: list[tuple[str, Callable[[], contextlib.AbstractAsyncContextManager[Primitive]]]]
    primitives = [
        ("rabbitmq_round_trip", lambda: rabbitmq_round_trip(rabbitmq_url)),
        ("mariadb_commit", lambda: mariadb_commit(database_url, pool_size=concurrency)),
        ("redis_stream_hop", lambda: redis_stream_hop(redis_url)),
    ]
    for name, make in primitives:
        if progress is not None:
            progress.write(f"measuring {name} ({samples} samples, {load} at {concurrency})...\n")
            progress.flush()
        async with make() as primitive:
            measured[name] = await _sample(primitive.operation, samples, warmup)
            if load:
                measured[name]["load"] = await _load(primitive, load, concurrency)
    from activities.db import create_engine
    from cloudmart.bench.where import versions as part_versions

    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        versions = {**part_versions(), "database": await database_version(engine)}
    finally:
        await engine.dispose()
    found = machine()
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "samples": samples,
        "warmup": warmup,
        "primitives": measured,
        "sagas": saga_floors(measured, cores=found["cores"] or 1),
        "machine": found,
        "versions": versions,
    }


def report(floor: dict[str, Any]) -> str:
    """The floor in a few lines of text."""
    lines = [f"floor over {floor['samples']} samples each (ms):"]
    for name, figures in floor["primitives"].items():
        line = f"  {name:<20} p50 {figures['p50']:>6}  p99 {figures['p99']:>6}"
        if "load" in figures:
            load = figures["load"]
            line += (
                f"  at {load['concurrency']}: {load['per_second']:>7}/s, "
                f"{load['cpu_ms_total']} ms CPU each"
            )
        lines.append(line)
    for pattern, saga in floor["sagas"].items():
        lines.append(
            f"  one {pattern} saga: {saga['formula']} = p50 {saga['p50_ms']} ms "
            f"(p99 {saga['p99_ms']} ms)"
        )
        if "ceiling" in saga:
            ceiling = saga["ceiling"]
            lines.append(
                f"    ceiling: {ceiling['formula']} = {ceiling['cpu_ms']} ms CPU, "
                f"at most {ceiling['per_second']} sagas/s on {floor['machine']['cores']} cores"
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
