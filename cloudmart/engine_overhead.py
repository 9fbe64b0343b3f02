"""Engine overhead benchmark: the order saga on the SQL store, services answering instantly.

``python -m cloudmart.engine_overhead --database-url mysql+aiomysql://root@127.0.0.1:3306/cloudmart_engine_bench
--sagas 500 --concurrency 32``. The in-memory transport's handlers return at once, so what is
measured is the engine: replay bookkeeping, history commits, scheduling. Reported:

- ``step_overhead_ms``: p50/p99 of the gap between step k's reply and step k+1's request (one
  history commit each), ``first_step_ms`` (start → first request: create + first commit),
  ``finish_ms`` (last reply → saga durable), ``saga_ms`` (start → finished);
- ``steps_per_s``, ``sagas_per_s``; ``commits_per_saga`` (transactions; a group commit carries
  several sagas) and ``writes_per_saga`` (logical history writes: start, one per step, finish).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import time
import uuid
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from contracts.examples import Reply, order_replies
from engine import Engine
from engine.adapters import SqlHistoryStore
from engine.adapters.memory_transport import InMemoryTransport, current_request
from workflows.order_saga import place_order

__all__ = ["run_bench"]

_STEPS = (
    "order.create_order",
    "inventory.reserve_stock",
    "payment.process_payment",
    "shipping.arrange_shipping",
    "order.complete_order",
)
_COMPENSATIONS = (
    "order.cancel_order",
    "inventory.release_stock",
    "payment.cancel_payment",
    "shipping.cancel_shipping",
)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(_percentile(values, 50) * 1000, 3),
        "p99": round(_percentile(values, 99) * 1000, 3),
        "mean": round(statistics.fmean(values) * 1000, 3) if values else 0.0,
    }


async def _ensure_database(database_url: str) -> None:
    url = make_url(database_url)
    if not url.drivername.startswith("mysql"):
        return
    server = create_async_engine(
        url.set(database="information_schema"), isolation_level="AUTOCOMMIT"
    )
    try:
        async with server.connect() as conn:
            await conn.execute(sa.text(f"CREATE DATABASE IF NOT EXISTS `{url.database}`"))
    finally:
        await server.dispose()


async def run_bench(database_url: str, sagas: int, concurrency: int) -> dict[str, Any]:
    """Run ``sagas`` order sagas, ``concurrency`` at a time; return the figures."""
    await _ensure_database(database_url)
    db = create_async_engine(database_url, pool_size=max(2, min(concurrency, 10)), max_overflow=2)
    try:
        store = SqlHistoryStore(db)
        await store.create_tables()
        calls: dict[str, list[tuple[float, float]]] = {}

        def handler(reply: Reply | None) -> Any:
            async def handle(payload: dict[str, Any]) -> dict[str, Any]:
                entered = time.perf_counter()
                info = current_request()
                assert info is not None
                calls.setdefault(info.headers["workflow_id"], []).append(
                    (entered, time.perf_counter())
                )
                return {} if reply is None else reply(payload)

            return handle

        replies = order_replies("42.00")
        handlers = {name: handler(replies.get(name)) for name in _STEPS + _COMPENSATIONS}
        transport = InMemoryTransport(handlers)
        engine = Engine(
            store, transport, owner_id=f"bench-{uuid.uuid4().hex[:8]}", workflows=[place_order]
        )
        run_id = uuid.uuid4().hex[:8]
        firsts: list[float] = []
        gaps: list[float] = []
        finishes: list[float] = []
        totals: list[float] = []
        failures = 0
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(sagas):
            queue.put_nowait(i)

        async def one(i: int) -> None:
            nonlocal failures
            order_id = f"bench-{run_id}-{i}"
            order = {
                "order_id": order_id,
                "customer_id": 1,
                "items": [{"book_id": 1, "quantity": 1}],
                "shipping_address": {
                    "name": "B",
                    "line1": "1",
                    "city": "Tokyo",
                    "postal_code": "150-0002",
                    "country": "JP",
                },
            }
            began = time.perf_counter()
            handle = await engine.start(place_order, order, workflow_id=order_id)
            task = engine.worker.task_of(saga_id=handle.saga_id)
            if task is not None:
                await task
            ended = time.perf_counter()
            spans = calls.pop(order_id, [])
            if len(spans) != len(_STEPS):
                failures += 1
                return
            firsts.append(spans[0][0] - began)
            gaps.extend(spans[k + 1][0] - spans[k][1] for k in range(len(spans) - 1))
            finishes.append(ended - spans[-1][1])
            totals.append(ended - began)

        async def worker() -> None:
            while not queue.empty():
                await one(queue.get_nowait())

        commits0, writes0 = store.commits, store.writes
        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
        done = sagas - failures
        return {
            "sagas": sagas,
            "concurrency": concurrency,
            "failed": failures,
            "elapsed_s": round(elapsed, 3),
            "sagas_per_s": round(done / elapsed, 1),
            "steps_per_s": round(done * len(_STEPS) / elapsed, 1),
            "step_overhead_ms": _summary(gaps),
            "first_step_ms": _summary(firsts),
            "finish_ms": _summary(finishes),
            "saga_ms": _summary(totals),
            "commits_per_saga": round((store.commits - commits0) / max(1, sagas), 3),
            "writes_per_saga": round((store.writes - writes0) / max(1, sagas), 3),
            "dialect": db.dialect.name,
        }
    finally:
        await db.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url", default="mysql+aiomysql://root@127.0.0.1:3306/cloudmart_engine_bench"
    )
    parser.add_argument("--sagas", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--uvloop", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    runner = asyncio.run
    if args.uvloop:
        try:
            import uvloop

            runner = uvloop.run
        except ImportError:  # pragma: no cover - uvloop is optional
            pass
    result = runner(run_bench(args.database_url, args.sagas, args.concurrency))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
