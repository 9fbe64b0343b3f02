"""``cloudmart check``: SPEC §6's guarantees, checked over a live database.

Every rule is one SQL query that returns the offending ids, so a report names exactly what broke
and the check stays cheap on a large database. All queries run in one read-only transaction
(REPEATABLE READ on MySQL/MariaDB: one consistent snapshot), so a check taken under load never
sees half of an operation.

Rules (``Violation.rule``):

``stuck``
    A saga not COMPLETED/FAILED, or (choreography: no saga row) an order still PENDING, created
    more than ``grace_seconds`` ago. A saga PARKED for an operator is stuck too.
``completed``
    A COMPLETED saga/order whose effects are not all there: order COMPLETED, payment captured for
    the order's total, shipment ARRANGED, every item's units consumed.
``failed``
    A FAILED saga (or CANCELLED order) with an effect left: payment captured, shipment live, stock
    still reserved or consumed, order not cancelled.
``twice``
    A step completed, or a compensation completed, twice in one saga's history.
``compensation-order``
    Compensations not in reverse order of their steps.
``owners``
    Two owners wrote history under one lease version: two orchestrators drove one saga at once.
``stock``
    A book whose ``reserved`` is not the sum of its live reservations, negative stock, or (given a
    baseline) ``available + reserved + shipped`` changed.
``money``
    A negative balance, or (given a baseline) ``balance + captured payments`` changed.
``ledger``
    A customer's ``balance``, or a book's ``available``, ``reserved`` or units shipped (its
    CONSUMED reservations), that is not the sum of its ledger entries: the row changed outside
    any operation (by hand in SQL, say). Every operation that moves money or stock records the
    movement in ``ledger_entries`` in its own transaction, and a row inserted directly opens
    its account with what it holds then, so this needs no baseline. One grouped query per
    table; scoped to a baseline's books and customers when the check is scoped to some orders.

Outcome rules (``completed``/``failed``) skip sagas that reached their end less than
``grace_seconds`` ago: in the choreography an order can be CANCELLED while the compensations of
other services are still on their way. Conservation needs the totals from before the load: take a
:func:`snapshot` first (``cloudmart check --snapshot FILE``) and pass it as ``baseline``. The
``ledger`` rule needs none: the ledger itself says what every row must hold.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from cloudmart.check.report import Baseline, CheckReport, Violation
from cloudmart.check.rules import (
    MONEY_TOTALS,
    STOCK_TOTALS,
    Scope,
    changed,
    history,
    ledger,
    money,
    money_of,
    outcomes,
    stock,
    stuck,
)

__all__ = [
    "Baseline",
    "CheckReport",
    "Violation",
    "check",
    "check_connection",
    "snapshot",
    "snapshot_connection",
]


async def snapshot(engine: AsyncEngine) -> Baseline:
    """The conservation totals now, to compare a later :func:`check` against."""
    async with engine.connect() as conn:
        return await conn.run_sync(snapshot_connection)


async def check(
    engine: AsyncEngine,
    *,
    grace_seconds: float = 60.0,
    baseline: Baseline | None = None,
    order_ids: Sequence[str] | None = None,
) -> CheckReport:
    """Every rule over the database behind ``engine`` (see the module's docstring)."""
    async with engine.connect() as conn:
        return await conn.run_sync(
            lambda sync: check_connection(
                sync, grace_seconds=grace_seconds, baseline=baseline, order_ids=order_ids
            )
        )


def snapshot_connection(conn: sa.Connection) -> Baseline:
    with _snapshot_transaction(conn):
        return _totals(conn)


def _totals(conn: sa.Connection) -> Baseline:
    return Baseline(
        stock={int(r.book_id): int(r.total) for r in conn.execute(sa.text(STOCK_TOTALS))},
        money={int(r.customer_id): money_of(r.total) for r in conn.execute(sa.text(MONEY_TOTALS))},
        taken_at=_now().isoformat(),
    )


def check_connection(
    conn: sa.Connection,
    *,
    grace_seconds: float = 60.0,
    baseline: Baseline | None = None,
    order_ids: Sequence[str] | None = None,
) -> CheckReport:
    """:func:`check` on a synchronous connection (tests use it with a sync engine)."""
    now = _now()
    cutoff = now - timedelta(seconds=grace_seconds)
    scope = Scope(conn, order_ids)
    found: list[Violation] = []
    ran = ["stuck", "completed", "failed", "twice", "compensation-order", "owners"]
    with _snapshot_transaction(conn):
        sagas = scope.counts("saga_instances", "s")
        orders = scope.counts("orders", "o")
        found += stuck(scope, cutoff)
        found += outcomes(scope, cutoff)
        found += history(scope)
        if order_ids is None or baseline is not None:
            ran += ["stock", "money", "ledger"]
            found += stock(conn)
            found += money(conn)
            scoped = order_ids is not None and baseline is not None
            found += ledger(
                conn,
                books=set(baseline.stock) if scoped and baseline else None,
                customers=set(baseline.money) if scoped and baseline else None,
            )
        if baseline is not None:
            now_totals = _totals(conn)
            found += changed(
                "stock", "book", "available+reserved+shipped", baseline.stock, now_totals.stock
            )
            found += changed(
                "money", "customer", "balance+captured", baseline.money, now_totals.money
            )
    return CheckReport(found, sagas, orders, now.isoformat(), ran)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@contextmanager
def _snapshot_transaction(conn: sa.Connection) -> Iterator[None]:
    """One consistent read of the whole database: REPEATABLE READ where the server has it
    (InnoDB takes the snapshot at the first read), and nothing written."""
    if conn.in_transaction():
        conn.rollback()
    if conn.dialect.name in ("mysql", "mariadb"):
        conn.execution_options(isolation_level="REPEATABLE READ")
    transaction = conn.begin()
    try:
        yield
    finally:
        transaction.rollback()
