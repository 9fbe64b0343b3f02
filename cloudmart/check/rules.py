"""The rules of ``cloudmart check`` (listed in :mod:`cloudmart.check`): each one SQL query over
the snapshot that returns the offending ids, and what it says of them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from cloudmart.check.report import Violation

__all__ = [
    "MONEY_TOTALS",
    "STOCK_TOTALS",
    "Scope",
    "changed",
    "history",
    "ledger",
    "money",
    "money_of",
    "outcomes",
    "stock",
    "stuck",
]

TERMINAL = ("COMPLETED", "FAILED")
CENT = Decimal("0.01")


class Scope:
    """Runs a rule's query, limited to ``order_ids`` when given."""

    def __init__(self, conn: sa.Connection, order_ids: Sequence[str] | None) -> None:
        self.conn = conn
        self.order_ids = list(order_ids) if order_ids is not None else None

    def rows(self, sql: str, alias: str, suffix: str = "", **params: object) -> list[sa.Row[Any]]:
        """``sql`` (a SELECT, with or without WHERE) limited to the scope, then ``suffix``
        (GROUP BY / HAVING)."""
        statement = sql
        if self.order_ids is not None:
            if not self.order_ids:
                return []
            joiner = " AND " if " WHERE " in sql else " WHERE "
            statement = f"{sql}{joiner}{alias}.order_id IN :scope_ids"
            params["scope_ids"] = self.order_ids
        text = sa.text(f"{statement} {suffix}")
        if self.order_ids is not None:
            text = text.bindparams(sa.bindparam("scope_ids", expanding=True))
        if "cutoff" in params:  # typed, so SQLite compares it in its own datetime format
            text = text.bindparams(sa.bindparam("cutoff", type_=sa.DateTime()))
        return list(self.conn.execute(text, params))

    def counts(self, table: str, alias: str) -> dict[str, int]:
        rows = self.rows(
            f"SELECT {alias}.status, COUNT(*) AS n FROM {table} {alias}",
            alias,
            f"GROUP BY {alias}.status",
        )
        return {str(r.status): int(r.n) for r in rows}


# The outcome of every order: its saga's status in the orchestration; in the choreography (no
# saga row) COMPLETED, or FAILED for a CANCELLED order. ``ended_at`` is when it got there.
OUTCOMES = """
SELECT o.order_id, o.status AS order_status, o.total_amount,
       CASE WHEN s.status IS NOT NULL THEN s.status
            WHEN o.status = 'COMPLETED' THEN 'COMPLETED'
            WHEN o.status = 'CANCELLED' THEN 'FAILED'
            ELSE o.status END AS outcome,
       COALESCE(s.updated_at, o.updated_at) AS ended_at,
       p.status AS payment_status, p.amount AS paid,
       sh.status AS shipment_status
FROM orders o
LEFT JOIN saga_instances s ON s.order_id = o.order_id
LEFT JOIN payments p ON p.order_id = o.order_id
LEFT JOIN shipments sh ON sh.order_id = o.order_id
"""

HELD = """
SELECT r.order_id, r.book_id, r.quantity, r.status FROM stock_reservations r
"""

ITEMS = """
SELECT i.order_id, i.book_id, i.quantity FROM order_items i
"""

STOCK_TOTALS = """
SELECT i.book_id, i.available + i.reserved + COALESCE(
    (SELECT SUM(r.quantity) FROM stock_reservations r
     WHERE r.book_id = i.book_id AND r.status = 'CONSUMED'), 0) AS total
FROM inventory i
"""

MONEY_TOTALS = """
SELECT c.customer_id, c.balance + COALESCE(
    (SELECT SUM(p.amount) FROM payments p
     WHERE p.customer_id = c.customer_id AND p.status = 'COMPLETED'), 0) AS total
FROM customers c
"""


def money_of(value: object) -> Decimal:
    # SQLite hands computed money back as a float
    return Decimal(str(value)).quantize(CENT)


def _moment(value: datetime | str) -> datetime:
    # SQLite hands a computed (COALESCE) timestamp back as text
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def _when(value: datetime | str) -> str:
    return _moment(value).isoformat(timespec="seconds")


