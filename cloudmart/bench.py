"""``cloudmart bench``: real sagas through the public REST API of a running deployment.

Two ways to load it:

- **closed loop** (``concurrency``): that many workers each start a saga (``POST /saga/start``
  on the orchestrator, or ``POST /orders`` on the order service in the choreography), wait for
  its end with a long-poll, and start the next, until ``sagas`` have run;
- **open loop** (``rate``): saga *i* starts at ``i / rate`` seconds whatever the others do, so a
  system that falls behind shows it as growing latency, measured from the moment each saga was
  due to start (no coordinated omission).

A ``mix`` makes a share of the orders fail at a chosen step (SPEC §4): ``stock`` orders a book
the bench keeps at zero stock, ``payment`` charges a bench customer whose balance is zero,
``shipping`` ships to ``US`` (not served). The bench adds its own catalogue (ids from 900001)
through the database, so every other saga can complete.

Reported: sagas per second, start→terminal latency percentiles (and the 1..100 quantiles, for
CDFs), REST response times, errors (a non-2xx answer, or a saga not terminal), and, when the
deployment's database is given, the verdict of :mod:`cloudmart.check` (snapshot before, check
after) with the rollback success: FAILED sagas left with no effect over all FAILED sagas.

REST response time is over the requests that answer at once: the start requests, and a status
read (no ``wait``) of the latest saga started, sent :data:`PROBE_PER_SECOND` times a second
while the load runs. The clients' long-polls wait for the saga by design, so they are reported
apart (``long_poll_ms``), not as response times.

What the run cost (:mod:`cloudmart.costs`): CPU ms per ended saga of each watched process (the
services, the servers and the bench itself, found by the ports they listen on, on this
machine) with the machine's busy share, and the database's commits and statements per saga.

The results also record the machine, the versions of the parts, the settings used and, given a
floor (a ``cloudmart bench floor`` file, or one measured just before the run), the floor, the
latency as a multiple of it; the report also gives the throughput as a share of the floor's
ceiling when the floor was measured under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import random
import ssl
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from importlib import metadata
from typing import Any, TextIO
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.db import create_engine
from activities.tables import books, customers, inventory
from cloudmart import costs
from services._kit.roster import ports_from, spec_of

BENCH_CUSTOMER = 900_001
BROKE_CUSTOMER = 900_002
BENCH_BOOKS = list(range(900_001, 900_011))
SOLD_OUT_BOOK = 900_011
ADDRESS = {
    "name": "Bench",
    "line1": "1-1",
    "city": "Tokyo",
    "postal_code": "100-0001",
    "country": "JP",
}
FAILURES = ("stock", "payment", "shipping")
"""The steps a ``mix`` can make an order fail at, in saga order."""
TERMINAL = ("COMPLETED", "FAILED")
PROBE_PER_SECOND = 2
"""Status reads per second the bench sends while it runs, to time REST under the load: few
enough to add little (at concurrency 1, ten a second added a read to almost every saga)."""


@dataclass
class BenchResult:
    """One run. ``latency_ms``: start→terminal of every saga that ended; ``rest_ms``: the
    requests that answer at once (starts and status reads); ``start_response_ms`` and
    ``status_read_ms``: each kind alone; ``long_poll_ms``: the waiting status requests;
    ``cpu``: :func:`cloudmart.costs.per_unit` per ended saga; ``database``: the database's
    counters per ended saga (:data:`cloudmart.costs.DATABASE_COUNTERS`)."""

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
    rate: float | None = None
    mix: dict[str, float] = field(default_factory=dict)
    terminal_per_second: float = 0.0
    error_rate: float = 0.0
    unexpected: int = 0
    http_errors: int = 0
    rest_ms: dict[str, float] = field(default_factory=dict)
    latency_quantiles: list[float] = field(default_factory=list)
    latency_by_kind: dict[str, dict[str, float]] = field(default_factory=dict)
    outcomes_by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    rollback_success: float | None = None
    check: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    timestamp: str = ""
    floor: dict[str, Any] | None = None
    latency_vs_floor: float | None = None
    status_read_ms: dict[str, float] = field(default_factory=dict)
    long_poll_ms: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, Any] | None = None
    database: dict[str, float] | None = None


# -- statistics ------------------------------------------------------------------------------


def quantile(ordered: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-quantile (0 < q <= 1) of ``ordered`` (sorted, not empty)."""
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """p50, p95, p99, max and mean of ``samples`` in their unit, rounded to 0.01; {} if none."""
    if not samples:
        return {}
    ordered = sorted(samples)
    return {
        "p50": round(quantile(ordered, 0.50), 2),
        "p95": round(quantile(ordered, 0.95), 2),
        "p99": round(quantile(ordered, 0.99), 2),
        "max": round(ordered[-1], 2),
        "mean": round(statistics.fmean(ordered), 2),
        "count": len(ordered),
    }


