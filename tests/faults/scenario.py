"""One chaos scenario runner, :func:`run_scenario`: load → fault → heal → check.

A scenario states only what differs — which fault, on which deployment (its pattern), what to
assert beyond the common checks. The runner starts a steady order load (:class:`faults.load.Load`;
every 10th order cannot ship), lets the fault break something once enough orders were accepted,
and, once the fault has healed and every start was answered, checks what every scenario must
end with: every start accepted and never answered as a client must not be, each saga terminal
within :data:`HEAL_DEADLINE` of the heal, SPEC §6 holding (:mod:`cloudmart.check`), every
process healthy again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import sqlalchemy as sa
from conftest import until
from processes import Deployment
from shop import JP, US, Shop, order, sync_engine

from cloudmart.check import Baseline, CheckReport, check_connection, snapshot_connection
from faults.load import Load

HEAL_DEADLINE = 60.0  # every saga terminal within this long after the last fault healed


@dataclasses.dataclass
class Run:
    """One scenario as it runs: what its fault and its own checks read. ``healed`` is when the
    fault returned (monotonic), once it has."""

    deployment: Deployment
    http: httpx.AsyncClient
    sql: sa.Engine
    shop: Shop
    bodies: list[dict[str, Any]]
    load: Load
    healed: float = 0.0

    @property
    def accepted(self) -> list[str]:
        """The order ids accepted so far."""
        return self.load.accepted


Step = Callable[[Run], Awaitable[None]]


async def run_scenario(
    deployment: Deployment,
    *,
    fault: Step,
    sagas: int,
    pace: float,
    fault_after: int,
    checks: Step | None = None,
    database_url: str | None = None,
) -> None:
    """Load ``sagas`` orders ``pace`` s apart into ``deployment``'s entry service; once
    ``fault_after`` were accepted, ``fault(run)`` breaks something and returns when it has
    healed; then the common checks (see the module doc), and ``checks(run)`` before the last
    of them (every process healthy). The database is read at ``database_url`` (default: the
    deployment's own, which may run through a fault proxy)."""
    sql = sync_engine(database_url or deployment.database_url)
    limits = httpx.Limits(max_connections=64)
    try:
        async with httpx.AsyncClient(timeout=30, limits=limits) as http:
            shop, bodies = scenario(sql, pattern=deployment.pattern, count=sagas)
            before = baseline(sql)
            entry = deployment.url(deployment.entry)
            path = "/saga/start" if deployment.pattern == "orchestration" else "/orders"
            load = Load(http, f"{entry}{path}", bodies, pace)
            run = Run(deployment, http, sql, shop, bodies, load)
            running = asyncio.create_task(load.run())
            try:
                await until(
                    lambda: len(load.accepted) >= fault_after or running.done(),
                    timeout=60,
                    what=f"{fault_after} starts accepted",
                )
                assert not running.done(), "the load ended before the fault"
                await fault(run)
                run.healed = time.monotonic()
                await running
            finally:
                running.cancel()
            assert load.refused == [] and len(load.accepted) == sagas, load.refused
            assert load.answers.unexpected == []
            await all_terminal(sql, load.accepted, deployment.pattern, run.healed)
            await invariants_hold(sql, before)
            if checks is not None:
                await checks(run)
            await all_healthy(http, deployment)
    finally:
        sql.dispose()


def scenario(sql: sa.Engine, *, pattern: str, count: int) -> tuple[Shop, list[dict[str, Any]]]:
    """Books and customers of one scenario, and ``count`` orders: every 10th cannot ship (US)."""
    shop = Shop(sql, pattern=pattern)
    books = [shop.book("100.00", 1000) for _ in range(3)]
    customers = [shop.customer("100000.00") for _ in range(5)]
    bodies = [
        order(
            customers[i % len(customers)],
            (books[i % len(books)], 1 + i % 2),
            address=US if i % 10 == 9 else JP,
        )
        for i in range(count)
    ]
    return shop, bodies


def terminal_count(sql: sa.Engine, order_ids: list[str], pattern: str) -> int:
    if pattern == "orchestration":
        query = "SELECT COUNT(*) FROM saga_instances WHERE order_id IN :ids AND status IN :done"
        done = ["COMPLETED", "FAILED"]
    else:
        query = "SELECT COUNT(*) FROM orders WHERE order_id IN :ids AND status IN :done"
        done = ["COMPLETED", "CANCELLED"]
    statement = sa.text(query).bindparams(
        sa.bindparam("ids", expanding=True), sa.bindparam("done", expanding=True)
    )
    with sql.connect() as conn:
        return int(conn.scalar(statement, {"ids": order_ids, "done": done}) or 0)


async def all_terminal(sql: sa.Engine, order_ids: list[str], pattern: str, healed: float) -> None:
    """Every order's saga ends within :data:`HEAL_DEADLINE` of the fault healing."""
    await until(
        lambda: terminal_count(sql, order_ids, pattern) == len(order_ids),
        timeout=max(1.0, healed + HEAL_DEADLINE - time.monotonic()),
        interval=0.5,
    )


def baseline(sql: sa.Engine) -> Baseline:
    with sql.connect() as conn:
        return snapshot_connection(conn)


async def invariants_hold(sql: sa.Engine, before: Baseline) -> None:
    """SPEC §6 over the whole database (this module's earlier scenarios included).

    Retried for a few seconds: in the choreography an order is CANCELLED while the other
    services' compensations may still be on their way."""

    def report() -> CheckReport:
        with sql.connect() as conn:
            return check_connection(conn, baseline=before, grace_seconds=0.0)

    try:
        await until(lambda: report().ok, timeout=20, interval=0.5)
    finally:
        final = report()
        assert final.ok, final.render()


def retried_steps(sql: sa.Engine, order_ids: list[str]) -> int:
    """Step attempts that failed transiently (and were retried) in these orders' sagas."""
    statement = sa.text(
        "SELECT COUNT(*) FROM saga_step_logs l JOIN saga_instances i ON i.saga_id = l.saga_id "
        "WHERE i.order_id IN :ids AND l.event_type IN ('StepRetrying', 'StepTimedOut')"
    ).bindparams(sa.bindparam("ids", expanding=True))
    with sql.connect() as conn:
        return int(conn.scalar(statement, {"ids": order_ids}) or 0)


async def all_healthy(http: httpx.AsyncClient, deployment: Deployment) -> None:
    async def healthy() -> bool:
        for name in deployment.processes:
            try:
                response = await http.get(f"{deployment.url(name)}/health", timeout=5)
            except httpx.TransportError:
                return False
            if response.status_code != 200:
                return False
        return True

    await until(healthy, timeout=HEAL_DEADLINE, interval=0.5)
