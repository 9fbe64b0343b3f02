"""The run: closed or open loop, the REST probe, progress lines, and the verdict of
:mod:`cloudmart.check` after it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TextIO

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.db import create_engine
from cloudmart import costs
from cloudmart.bench import where
from cloudmart.bench.catalogue import seed
from cloudmart.bench.figures import BenchResult, rollback_success
from cloudmart.bench.mix import order_body, plan
from cloudmart.bench.output import preloaded_line
from cloudmart.bench.preload import Preloaded
from cloudmart.bench.preload import preload as preload_sagas
from cloudmart.bench.tally import TERMINAL, Tally, result_of

PROBE_PER_SECOND = 2
"""Status reads per second the bench sends while it runs, to time REST under the load: few
enough to add little (at concurrency 1, ten a second added a read to almost every saga)."""


async def _one(
    client: httpx.AsyncClient, pattern: str, body: dict[str, Any], tally: Tally, deadline: float
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


async def _probe(clients: _Clients, pattern: str, tally: Tally) -> None:
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
    preload: int = 0,
) -> BenchResult:
    """Run ``sagas`` sagas through ``url``'s REST API and measure them (module docstring).

    ``rate`` (sagas/s) selects the open loop, else ``concurrency`` workers run a closed loop.
    ``database_url`` (the deployment's database) adds the bench catalogue, snapshots the
    conservation totals before the load and checks every invariant after it. ``floor``: the
    content of a ``cloudmart bench floor`` file. ``settings``: recorded as given (pool sizes...).
    ``progress``: a stream for a ``\\r`` progress line (stderr on the command line).
    ``transport``: an httpx transport to use instead of the network (an app in process).
    ``watch``: ``{name: port}`` of the processes whose CPU to measure (:mod:`cloudmart.costs`);
    the bench's own process is always watched. ``preload``: that many finished sagas written
    into ``database_url`` first (:mod:`cloudmart.bench.preload`), not measured.
    """
    mix = dict(mix or {})
    kinds = plan(sagas, mix)
    preloaded = None
    if preload:
        if database_url is None:
            raise ValueError("a preload needs the deployment's database")
        preloaded = await _preload(url, database_url, preload, pattern, mix, transport, progress)
    engine = create_engine(database_url, pool_size=1, max_overflow=1) if database_url else None
    try:
        baseline = None
        if engine is not None:
            from cloudmart.check import snapshot

            async with engine.begin() as conn:
                await seed(conn)
            baseline = await snapshot(engine)
        meter = costs.Meter({**costs.find(watch or {}), "bench": os.getpid()})
        counted = await costs.database_counters(engine) if engine is not None else None
        sent = await _transport_messages(url, transport)
        meter.start()
        tally, wall = await _drive(
            url, pattern, kinds, concurrency, rate, tally=Tally(), progress=progress,
            saga_timeout=saga_timeout, transport=transport,
        )  # fmt: skip
        used = meter.stop()
        ended = tally.count("COMPLETED") + tally.count("FAILED")
        cpu = costs.per_unit(used, ended)
        messages = _per_saga(sent, await _transport_messages(url, transport), ended)
        database = None
        verdict: dict[str, Any] | None = None
        rollback: float | None = None
        versions = where.versions()
        if engine is not None:
            database = costs.counter_deltas(counted, await costs.database_counters(engine), ended)
            verdict, rollback = await _verdict(engine, baseline, tally.order_ids)
            versions["database"] = await where.database_version(engine)
    finally:
        if engine is not None:
            await engine.dispose()
    return result_of(
        tally, kinds, wall, pattern=pattern, concurrency=concurrency, rate=rate, mix=mix,
        verdict=verdict, rollback=rollback, versions=versions, settings=settings, floor=floor,
        cpu=cpu, database=database, messages=messages,
        preloaded=preloaded.as_dict() if preloaded is not None else None,
    )  # fmt: skip


async def _preload(
    url: str,
    database_url: str,
    sagas: int,
    pattern: str,
    mix: Mapping[str, float],
    transport: httpx.AsyncBaseTransport | None,
    progress: TextIO | None,
) -> Preloaded:
    if progress is not None:
        progress.write(f"  preloading {sagas} finished sagas...\n")
        progress.flush()
    async with httpx.AsyncClient(base_url=url, transport=transport, timeout=60) as client:
        done = await preload_sagas(client, database_url, sagas, pattern=pattern, mix=mix)
    if progress is not None:
        progress.write(f"  {preloaded_line(done.as_dict())}\n")
        progress.flush()
    return done


async def _transport_messages(
    url: str, transport: httpx.AsyncBaseTransport | None
) -> dict[str, float] | None:
    """The orchestrator's ``cloudmart_transport_messages`` by kind; None where it has none."""
    try:
        async with httpx.AsyncClient(base_url=url, transport=transport, timeout=5) as client:
            response = await client.get("/metrics")
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        if family.name == "cloudmart_transport_messages":
            for sample in family.samples:
                found[sample.labels.get("kind", "")] = sample.value
    return found or None


def _per_saga(
    before: dict[str, float] | None, after: dict[str, float] | None, ended: int
) -> dict[str, float] | None:
    if before is None or after is None or not ended:
        return None
    return {kind: round((after[kind] - before.get(kind, 0)) / ended, 2) for kind in after}


async def _drive(
    url: str,
    pattern: str,
    kinds: list[str],
    concurrency: int,
    rate: float | None,
    *,
    tally: Tally,
    progress: TextIO | None,
    saga_timeout: float,
    transport: httpx.AsyncBaseTransport | None,
) -> tuple[Tally, float]:
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


async def _show(tally: Tally, total: int, stream: TextIO) -> None:
    """The progress line: redrawn four times a second on a terminal, else (a log file) a line
    every five seconds."""
    live = stream.isatty()
    while True:
        _progress_line(tally, total, stream, end="" if live else "\n")
        await asyncio.sleep(0.25 if live else 5.0)


def _progress_line(tally: Tally, total: int, stream: TextIO | None, end: str = "") -> None:
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