def quantiles(samples: Sequence[float]) -> list[float]:
    """The 1st..100th percentiles of ``samples`` (a compact CDF); [] if none."""
    if not samples:
        return []
    ordered = sorted(samples)
    return [round(quantile(ordered, q / 100), 3) for q in range(1, 101)]


# -- the mix ---------------------------------------------------------------------------------


def parse_mix(text: str | None) -> dict[str, float]:
    """``"stock=0.1,payment=0.1"`` → ``{"stock": 0.1, "payment": 0.1}``.

    Raises ValueError for an unknown step, a share outside [0, 1] or shares summing above 1.
    """
    mix: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in FAILURES:
            raise ValueError(f"mix entries are STEP=SHARE with STEP in {', '.join(FAILURES)}")
        share = float(value)
        if not 0 <= share <= 1:
            raise ValueError(f"the share of {name} must be between 0 and 1, not {share}")
        mix[name] = share
    if sum(mix.values()) > 1 + 1e-9:
        raise ValueError("the shares of the mix add up to more than 1")
    return mix


def plan(sagas: int, mix: Mapping[str, float]) -> list[str]:
    """What each saga is meant to do, ``"ok"`` or the step it fails at: ``round(share ×
    sagas)`` of each failure, spread over the run in a fixed pseudo-random order."""
    kinds: list[str] = []
    for name in FAILURES:
        kinds += [name] * round(mix.get(name, 0.0) * sagas)
    kinds = kinds[:sagas]
    kinds += ["ok"] * (sagas - len(kinds))
    random.Random(sagas).shuffle(kinds)
    return kinds


def order_body(i: int, kind: str) -> dict[str, Any]:
    """The order body of saga ``i`` meant to end as ``kind`` (see :func:`plan`)."""
    book = SOLD_OUT_BOOK if kind == "stock" else BENCH_BOOKS[i % len(BENCH_BOOKS)]
    return {
        "customer_id": BROKE_CUSTOMER if kind == "payment" else BENCH_CUSTOMER,
        "items": [{"book_id": book, "quantity": 1}],
        "shipping_address": {**ADDRESS, "country": "US" if kind == "shipping" else "JP"},
    }


# -- the catalogue ---------------------------------------------------------------------------


async def seed_catalogue(database_url: str) -> None:
    """The bench's own customers and books: one rich customer and ten well-stocked books that
    every saga can complete with, one customer with nothing and one book out of stock."""
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        async with engine.begin() as conn:
            await _seed(conn)
    finally:
        await engine.dispose()


async def _seed(conn: Any) -> None:
    people = {BENCH_CUSTOMER: "Bench", BROKE_CUSTOMER: "Bench (broke)"}
    have = set(
        await conn.scalars(
            sa.select(customers.c.customer_id).where(customers.c.customer_id.in_(people))
        )
    )
    missing = [c for c in people if c not in have]
    if missing:
        await conn.execute(
            customers.insert(),
            [
                {
                    "customer_id": c,
                    "name": people[c],
                    "email": f"bench-{c}@example.invalid",
                    "balance": Decimal(0),
                }
                for c in missing
            ],
        )
    titles = [*BENCH_BOOKS, SOLD_OUT_BOOK]
    have = set(await conn.scalars(sa.select(books.c.book_id).where(books.c.book_id.in_(titles))))
    missing = [b for b in titles if b not in have]
    if missing:
        await conn.execute(
            books.insert(),
            [{"book_id": b, "title": f"Bench {b}", "price": Decimal("1.00")} for b in missing],
        )
        await conn.execute(
            inventory.insert(), [{"book_id": b, "available": 0, "reserved": 0} for b in missing]
        )
    await conn.execute(
        customers.update()
        .where(customers.c.customer_id == BENCH_CUSTOMER)
        .values(balance=Decimal("9999999999.00"))
    )
    await conn.execute(
        inventory.update().where(inventory.c.book_id.in_(BENCH_BOOKS)).values(available=10_000_000)
    )


