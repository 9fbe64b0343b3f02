"""Scenario data for the end-to-end suites of both patterns: books and customers that only one
scenario touches, order bodies, and SPEC §6's checks over the orders a scenario placed."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from cloudmart.check import Baseline, check_connection

JP = {
    "name": "Hanako",
    "line1": "1-2-3 Shibuya",
    "city": "Tokyo",
    "postal_code": "150-0002",
    "country": "JP",
}
US = {**JP, "city": "Springfield", "country": "US"}
_ids = itertools.count(1)


def sync_engine(database_url: str) -> sa.Engine:
    """A plain (pymysql) engine on a deployment's database, for setting up and checking; it
    survives the server's restarts (each checkout pings)."""
    url = sa.engine.make_url(database_url).set(drivername="mysql+pymysql")
    return sa.create_engine(url, pool_pre_ping=True)


def order(customer: int, *items: tuple[int, int], address: dict[str, str] = JP) -> dict[str, Any]:
    return {
        "customer_id": customer,
        "items": [{"book_id": b, "quantity": q} for b, q in items],
        "shipping_address": address,
    }


class Shop:
    """Books and customers of one scenario, with ids no other scenario uses."""

    def __init__(self, sql: sa.Engine, *, pattern: str = "orchestration") -> None:
        self.sql = sql
        self.pattern = pattern
        self.stock: dict[int, int] = {}
        self.balances: dict[int, Decimal] = {}

    def book(self, price: str, stock: int) -> int:
        book_id = 10_000 + next(_ids)
        with self.sql.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO books VALUES (:b, :t, :p)"),
                {"b": book_id, "t": f"book {book_id}", "p": price},
            )
            conn.execute(
                sa.text("INSERT INTO inventory VALUES (:b, :n, 0)"), {"b": book_id, "n": stock}
            )
        self.stock[book_id] = stock
        return book_id

    def customer(self, balance: str) -> int:
        customer_id = 10_000 + next(_ids)
        with self.sql.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO customers VALUES (:c, :n, :e, :b)"),
                {"c": customer_id, "n": "Hanako", "e": f"c{customer_id}@example.jp", "b": balance},
            )
        self.balances[customer_id] = Decimal(balance)
        return customer_id

    def check(self, order_ids: list[str]) -> None:
        """SPEC §6 holds for these orders and this scenario's books and customers, and each of
        those books and customers holds what its ledger entries add up to (the ``ledger`` rule,
        which needs no baseline: the baseline only scopes it to this scenario's rows)."""
        baseline = Baseline(stock=dict(self.stock), money=dict(self.balances))
        with self.sql.connect() as conn:
            report = check_connection(
                conn, grace_seconds=0.0, baseline=baseline, order_ids=order_ids
            )
        assert report.ok, report.render()
        assert "ledger" in report.rules_run, report.rules_run

    def stock_of(self, book_id: int) -> tuple[int, int]:
        with self.sql.connect() as conn:
            row = conn.execute(
                sa.text("SELECT available, reserved FROM inventory WHERE book_id = :b"),
                {"b": book_id},
            ).one()
        return int(row.available), int(row.reserved)

    def balance_of(self, customer_id: int) -> Decimal:
        with self.sql.connect() as conn:
            return Decimal(
                conn.scalar(
                    sa.text("SELECT balance FROM customers WHERE customer_id = :c"),
                    {"c": customer_id},
                )
            )

    def statuses(self, order_ids: list[str]) -> dict[str, str]:
        statement = sa.text("SELECT order_id, status FROM orders WHERE order_id IN :ids")
        statement = statement.bindparams(sa.bindparam("ids", expanding=True))
        with self.sql.connect() as conn:
            return {r.order_id: r.status for r in conn.execute(statement, {"ids": order_ids})}

    def count(self, sql: str, **params: Any) -> int:
        with self.sql.connect() as conn:
            return int(conn.scalar(sa.text(sql), params) or 0)
