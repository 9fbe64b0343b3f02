"""``cloudmart bench floor``: what the parts cost, and so the least one saga can take.

Three primitives, with the clients and settings the system itself uses:

``rabbitmq_round_trip``
    A command and its reply through :class:`~engine.adapters.rabbitmq.RabbitMQTransport`
    (transient message, publisher confirms, reply queue; one message per command, never
    batched: the naive ceiling) to a
    :class:`~services._kit.command_server.RabbitMQCommandServer` whose handler echoes the payload,
    served by a separate process (``python -m cloudmart.floor_primitives``), as the services are.
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

The primitives themselves, ready to run, and the echo server are
:mod:`cloudmart.floor_primitives`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TextIO

from cloudmart.bench import database_version, machine
from cloudmart.floor_primitives import (
    Primitive,
    mariadb_commit,
    one_at_a_time,
    rabbitmq_round_trip,
    redis_stream_hop,
    under_load,
)

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
            measured[name] = await one_at_a_time(primitive.operation, samples, warmup)
            if load:
                measured[name]["load"] = await under_load(primitive, load, concurrency)
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