# -- the run ---------------------------------------------------------------------------------


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    by_kind: dict[str, list[float]] = field(default_factory=dict)
    outcomes: dict[str, Counter[str]] = field(default_factory=dict)
    starts: list[float] = field(default_factory=list)
    reads: list[float] = field(default_factory=list)
    polls: list[float] = field(default_factory=list)
    http_errors: int = 0
    order_ids: list[str] = field(default_factory=list)
    done: int = 0

    def count(self, outcome: str) -> int:
        return sum(c[outcome] for c in self.outcomes.values())


async def _one(
    client: httpx.AsyncClient, pattern: str, body: dict[str, Any], tally: _Tally, deadline: float
) -> str:
    """Start one saga and wait for its end: COMPLETED, FAILED, or ``"error"``."""
    path, status_path = _paths(pattern)
    started = await client.post(path, json=body)
    if started.status_code != 202:
        return "error"
    order_id = str(started.json()["order_id"])
    tally.order_ids.append(order_id)
    while True:
        wait = max(1, min(30, int(deadline - time.monotonic())))
        response = await client.get(status_path.format(order_id), params={"wait": wait})
        if response.status_code != 200:
            return "error"
        status = str(response.json()["status"])
        if pattern == "choreography":
            status = {"COMPLETED": "COMPLETED", "CANCELLED": "FAILED"}.get(status, status)
        if status in TERMINAL:
            return status
        if time.monotonic() >= deadline:
            return "error"


def _paths(pattern: str) -> tuple[str, str]:
    """The start path and the status path (with ``{}`` for the order id) of ``pattern``."""
    if pattern == "orchestration":
        return "/saga/start", "/saga/{}/status"
    return "/orders", "/orders/{}"


