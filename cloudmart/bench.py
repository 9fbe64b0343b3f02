"""``cloudmart bench``: real sagas through the public REST API of a running deployment.

Closed loop: ``concurrency`` workers each start a saga (``POST /saga/start`` on the orchestrator,
or ``POST /orders`` on the order service in the choreography), wait for it to finish, and start
the next, until ``sagas`` have run. Reported: completed
sagas per second, start→terminal latency percentiles, REST response time of the start call,
and errors (a non-2xx start, or a saga not terminal). The bench adds its own catalogue (ids
from 900001: one customer with a large balance, ten books with large stock) through the
database so that every saga can complete.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import sqlalchemy as sa

from activities.db import create_engine
from activities.tables import books, customers, inventory

BENCH_CUSTOMER = 900_001
BENCH_BOOKS = list(range(900_001, 900_011))
ADDRESS = {
    "name": "Bench",
    "line1": "1-1",
    "city": "Tokyo",
    "postal_code": "100-0001",
    "country": "JP",
}


@dataclass
class BenchResult:
    pattern: str
    sagas: int
    concurrency: int
    wall_seconds: float
    completed: int
    failed: int
    errors: int
    sagas_per_second: float
    latency_ms: dict[str, float]
    start_response_ms: dict[str, float]
    machine: dict[str, Any] = field(default_factory=dict)


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {
        "p50": pick(0.50),
        "p95": pick(0.95),
        "p99": pick(0.99),
        "max": round(ordered[-1], 2),
        "mean": round(statistics.fmean(ordered), 2),
    }


async def seed_catalogue(database_url: str) -> None:
    """The bench's own customer and books, topped up so every saga can complete."""
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        async with engine.begin() as conn:
            if (
                await conn.scalar(
                    sa.select(customers.c.customer_id).where(
                        customers.c.customer_id == BENCH_CUSTOMER
                    )
                )
                is None
            ):
                await conn.execute(
                    customers.insert().values(
                        customer_id=BENCH_CUSTOMER,
                        name="Bench",
                        email="bench@example.invalid",
                        balance=Decimal(0),
                    )
                )
                await conn.execute(
                    books.insert(),
                    [
                        {"book_id": b, "title": f"Bench {b}", "price": Decimal("1.00")}
                        for b in BENCH_BOOKS
                    ],
                )
                await conn.execute(
                    inventory.insert(),
                    [{"book_id": b, "available": 0, "reserved": 0} for b in BENCH_BOOKS],
                )
            await conn.execute(
                customers.update()
                .where(customers.c.customer_id == BENCH_CUSTOMER)
                .values(balance=Decimal("9999999999.00"))
            )
            await conn.execute(
                inventory.update()
                .where(inventory.c.book_id.in_(BENCH_BOOKS))
                .values(available=10_000_000)
            )
    finally:
        await engine.dispose()


def _body(i: int) -> dict[str, Any]:
    return {
        "customer_id": BENCH_CUSTOMER,
        "items": [{"book_id": BENCH_BOOKS[i % len(BENCH_BOOKS)], "quantity": 1}],
        "shipping_address": ADDRESS,
    }


async def _orchestrated(client: httpx.AsyncClient, i: int) -> str | None:
    started = await client.post("/saga/start", json=_body(i))
    if started.status_code != 202:
        return None
    order_id = started.json()["order_id"]
    status = await client.get(f"/saga/{order_id}/status", params={"wait": 30})
    return str(status.json()["status"])


async def _choreographed(client: httpx.AsyncClient, i: int) -> str | None:
    started = await client.post("/orders", json=_body(i))
    if started.status_code != 202:
        return None
    order_id = started.json()["order_id"]
    response = await client.get(f"/orders/{order_id}", params={"wait": 30})
    if response.status_code != 200:
        return None
    status = str(response.json()["status"])
    return {"COMPLETED": "COMPLETED", "CANCELLED": "FAILED"}.get(status)


async def run(
    url: str, sagas: int, concurrency: int, pattern: str = "orchestration"
) -> BenchResult:
    """``sagas`` sagas, ``concurrency`` at a time (closed loop), through ``url``'s REST API.

    Both wait for the end with a long-poll: the saga's status, or the order (choreography).
    """
    latencies: list[float] = []
    responses: list[float] = []
    outcome = {"COMPLETED": 0, "FAILED": 0, "errors": 0}
    todo = iter(range(sagas))
    limits = httpx.Limits(
        max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2
    )

    async def worker(client: httpx.AsyncClient) -> None:
        for i in todo:
            began = time.perf_counter()
            if pattern == "orchestration":
                status = await _orchestrated(client, i)
            else:
                status = await _choreographed(client, i)
            latencies.append((time.perf_counter() - began) * 1000)
            outcome[status if status in ("COMPLETED", "FAILED") else "errors"] += 1

    async def timed(request: httpx.Request) -> None:
        request.extensions["began"] = time.perf_counter()

    async def record(response: httpx.Response) -> None:
        if response.request.method == "POST":
            responses.append((time.perf_counter() - response.request.extensions["began"]) * 1000)

    hooks = {"request": [timed], "response": [record]}
    async with httpx.AsyncClient(
        base_url=url, timeout=60, limits=limits, event_hooks=hooks
    ) as client:
        began = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - began
    return BenchResult(
        pattern=pattern,
        sagas=sagas,
        concurrency=concurrency,
        wall_seconds=round(wall, 3),
        completed=outcome["COMPLETED"],
        failed=outcome["FAILED"],
        errors=outcome["errors"],
        sagas_per_second=round(outcome["COMPLETED"] / wall, 1),
        latency_ms=percentiles(latencies),
        start_response_ms=percentiles(responses),
        machine=machine(),
    )


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in cpuinfo
                    if line.startswith("model name")
                ),
                "",
            )
    except OSError:
        model = platform.processor()
    return {"cores": os.cpu_count(), "cpu": model, "python": platform.python_version()}


def report(result: BenchResult) -> str:
    lat, rest = result.latency_ms, result.start_response_ms
    return "\n".join(
        [
            f"{result.pattern}: {result.sagas} sagas at concurrency {result.concurrency} "
            f"in {result.wall_seconds}s",
            f"  completed {result.completed}, failed {result.failed}, errors {result.errors}",
            f"  {result.sagas_per_second} completed sagas/s",
            f"  start→terminal ms: p50 {lat.get('p50')} p95 {lat.get('p95')} "
            f"p99 {lat.get('p99')} max {lat.get('max')}",
            f"  start request ms: p50 {rest.get('p50')} p99 {rest.get('p99')}",
        ]
    )


def to_json(result: BenchResult) -> str:
    return json.dumps(asdict(result), indent=2)