def stuck(scope: Scope, cutoff: datetime) -> list[Violation]:
    found = [
        Violation(
            "stuck",
            f"saga {r.order_id}",
            f"{r.status} since {_when(r.created_at)}"
            + (" (needs an operator)" if r.needs_operator else ""),
        )
        for r in scope.rows(
            "SELECT s.order_id, s.status, s.created_at, s.needs_operator FROM saga_instances s "
            "WHERE s.status NOT IN ('COMPLETED', 'FAILED') AND s.created_at < :cutoff",
            "s",
            cutoff=cutoff,
        )
    ]
    found += [
        Violation("stuck", f"order {r.order_id}", f"PENDING since {_when(r.created_at)}")
        for r in scope.rows(
            "SELECT o.order_id, o.created_at FROM orders o "
            "LEFT JOIN saga_instances s ON s.order_id = o.order_id "
            "WHERE s.order_id IS NULL AND o.status = 'PENDING' AND o.created_at < :cutoff",
            "o",
            cutoff=cutoff,
        )
    ]
    if scope.order_ids is not None:
        known = {r.order_id for r in scope.rows("SELECT o.order_id FROM orders o", "o")}
        known |= {r.order_id for r in scope.rows("SELECT s.order_id FROM saga_instances s", "s")}
        found += [
            Violation("stuck", f"order {oid}", "no saga and no order")
            for oid in scope.order_ids
            if oid not in known
        ]
    return found


def outcomes(scope: Scope, cutoff: datetime) -> list[Violation]:
    ended = {
        r.order_id: r
        for r in scope.rows(OUTCOMES, "o")
        if r.outcome in TERMINAL and r.ended_at is not None and _moment(r.ended_at) <= cutoff
    }
    if not ended:
        return []
    held: dict[str, list[sa.Row[Any]]] = {}
    for r in scope.rows(HELD, "r"):
        if r.order_id in ended:
            held.setdefault(r.order_id, []).append(r)
    items: dict[str, dict[int, int]] = {}
    for r in scope.rows(ITEMS, "i"):
        if r.order_id in ended:
            items.setdefault(r.order_id, {})[int(r.book_id)] = int(r.quantity)
    found: list[Violation] = []
    for oid, r in ended.items():
        reservations = held.get(oid, [])
        if r.outcome == "COMPLETED":
            found += _completed(oid, r, reservations, items.get(oid, {}))
        else:
            found += _failed(oid, r, reservations)
    return found


def _completed(
    oid: str, r: sa.Row[Any], reservations: list[sa.Row[Any]], items: dict[int, int]
) -> Iterable[Violation]:
    subject = f"COMPLETED {oid}"
    if r.order_status != "COMPLETED":
        yield Violation("completed", subject, f"order is {r.order_status}")
    if r.payment_status != "COMPLETED":
        yield Violation("completed", subject, f"payment is {r.payment_status}")
    elif money_of(r.paid) != money_of(r.total_amount):
        yield Violation(
            "completed", subject, f"paid {money_of(r.paid)} of {money_of(r.total_amount)}"
        )
    if r.shipment_status != "ARRANGED":
        yield Violation("completed", subject, f"shipment is {r.shipment_status}")
    consumed = {int(h.book_id): int(h.quantity) for h in reservations if h.status == "CONSUMED"}
    if consumed != items or len(consumed) != len(reservations):
        states = sorted(f"{h.book_id}x{h.quantity} {h.status}" for h in reservations)
        yield Violation("completed", subject, f"items {items} but reservations {states}")


def _failed(oid: str, r: sa.Row[Any], reservations: list[sa.Row[Any]]) -> Iterable[Violation]:
    subject = f"FAILED {oid}"
    if r.order_status not in ("CANCELLED", None):
        yield Violation("failed", subject, f"order is {r.order_status}")
    if r.payment_status == "COMPLETED":
        yield Violation("failed", subject, f"payment of {money_of(r.paid)} still captured")
    if r.shipment_status == "ARRANGED":
        yield Violation("failed", subject, "shipment still arranged")
    live = sorted(f"{h.book_id}x{h.quantity} {h.status}" for h in reservations)
    if any(h.status in ("RESERVED", "CONSUMED") for h in reservations):
        yield Violation("failed", subject, f"stock still held: {live}")