class _Clients:
    """HTTP clients of one connection each, lent to one saga at a time (its requests follow one
    another). One shared pool would do, but httpx looks through every connection of a pool on
    each request, which made the bench the third-busiest process at concurrency 32."""

    def __init__(self, make: Callable[[], httpx.AsyncClient]) -> None:
        self._make = make
        self._idle: list[httpx.AsyncClient] = []
        self._made: list[httpx.AsyncClient] = []

    @contextlib.asynccontextmanager
    async def lend(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._idle:
            client = self._idle.pop()
        else:
            client = self._make()
            self._made.append(client)
        try:
            yield client
        finally:
            self._idle.append(client)

    async def __aenter__(self) -> _Clients:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in self._made:
            await client.aclose()


async def _probe(clients: _Clients, pattern: str, tally: _Tally) -> None:
    """Read the status of the latest saga started, :data:`PROBE_PER_SECOND` times a second,
    until cancelled; the hooks time each read."""
    status_path = _paths(pattern)[1]
    period = 1 / PROBE_PER_SECOND
    due = time.perf_counter()
    async with clients.lend() as client:
        while True:
            if tally.order_ids:
                try:
                    await client.get(status_path.format(tally.order_ids[-1]))
                except httpx.HTTPError:  # no answer at all: the hooks saw nothing to count
                    tally.http_errors += 1
            due += period
            await asyncio.sleep(max(0.0, due - time.perf_counter()))  # the probe's schedule


async def run(
    url: str,
    sagas: int,
    concurrency: int = 1,
    pattern: str = "orchestration",
    *,
    rate: float | None = None,
    mix: Mapping[str, float] | None = None,
    database_url: str | None = None,
    floor: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
    progress: TextIO | None = None,
    saga_timeout: float = 120.0,
    transport: httpx.AsyncBaseTransport | None = None,
    watch: Mapping[str, int | None] | None = None,
) -> BenchResult:
    """Run ``sagas`` sagas through ``url``'s REST API and measure them (module docstring).

    ``rate`` (sagas/s) selects the open loop, else ``concurrency`` workers run a closed loop.
    ``database_url`` (the deployment's database) adds the bench catalogue, snapshots the
    conservation totals before the load and checks every invariant after it. ``floor``: the
    content of a ``cloudmart bench floor`` file. ``settings``: recorded as given (pool sizes...).
    ``progress``: a stream for a ``\\r`` progress line (stderr on the command line).
    ``transport``: an httpx transport to use instead of the network (an app in process).
    ``watch``: ``{name: port}`` of the processes whose CPU to measure (:mod:`cloudmart.costs`);
    the bench's own process is always watched.
    """
    mix = dict(mix or {})
    kinds = plan(sagas, mix)
    engine = create_engine(database_url, pool_size=1, max_overflow=1) if database_url else None
    try:
        baseline = None
        if engine is not None:
            from cloudmart.check import snapshot

            async with engine.begin() as conn:
                await _seed(conn)
            baseline = await snapshot(engine)
        meter = costs.Meter({**costs.find(watch or {}), "bench": os.getpid()})
        counted = await costs.database_counters(engine) if engine is not None else None
        meter.start()
        tally, wall = await _drive(
            url, pattern, kinds, concurrency, rate, tally=_Tally(), progress=progress,
            saga_timeout=saga_timeout, transport=transport,
        )  # fmt: skip
        used = meter.stop()
        ended = tally.count("COMPLETED") + tally.count("FAILED")
        cpu = costs.per_unit(used, ended)
        database = None
        verdict: dict[str, Any] | None = None
        rollback: float | None = None
        versions = _versions()
        if engine is not None:
            database = costs.counter_deltas(counted, await costs.database_counters(engine), ended)
            verdict, rollback = await _verdict(engine, baseline, tally.order_ids)
            versions["database"] = await database_version(engine)
    finally:
        if engine is not None:
            await engine.dispose()
    return _result(
        tally, kinds, wall, pattern=pattern, concurrency=concurrency, rate=rate, mix=mix,
        verdict=verdict, rollback=rollback, versions=versions, settings=settings, floor=floor,
        cpu=cpu, database=database,
    )  # fmt: skip


async def _drive(
    url: str,
    pattern: str,
    kinds: list[str],
    concurrency: int,
    rate: float | None,
    *,
    tally: _Tally,
    progress: TextIO | None,
    saga_timeout: float,
    transport: httpx.AsyncBaseTransport | None,
) -> tuple[_Tally, float]:
    async def timed(request: httpx.Request) -> None:
        request.extensions["began"] = time.perf_counter()

    async def record(response: httpx.Response) -> None:
        took = (time.perf_counter() - response.request.extensions["began"]) * 1000
        request = response.request
        if request.method == "POST":
            tally.starts.append(took)
        elif "wait" in request.url.params:
            tally.polls.append(took)
        else:
            tally.reads.append(took)
        if not response.is_success:
            tally.http_errors += 1

    hooks: dict[str, list[Callable[..., Any]]] = {"request": [timed], "response": [record]}
    tls = ssl.create_default_context()  # one for every client: each would load the CAs again
    clients = _Clients(
        lambda: httpx.AsyncClient(
            base_url=url,
            timeout=60,
            limits=httpx.Limits(max_connections=1),
            event_hooks=hooks,
            transport=transport,
            verify=tls,
        )
    )

    async def saga(i: int, due: float) -> None:
        kind = kinds[i]
        try:
            async with clients.lend() as client:
                outcome = await _one(
                    client, pattern, order_body(i, kind), tally, time.monotonic() + saga_timeout
                )
        except httpx.HTTPError:
            outcome = "error"
        took = (time.perf_counter() - due) * 1000
        tally.outcomes.setdefault(kind, Counter())[outcome] += 1
        if outcome in TERMINAL:
            tally.latencies.append(took)
            tally.by_kind.setdefault(kind, []).append(took)
        tally.done += 1

    async with clients:
        shown = asyncio.create_task(_show(tally, len(kinds), progress)) if progress else None
        probe = asyncio.create_task(_probe(clients, pattern, tally))
        began = time.perf_counter()
        try:
            if rate:
                await _open_loop(saga, len(kinds), rate, began)
            else:
                todo = iter(range(len(kinds)))

                async def worker() -> None:
                    for i in todo:
                        await saga(i, time.perf_counter())

                await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            wall = time.perf_counter() - began
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
            if shown is not None:
                shown.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await shown
                _progress_line(tally, len(kinds), progress, end="\n")
    return tally, wall


async def _open_loop(saga: Any, sagas: int, rate: float, began: float) -> None:
    tasks: list[asyncio.Task[None]] = []
    for i in range(sagas):
        due = began + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # the schedule itself, not a wait for something
        tasks.append(asyncio.create_task(saga(i, due)))
    await asyncio.gather(*tasks)


async def _show(tally: _Tally, total: int, stream: TextIO) -> None:
    """The progress line: redrawn four times a second on a terminal, else (a log file) a line
    every five seconds."""
    live = stream.isatty()
    while True:
        _progress_line(tally, total, stream, end="" if live else "\n")
        await asyncio.sleep(0.25 if live else 5.0)


def _progress_line(tally: _Tally, total: int, stream: TextIO | None, end: str = "") -> None:
    if stream is None:
        return
    redraw = "\r" if stream.isatty() else ""
    stream.write(
        f"{redraw}  {tally.done}/{total} sagas  "
        f"completed {tally.count('COMPLETED')}  failed {tally.count('FAILED')}  "
        f"errors {tally.count('error')}{end}"
    )
    stream.flush()


async def _verdict(
    engine: AsyncEngine, baseline: Any, order_ids: list[str], settle: float = 10.0
) -> tuple[dict[str, Any], float | None]:
    """``cloudmart.check`` over the bench's orders, and the rollback success it implies.

    Checked again (for up to ``settle`` seconds) while some invariant fails: in the
    choreography an order reads CANCELLED while other services' compensations are on their way.
    """
    from cloudmart.check import check

    deadline = time.monotonic() + settle
    while True:
        report = await check(engine, baseline=baseline, grace_seconds=0.0, order_ids=order_ids)
        if report.ok or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.2)
    failed = _failed_orders(report)
    rollback = rollback_success(
        failed, [v.subject for v in report.violations if v.rule == "failed"]
    )
    verdict = {
        "ok": report.ok,
        "violations": len(report.violations),
        "violations_by_rule": report.by_rule(),
        "shown": [str(v) for v in report.violations[:20]],
        "sagas": report.sagas,
        "orders": report.orders,
    }
    return verdict, rollback


