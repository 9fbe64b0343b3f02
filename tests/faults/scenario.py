"""What the infrastructure and network fault scenarios share: their orders, and the checks
that end every scenario — each saga terminal within :data:`HEAL_DEADLINE` of the fault
healing, every process healthy again, SPEC §6 holding (:mod:`cloudmart.check`)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import sqlalchemy as sa
from conftest import until
from processes import Deployment
from shop import JP, US, Shop, order

from cloudmart.check import Baseline, CheckReport, check_connection, snapshot_connection

HEAL_DEADLINE = 60.0  # every saga terminal within this long after the last fault healed


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