def history(scope: Scope) -> list[Violation]:
    found = [
        Violation("twice", f"saga {r.order_id}", f"{r.event_type} {r.n}x at step {r.position}")
        for r in scope.rows(
            "SELECT s.order_id, l.event_type, l.position, COUNT(*) AS n FROM saga_step_logs l "
            "JOIN saga_instances s ON s.saga_id = l.saga_id "
            "WHERE l.event_type IN ('StepCompleted', 'CompensationCompleted')",
            "s",
            "GROUP BY s.order_id, l.event_type, l.position HAVING COUNT(*) > 1",
        )
    ]
    found += [
        Violation(
            "compensation-order",
            f"saga {r.order_id}",
            f"step {r.first} compensated before step {r.second}",
        )
        for r in scope.rows(
            "SELECT s.order_id, a.position AS first, b.position AS second "
            "FROM saga_step_logs a JOIN saga_step_logs b "
            "ON b.saga_id = a.saga_id AND b.seq > a.seq "
            "JOIN saga_instances s ON s.saga_id = a.saga_id "
            "WHERE a.event_type = 'CompensationCompleted' "
            "AND b.event_type = 'CompensationCompleted' AND a.position < b.position",
            "s",
        )
    ]
    found += [
        Violation("owners", f"saga {r.order_id}", f"{r.n} owners under lease version {r.version}")
        for r in scope.rows(
            "SELECT s.order_id, l.version, COUNT(DISTINCT l.owner) AS n FROM saga_step_logs l "
            "JOIN saga_instances s ON s.saga_id = l.saga_id",
            "s",
            "GROUP BY s.order_id, l.version HAVING COUNT(DISTINCT l.owner) > 1",
        )
    ]
    return found


def stock(conn: sa.Connection) -> list[Violation]:
    found = [
        Violation(
            "stock",
            f"book {r.book_id}",
            f"reserved {r.reserved} but live reservations hold {r.held}",
        )
        for r in conn.execute(
            sa.text(
                "SELECT i.book_id, i.reserved, COALESCE((SELECT SUM(r.quantity) "
                "FROM stock_reservations r WHERE r.book_id = i.book_id "
                "AND r.status = 'RESERVED'), 0) AS held FROM inventory i"
            )
        )
        if int(r.reserved) != int(r.held)
    ]
    return found + [
        Violation("stock", f"book {r.book_id}", f"negative: available {r.available}")
        for r in conn.execute(
            sa.text("SELECT book_id, available FROM inventory WHERE available < 0")
        )
    ]


def money(conn: sa.Connection) -> list[Violation]:
    return [
        Violation("money", f"customer {r.customer_id}", f"negative balance {r.balance}")
        for r in conn.execute(
            sa.text("SELECT customer_id, balance FROM customers WHERE balance < 0")
        )
    ]


# What each customer's balance and each book's buckets hold against the sum of their ledger
# entries; only the rows that differ come back. Money is compared to the half cent, since
# SQLite sums DECIMAL as floating point; stock is whole units on both.
LEDGER_MONEY = """
SELECT c.customer_id, c.balance, l.total
FROM customers c
LEFT JOIN (SELECT account_id, SUM(delta) AS total FROM ledger_entries
           WHERE account = 'customer' AND bucket = 'balance' GROUP BY account_id) l
       ON l.account_id = c.customer_id
WHERE l.total IS NULL OR ABS(c.balance - l.total) >= 0.005
UNION ALL
SELECT l.account_id, NULL, SUM(l.delta)
FROM ledger_entries l
WHERE l.account = 'customer' AND l.bucket = 'balance'
  AND NOT EXISTS (SELECT 1 FROM customers c WHERE c.customer_id = l.account_id)
GROUP BY l.account_id HAVING ABS(SUM(l.delta)) >= 0.005
"""