def _failed_orders(report: Any) -> int:
    """FAILED sagas in the report (CANCELLED orders where there are no saga rows)."""
    if report.sagas:
        return int(report.sagas.get("FAILED", 0))
    return int(report.orders.get("CANCELLED", 0))


def rollback_success(failed: int, failed_subjects: Sequence[str]) -> float | None:
    """Share of ``failed`` sagas with no effect left; ``failed_subjects`` are the subjects of
    ``failed`` violations (several may name one saga). None when no saga failed."""
    if failed == 0:
        return None
    broken = len(set(failed_subjects))
    return round((failed - broken) / failed, 4)


def _result(
    tally: _Tally,
    kinds: list[str],
    wall: float,
    *,
    pattern: str,
    concurrency: int,
    rate: float | None,
    mix: dict[str, float],
    verdict: dict[str, Any] | None,
    rollback: float | None,
    versions: dict[str, str],
    settings: Mapping[str, Any] | None,
    floor: Mapping[str, Any] | None,
    cpu: dict[str, Any] | None = None,
    database: dict[str, float] | None = None,
) -> BenchResult:
    completed, failed = tally.count("COMPLETED"), tally.count("FAILED")
    errors = len(kinds) - completed - failed
    expected = {"ok": "COMPLETED"}
    unexpected = sum(
        n
        for kind, counts in tally.outcomes.items()
        for outcome, n in counts.items()
        if outcome in TERMINAL and outcome != expected.get(kind, "FAILED")
    )
    latency = percentiles(tally.latencies)
    multiple = None
    if floor is not None and latency:
        floor_p50 = floor_ms(floor, pattern)
        if floor_p50:
            multiple = round(latency["p50"] / floor_p50, 2)
    return BenchResult(
        pattern=pattern,
        sagas=len(kinds),
        concurrency=concurrency,
        wall_seconds=round(wall, 3),
        completed=completed,
        failed=failed,
        errors=errors,
        sagas_per_second=round(completed / wall, 1) if wall else 0.0,
        latency_ms=latency,
        start_response_ms=percentiles(tally.starts),
        machine=machine(),
        rate=rate,
        mix=mix,
        terminal_per_second=round((completed + failed) / wall, 1) if wall else 0.0,
        error_rate=round(errors / len(kinds), 4) if kinds else 0.0,
        unexpected=unexpected,
        http_errors=tally.http_errors,
        rest_ms=percentiles(tally.starts + tally.reads),
        status_read_ms=percentiles(tally.reads),
        long_poll_ms=percentiles(tally.polls),
        latency_quantiles=quantiles(tally.latencies),
        latency_by_kind={k: percentiles(v) for k, v in sorted(tally.by_kind.items())},
        outcomes_by_kind={k: dict(v) for k, v in sorted(tally.outcomes.items())},
        rollback_success=rollback,
        check=verdict,
        versions=versions,
        settings={
            "pattern": pattern,
            "sagas": len(kinds),
            "concurrency": None if rate else concurrency,
            "rate": rate,
            "mix": mix,
            **(settings or {}),
        },
        timestamp=datetime.now(UTC).isoformat(timespec="seconds"),
        floor=dict(floor) if floor is not None else None,
        latency_vs_floor=multiple,
        cpu=cpu,
        database=database,
    )


