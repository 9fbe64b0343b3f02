"""``cloudmart bench console``: how fast the operator console's pages answer with many sagas.

1. A few real sagas run through the orchestrator's REST API, one of each ending (completed,
   refused at stock, at payment, at shipping), with the bench's catalogue.
2. Their rows (``saga_instances`` and every ``saga_step_logs`` event) are copied in bulk under
   new ids until the database holds ``sagas`` sagas, their times spread over the past
   :data:`SPREAD` (newest first is the console's order). The copies are finished sagas, so no
   orchestrator drives them; the order, payment and shipment rows stay the originals' only, so
   a copy's page reads no such rows (a lookup by primary key that finds nothing).
3. Each page is fetched ``requests`` times, one at a time, after a warm-up: the overview, the
   list (first page, a filter by status, by failed step, by operator flag, by order id prefix,
   a page deep in the cursor) and saga pages of copies and originals. Reported per page: p50,
   p95 and the slowest, in milliseconds, measured by the client (connection kept alive).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa

from activities.db import create_engine
from cloudmart.bench.mix import order_body
from engine.adapters.sql_tables import saga_instances, saga_step_logs

__all__ = ["PageTiming", "fill", "measure", "render", "run_templates"]

SPREAD = timedelta(days=7)
KINDS = ("ok", "stock", "payment", "shipping")
TEMPLATES_PER_KIND = 3
CHUNK = 500  # sagas per INSERT batch
DEEP = 5000  # the deep page starts after this many sagas


@dataclasses.dataclass(frozen=True)
class PageTiming:
    page: str
    path: str
    requests: int
    p50_ms: float
    p95_ms: float
    max_ms: float


async def run_templates(client: httpx.AsyncClient) -> list[str]:
    """One saga per ending (a few of each), run to their end through the REST API."""

    async def one(i: int, kind: str) -> str:
        started = await client.post("/saga/start", json=order_body(i, kind))
        started.raise_for_status()
        oid = str(started.json()["order_id"])
        while True:
            status = await client.get(f"/saga/{oid}/status", params={"wait": 10})
            if status.json()["status"] in ("COMPLETED", "FAILED"):
                return oid

    jobs = [one(i, kind) for i, kind in enumerate(KINDS * TEMPLATES_PER_KIND)]
    return list(await asyncio.gather(*jobs))


async def fill(database_url: str, templates: Sequence[str], sagas: int) -> int:
    """Copy the sagas of ``templates`` (order ids) until the database holds ``sagas``; how
    many were added."""
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:
            held = int(
                await conn.scalar(sa.select(sa.func.count()).select_from(saga_instances)) or 0
            )
            rows = (
                await conn.execute(
                    sa.select(saga_instances).where(saga_instances.c.order_id.in_(templates))
                )
            ).mappings()
            originals = [dict(row) for row in rows]
            logs: dict[str, list[dict[str, Any]]] = {}
            for log in (
                await conn.execute(
                    sa.select(saga_step_logs).where(
                        saga_step_logs.c.saga_id.in_([o["saga_id"] for o in originals])
                    )
                )
            ).mappings():
                logs.setdefault(log["saga_id"], []).append(dict(log))
        wanted = max(0, sagas - held)
        newest = datetime.now(UTC).replace(tzinfo=None)
        for first in range(0, wanted, CHUNK):
            instances: list[dict[str, Any]] = []
            events: list[dict[str, Any]] = []
            for i in range(first, min(first + CHUNK, wanted)):
                original = originals[i % len(originals)]
                created = newest - SPREAD * (i + 1) / wanted
                shift = created - original["created_at"]
                saga_id = str(uuid.uuid4())
                instances.append(
                    {
                        **original,
                        "saga_id": saga_id,
                        "order_id": str(uuid.uuid4()),
                        "created_at": created,
                        "updated_at": original["updated_at"] + shift,
                        "lease_expires_at": None,
                    }
                )
                events += [
                    {**log, "saga_id": saga_id, "created_at": log["created_at"] + shift}
                    for log in logs[original["saga_id"]]
                ]
            async with engine.begin() as conn:
                await conn.execute(saga_instances.insert(), instances)
                await conn.execute(saga_step_logs.insert(), events)
        return wanted
    finally:
        await engine.dispose()


async def _pages(client: httpx.AsyncClient, templates: Sequence[str]) -> list[tuple[str, str]]:
    """The pages to time: each kind of page of the console, with real ids and cursors."""
    listed = (await client.get("/saga", params={"limit": 50})).json()["sagas"]
    copies = [s["order_id"] for s in listed if s["order_id"] not in templates][:20]
    # A cursor DEEP sagas down (or as deep as there are sagas).
    cursor, skipped = None, 0
    while skipped < DEEP:
        params: dict[str, Any] = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/saga", params=params)).json()
        if page["next_cursor"] is None:
            break
        cursor, skipped = page["next_cursor"], skipped + len(page["sagas"])
    pages = [
        ("overview", "/ui"),
        ("list", "/ui/sagas"),
        ("list, FAILED", "/ui/sagas?status=FAILED"),
        ("list, failed at payment", "/ui/sagas?failed_step=payment.process_payment"),
        ("list, needs an operator", "/ui/sagas?needs_operator=true"),
        ("list, order id prefix", f"/ui/sagas?order_id={copies[0][:4]}"),
    ]
    if cursor is not None:
        pages.append((f"list, after {skipped} sagas", f"/ui/sagas?cursor={cursor}"))
    pages += [("saga page (copy)", f"/ui/sagas/{oid}") for oid in copies]
    pages += [("saga page (original)", f"/ui/sagas/{oid}") for oid in templates]
    return pages


async def measure(
    client: httpx.AsyncClient, templates: Sequence[str], *, requests: int, warmup: int = 10
) -> list[PageTiming]:
    """Each page's timings over ``requests`` fetches (pages of one name share the count)."""
    grouped: dict[str, list[str]] = {}
    for name, path in await _pages(client, templates):
        grouped.setdefault(name, []).append(path)
    timings = []
    for name, paths in grouped.items():
        for i in range(warmup):
            (await client.get(paths[i % len(paths)])).raise_for_status()
        took: list[float] = []
        for i in range(requests):
            began = time.perf_counter()
            response = await client.get(paths[i % len(paths)])
            took.append((time.perf_counter() - began) * 1000)
            response.raise_for_status()
        took.sort()
        timings.append(
            PageTiming(
                name,
                paths[0],
                requests,
                round(took[len(took) // 2], 1),
                round(took[min(len(took) - 1, int(len(took) * 0.95))], 1),
                round(took[-1], 1),
            )
        )
    return timings


def render(timings: Sequence[PageTiming], sagas: int) -> str:
    lines = [
        f"console pages with {sagas} sagas (ms, client side, one request at a time)",
        "",
        "| page | requests | p50 | p95 | max |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {t.page} | {t.requests} | {t.p50_ms} | {t.p95_ms} | {t.max_ms} |" for t in timings
    ]
    return "\n".join(lines)