LEDGER_STOCK = """
SELECT i.book_id, i.available, i.reserved, COALESCE(s.shipped, 0) AS shipped,
       l.available AS l_available, l.reserved AS l_reserved, l.shipped AS l_shipped
FROM inventory i
LEFT JOIN (SELECT account_id,
                  SUM(CASE WHEN bucket = 'available' THEN delta ELSE 0 END) AS available,
                  SUM(CASE WHEN bucket = 'reserved' THEN delta ELSE 0 END) AS reserved,
                  SUM(CASE WHEN bucket = 'shipped' THEN delta ELSE 0 END) AS shipped
           FROM ledger_entries WHERE account = 'book' GROUP BY account_id) l
       ON l.account_id = i.book_id
LEFT JOIN (SELECT book_id, SUM(quantity) AS shipped FROM stock_reservations
           WHERE status = 'CONSUMED' GROUP BY book_id) s
       ON s.book_id = i.book_id
WHERE l.account_id IS NULL OR i.available <> l.available OR i.reserved <> l.reserved
   OR COALESCE(s.shipped, 0) <> l.shipped
UNION ALL
SELECT l.account_id, NULL, NULL, NULL,
       SUM(CASE WHEN l.bucket = 'available' THEN l.delta ELSE 0 END),
       SUM(CASE WHEN l.bucket = 'reserved' THEN l.delta ELSE 0 END),
       SUM(CASE WHEN l.bucket = 'shipped' THEN l.delta ELSE 0 END)
FROM ledger_entries l
WHERE l.account = 'book'
  AND NOT EXISTS (SELECT 1 FROM inventory i WHERE i.book_id = l.account_id)
GROUP BY l.account_id
HAVING SUM(CASE WHEN l.bucket = 'shipped' THEN 0 ELSE ABS(l.delta) END) > 0
"""


def ledger(
    conn: sa.Connection, *, books: set[int] | None, customers: set[int] | None
) -> list[Violation]:
    """Rows that do not hold what their ledger entries add up to (``None``: every row)."""
    found: list[Violation] = []
    for r in conn.execute(sa.text(LEDGER_MONEY)):
        if customers is not None and int(r.customer_id) not in customers:
            continue
        if r.balance is None:  # the row is gone: deleted outside any operation
            found.append(
                Violation(
                    "ledger",
                    f"customer {r.customer_id}",
                    f"no row but the ledger says balance {money_of(r.total)}",
                )
            )
            continue
        said = "has no entries" if r.total is None else f"says {money_of(r.total)}"
        found.append(
            Violation(
                "ledger",
                f"customer {r.customer_id}",
                f"balance is {money_of(r.balance)} but the ledger {said}",
            )
        )
    for r in conn.execute(sa.text(LEDGER_STOCK)):
        if books is not None and int(r.book_id) not in books:
            continue
        if r.available is None:  # the row is gone: deleted outside any operation
            said = ", ".join(
                f"{b} {int(Decimal(str(getattr(r, f'l_{b}'))))}"
                for b in ("available", "reserved", "shipped")
            )
            found.append(
                Violation("ledger", f"book {r.book_id}", f"no stock row but the ledger says {said}")
            )
            continue
        held = {b: int(getattr(r, b)) for b in ("available", "reserved", "shipped")}
        if r.l_available is None:
            counts = ", ".join(f"{b} {n}" for b, n in held.items())
            found.append(
                Violation("ledger", f"book {r.book_id}", f"{counts} but the ledger has no entries")
            )
            continue
        for bucket, n in held.items():
            entries = int(Decimal(str(getattr(r, f"l_{bucket}"))))
            if n != entries:
                found.append(
                    Violation(
                        "ledger",
                        f"book {r.book_id}",
                        f"{bucket} is {n} but the ledger says {entries}",
                    )
                )
    return found


def changed(
    rule: str, noun: str, what: str, before: Mapping[int, Any], now: Mapping[int, Any]
) -> list[Violation]:
    """Conservation: every total of the baseline unchanged (rows added since are not judged)."""
    return [
        Violation(rule, f"{noun} {key}", f"{what} = {now[key]}, was {value}")
        for key, value in sorted(before.items())
        if key in now and now[key] != value
    ]
