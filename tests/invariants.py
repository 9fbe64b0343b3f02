"""SPEC §6's guarantees, checked by SQL over a set of orders.

``check`` returns a list of violations (empty when every guarantee holds), each naming the
offending order, book or customer, so a failing test says exactly what broke.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal

import sqlalchemy as sa

TERMINAL = ("COMPLETED", "FAILED")


def _rows(conn: sa.Connection, sql: str, **params: object) -> list[sa.Row[object]]:
    statement = sa.text(sql)
    for name, value in params.items():
        if isinstance(value, list | tuple):
            statement = statement.bindparams(sa.bindparam(name, expanding=True))
    return list(conn.execute(statement, params))


def check(
    conn: sa.Connection,
    order_ids: Sequence[str],
    *,
    stock: Mapping[int, int],
    balances: Mapping[int, Decimal],
    pattern: str = "orchestration",
) -> list[str]:
    """Violations of SPEC §6 for ``order_ids``; ``stock``/``balances`` are the starting totals
    of the books and customers those orders touch (and that nothing else touches).

    ``pattern="choreography"``: there are no saga rows; an order's own status is terminal
    (``COMPLETED``, or ``CANCELLED`` standing for a ``FAILED`` saga)."""
    problems: list[str] = []
    sagas = _saga_statuses(conn, order_ids, pattern)
    for oid in order_ids:
        status = sagas.get(oid)
        if status not in TERMINAL:
            problems.append(f"saga {oid} is {status}, not terminal")
    orders = {
        r.order_id: r
        for r in _rows(
            conn,
            "SELECT order_id, status, total_amount FROM orders WHERE order_id IN :ids",
            ids=list(order_ids),
        )
    }
    payments = {
        r.order_id: r
        for r in _rows(
            conn,
            "SELECT order_id, status, amount FROM payments WHERE order_id IN :ids",
            ids=list(order_ids),
        )
    }
    shipments = {
        r.order_id: r.status
        for r in _rows(
            conn,
            "SELECT order_id, status FROM shipments WHERE order_id IN :ids",
            ids=list(order_ids),
        )
    }
    reservations: dict[str, set[str]] = {}
    for r in _rows(
        conn,
        "SELECT order_id, status FROM stock_reservations WHERE order_id IN :ids",
        ids=list(order_ids),
    ):
        reservations.setdefault(r.order_id, set()).add(r.status)
    for oid, status in sagas.items():
        order = orders.get(oid)
        payment = payments.get(oid)
        held = reservations.get(oid, set())
        if status == "COMPLETED":
            if order is None or order.status != "COMPLETED":
                problems.append(f"COMPLETED saga {oid}: order is {order and order.status}")
            if payment is None or payment.status != "COMPLETED":
                problems.append(f"COMPLETED saga {oid}: payment is {payment and payment.status}")
            elif order is not None and Decimal(payment.amount) != Decimal(order.total_amount):
                problems.append(
                    f"COMPLETED saga {oid}: paid {payment.amount} of {order.total_amount}"
                )
            if shipments.get(oid) != "ARRANGED":
                problems.append(f"COMPLETED saga {oid}: shipment is {shipments.get(oid)}")
            if held != {"CONSUMED"}:
                problems.append(f"COMPLETED saga {oid}: reservations {sorted(held)}")
        elif status == "FAILED":
            if order is not None and order.status != "CANCELLED":
                problems.append(f"FAILED saga {oid}: order is {order.status}")
            if payment is not None and payment.status == "COMPLETED":
                problems.append(f"FAILED saga {oid}: payment still captured")
            if shipments.get(oid) == "ARRANGED":
                problems.append(f"FAILED saga {oid}: live shipment")
            if held & {"RESERVED", "CONSUMED"}:
                problems.append(f"FAILED saga {oid}: stock still held {sorted(held)}")
    for r in _rows(
        conn,
        "SELECT i.book_id, i.available, i.reserved, "
        "COALESCE((SELECT SUM(s.quantity) FROM stock_reservations s "
        "WHERE s.book_id = i.book_id AND s.status = 'CONSUMED'), 0) AS shipped "
        "FROM inventory i WHERE i.book_id IN :ids",
        ids=list(stock),
    ):
        total = int(r.available) + int(r.reserved) + int(r.shipped)
        if total != stock[r.book_id]:
            problems.append(
                f"book {r.book_id}: available+reserved+shipped = {total}, not {stock[r.book_id]}"
            )
        if r.available < 0 or r.reserved < 0:
            problems.append(f"book {r.book_id}: negative stock {r.available}/{r.reserved}")
    for r in _rows(
        conn,
        "SELECT c.customer_id, c.balance, "
        "COALESCE((SELECT SUM(p.amount) FROM payments p "
        "WHERE p.customer_id = c.customer_id AND p.status = 'COMPLETED'), 0) AS captured "
        "FROM customers c WHERE c.customer_id IN :ids",
        ids=list(balances),
    ):
        if Decimal(r.balance) < 0:
            problems.append(f"customer {r.customer_id}: negative balance {r.balance}")
        if Decimal(r.balance) + Decimal(r.captured) != balances[r.customer_id]:
            problems.append(
                f"customer {r.customer_id}: balance+captured = {Decimal(r.balance) + Decimal(r.captured)}, "
                f"not {balances[r.customer_id]}"
            )
    problems.extend(_compensation_order(conn, list(sagas)))
    return problems


def _saga_statuses(conn: sa.Connection, order_ids: Sequence[str], pattern: str) -> dict[str, str]:
    if pattern == "choreography":
        as_saga = {"COMPLETED": "COMPLETED", "CANCELLED": "FAILED"}
        return {
            r.order_id: as_saga.get(r.status, r.status)
            for r in _rows(
                conn,
                "SELECT order_id, status FROM orders WHERE order_id IN :ids",
                ids=list(order_ids),
            )
        }
    return {
        r.order_id: r.status
        for r in _rows(
            conn,
            "SELECT order_id, status FROM saga_instances WHERE order_id IN :ids",
            ids=list(order_ids),
        )
    }


def _compensation_order(conn: sa.Connection, order_ids: list[str]) -> list[str]:
    """Every saga compensated its steps in reverse order of their positions, each once."""
    problems: list[str] = []
    rows = _rows(
        conn,
        "SELECT i.order_id, l.event_type, l.position, l.step_name FROM saga_step_logs l "
        "JOIN saga_instances i ON i.saga_id = l.saga_id WHERE i.order_id IN :ids ORDER BY l.saga_id, l.seq",
        ids=order_ids,
    )
    by_order: dict[str, list[sa.Row[object]]] = {}
    for r in rows:
        by_order.setdefault(r.order_id, []).append(r)
    for oid, events in by_order.items():
        done = [e.position for e in events if e.event_type == "CompensationCompleted"]
        if done != sorted(done, reverse=True) or len(done) != len(set(done)):
            problems.append(
                f"saga {oid}: compensations at positions {done} not once each in reverse"
            )
        completed = [e.step_name for e in events if e.event_type == "StepCompleted"]
        if len(completed) != len(set(completed)):
            problems.append(f"saga {oid}: a step completed twice: {completed}")
    return problems