def ceiling_per_second(floor: Mapping[str, Any], pattern: str) -> float | None:
    """The most sagas/s of ``pattern`` the primitives allow, from a floor measured under load
    (``cloudmart bench floor`` with ``--load``); None when the floor has no ceiling."""
    saga = floor.get("sagas", {}).get(pattern) or {}
    value = (saga.get("ceiling") or {}).get("per_second")
    return float(value) if isinstance(value, int | float) and value > 0 else None


def floor_ms(floor: Mapping[str, Any], pattern: str) -> float | None:
    """The p50 floor of one saga of ``pattern`` in a ``cloudmart bench floor`` result."""
    saga = floor.get("sagas", {}).get(pattern)
    return None if saga is None else float(saga["p50_ms"])


# -- where it ran ----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """Cores, CPU model and Python version of this machine."""
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


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("sqlalchemy", "aio-pika", "redis", "aiomysql", "httpx", "uvicorn"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "absent"
    return found


async def database_version(engine: AsyncEngine) -> str:
    """The server's version (``SELECT VERSION()``; SQLite's library version on SQLite)."""
    query = "SELECT sqlite_version()" if engine.dialect.name == "sqlite" else "SELECT VERSION()"
    async with engine.connect() as conn:
        value = await conn.scalar(sa.text(query))
    return f"{engine.dialect.name} {value}"


# -- output ----------------------------------------------------------------------------------


def report(result: BenchResult) -> str:
    """The run in a few lines of text."""
    lat, start, rest = result.latency_ms, result.start_response_ms, result.rest_ms
    read, poll = result.status_read_ms, result.long_poll_ms
    load = (
        f"at {result.rate} sagas/s (open loop)"
        if result.rate
        else (f"at concurrency {result.concurrency}")
    )
    mix = ", ".join(f"{k} {v:g}" for k, v in result.mix.items()) or "none"
    lines = [
        f"{result.pattern}: {result.sagas} sagas {load} in {result.wall_seconds}s, "
        f"failure mix {mix}",
        f"  completed {result.completed}, failed {result.failed}, errors {result.errors} "
        f"(error rate {result.error_rate:.2%}), unexpected outcomes {result.unexpected}",
        f"  {result.sagas_per_second} completed sagas/s, "
        f"{result.terminal_per_second} ended sagas/s",
        f"  start→terminal ms: p50 {lat.get('p50')} p95 {lat.get('p95')} "
        f"p99 {lat.get('p99')} max {lat.get('max')}",
        f"  REST ms ({rest.get('count', 0)} requests answered at once): p50 {rest.get('p50')} "
        f"p99 {rest.get('p99')}; starts p50 {start.get('p50')} p99 {start.get('p99')}, "
        f"status reads p50 {read.get('p50')} p99 {read.get('p99')}",
        f"  long-polls ({poll.get('count', 0)}, waiting for the saga): p50 {poll.get('p50')} "
        f"p99 {poll.get('p99')}",
    ]
    if result.cpu is not None and result.cpu["ms"]:
        each = ", ".join(
            f"{name} {ms:g}" for name, ms in sorted(result.cpu["ms"].items(), key=lambda i: -i[1])
        )
        busy = result.cpu["busy"]
        shown = f"; machine busy {busy:.0%}" if busy is not None else ""
        lines.append(f"  CPU ms per saga: {result.cpu['total_ms']:g} ({each}){shown}")
    if result.database is not None:
        lines.append(
            "  database per saga: "
            + ", ".join(f"{name} {n:g}" for name, n in result.database.items())
        )
    if result.latency_vs_floor is not None and result.floor is not None:
        lines.append(
            f"  p50 is {result.latency_vs_floor}× the floor of "
            f"{floor_ms(result.floor, result.pattern)} ms"
        )
    ceiling = ceiling_per_second(result.floor, result.pattern) if result.floor else None
    if ceiling and result.completed:
        lines.append(
            f"  {result.sagas_per_second} sagas/s is {result.sagas_per_second / ceiling:.0%} "
            f"of the floor's ceiling of {ceiling} sagas/s"
        )
    if result.check is not None:
        verdict = "ok" if result.check["ok"] else "VIOLATED"
        rollback = (
            "no saga failed"
            if result.rollback_success is None
            else f"{result.rollback_success:.2%} of FAILED sagas fully compensated"
        )
        lines.append(
            f"  invariants: {verdict} ({result.check['violations']} violations); "
            f"rollback: {rollback}"
        )
        lines += [f"    {shown}" for shown in result.check["shown"][:5]]
    return "\n".join(lines)


def to_json(result: BenchResult) -> str:
    return json.dumps(asdict(result), indent=2)


def watched(
    url: str, pattern: str, services: Sequence[str], ports: Mapping[str, int], settings: Any
) -> dict[str, int | None]:
    """``{name: port}`` of what to measure the CPU of: the ``services`` on ``ports`` when ``url``
    is on this machine, and the servers the pattern uses (its database, and RabbitMQ or Redis)
    when their URLs (in ``settings``) are."""
    here = costs.local_port(url, 80) is not None
    watch: dict[str, int | None] = {name: ports[name] for name in services} if here else {}
    watch["mariadb"] = costs.local_port(settings.effective_database_url, 3306)
    if pattern == "orchestration":
        watch["rabbitmq"] = costs.local_port(settings.rabbitmq_url, 5672)
    else:
        watch["redis"] = costs.local_port(settings.redis_url, 6379)
    return watch


def ports_beside(url: str, entry: str) -> dict[str, int]:
    """Each service's port if ``url`` (the ``entry`` service's) follows the ``--base-port``
    layout: orchestrator on base + 5, order on base + 1..."""
    port = urlsplit(url).port or (443 if url.startswith("https") else 80)
    return ports_from(port - spec_of(entry).offset)


# -- a deployment of its own (``--start``) ---------------------------------------------------


@contextlib.contextmanager
def deployment(
    services: list[str],
    pattern: str,
    ports: dict[str, int],
    *,
    log_path: str,
    health_timeout: float = 60.0,
) -> Iterator[None]:
    """Every service of ``pattern`` as ``cloudmart serve`` processes (as ``cloudmart up`` starts
    them), healthy on ``ports``, stopped on exit; their logs in ``log_path``.

    The database named by the environment must already have its tables (``cloudmart db init``).
    """
    from cloudmart.runner import start_services, stop_services

    with open(log_path, "ab") as log:
        procs = start_services(services, pattern, ports=ports, output=log)
        try:
            deadline = time.monotonic() + health_timeout
            for name in services:
                _wait_healthy(name, procs[name], ports[name], deadline, log_path)
            yield
        finally:
            stop_services(procs)


def _wait_healthy(
    name: str, proc: subprocess.Popen[bytes], port: int, deadline: float, log_path: str
) -> None:
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_path}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not healthy on port {port}; see {log_path}")
        time.sleep(0.1)
