"""``cloudmart bench console``: how fast the operator console's pages answer with many sagas.

1. A few real sagas run through the orchestrator's REST API, a few of each ending (completed,
   refused at stock, at payment, at shipping), on the history's catalogue.
2. Every row of theirs is copied in bulk under new ids (:mod:`cloudmart.bench.preload`) until
   the database holds ``sagas`` sagas, their times spread over the past
   :data:`~cloudmart.bench.preload.SPREAD` (newest first is the console's order), the endings
   in equal shares. The copies are finished sagas, so no orchestrator drives them, and whole:
   a copy's page reads its order, payment and shipment as an original's does.
3. Each page is fetched ``requests`` times, one at a time, after a warm-up: the overview, the
   list (first page, a filter by status, by failed step, by operator flag, by order id prefix,
   a page deep in the cursor) and saga pages of copies and originals. Reported per page: p50,
   p95 and the slowest, in milliseconds, measured by the client (connection kept alive).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import httpx
import sqlalchemy as sa

from activities.db import create_engine
from cloudmart.bench import preload
from engine.adapters.sql_tables import saga_instances

__all__ = ["PageTiming", "fill", "measure", "render", "run_templates"]

KINDS = ("ok", "stock", "payment", "shipping")
DEEP = 5000  # the deep page starts after this many sagas


@dataclasses.dataclass(frozen=True)
class PageTiming:
    page: str
    path: str
    requests: int
    p50_ms: float
    p95_ms: float
    max_ms: float


async def run_templates(client: httpx.AsyncClient, database_url: str) -> list[str]:
    """A few sagas of each ending, run to their end through the REST API; their order ids."""
    templates = await preload.run_templates(client, database_url, KINDS)
    return [oid for kind in KINDS for oid in templates[kind]]


async def fill(database_url: str, templates: Sequence[str], sagas: int) -> int:
    """Copies of ``templates`` (order ids of :func:`run_templates`, the endings taken in
    turn) until the database holds ``sagas``; how many were added."""
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:
            held = int(
                await conn.scalar(sa.select(sa.func.count()).select_from(saga_instances)) or 0
            )
    finally:
        await engine.dispose()
    wanted = max(0, sagas - held)
    by_kind = {str(i): [oid] for i, oid in enumerate(templates)}
    return await preload.copy(
        database_url, by_kind, [str(i % len(templates)) for i in range(wanted)]
    )


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
