"""The ledger: every movement of money and stock has an entry, so ``cloudmart check`` without a
baseline names a customer or book whose row changed outside any operation, on SQLite and on
MariaDB; rows inserted by SQL and then moved only by operations stay green.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from conftest import mysql_database_url
from domain_data import JP, clean, order
from round_trips import count_round_trips
from typer.testing import CliRunner

from activities import (
    Database,
    arrange_shipping,
    cancel_order,
    cancel_shipping,
    complete_order,
    create_order,
    process_payment,
    refund_payment,
    release_stock,
    reserve_stock,
    restock,
    top_up,
)
from cloudmart.check import CheckReport, check_connection
from cloudmart.cli import app
from cloudmart.schema import create_schema
from contracts.commands import (
    ArrangeShipping,
    OrderRef,
    ProcessPayment,
    ReserveStock,
    Restock,
    TopUp,
)


def run(sync: sa.Engine) -> CheckReport:
    with sync.connect() as conn:
        return check_connection(conn, grace_seconds=0.0)


def ledger(report: CheckReport) -> list[str]:
    return sorted(str(v) for v in report.violations if v.rule == "ledger")


def sql(sync: sa.Engine, statement: str, **params: Any) -> None:
    with sync.begin() as conn:
        conn.execute(sa.text(statement), params)


async def shipped(db: Database, oid: str, *items: tuple[int, int]) -> None:
    """An order through every forward step, completed."""
    placed = await create_order(db, order(oid, *items))
    await reserve_stock(db, ReserveStock(order_id=oid, items=placed.items))
    await process_payment(
        db, ProcessPayment(order_id=oid, customer_id=1, amount=placed.total_amount)
    )
    await arrange_shipping(db, ArrangeShipping(order_id=oid, address=JP))
    await complete_order(db, OrderRef(order_id=oid))


async def compensated(db: Database, oid: str, *items: tuple[int, int]) -> None:
    """An order that shipped, then was undone step by step in reverse order."""
    placed = await create_order(db, order(oid, *items))
    await reserve_stock(db, ReserveStock(order_id=oid, items=placed.items))
    await process_payment(
        db, ProcessPayment(order_id=oid, customer_id=1, amount=placed.total_amount)
    )
    await arrange_shipping(db, ArrangeShipping(order_id=oid, address=JP))
    ref = OrderRef(order_id=oid)
    for undo in (cancel_shipping, refund_payment, release_stock, cancel_order):
        await undo(db, ref)


async def test_rows_inserted_by_sql_then_moved_only_by_operations_stay_green(
    db: Database, sync: sa.Engine
) -> None:
    sql(sync, "INSERT INTO customers VALUES (7, 'Direct', 'd@example.jp', 123.45)")
    sql(sync, "INSERT INTO books VALUES (8, 'Direct', 3.00)")
    sql(sync, "INSERT INTO inventory VALUES (8, 4, 0)")
    assert run(sync).ok, run(sync).render()
    await shipped(db, "ok-1", (1, 2), (3, 1))
    await compensated(db, "undone-1", (2, 1), (8, 2))
    await restock(db, Restock(request_id="r-1", book_id=8, quantity=6))
    await top_up(db, TopUp(request_id="t-1", customer_id=7, amount=Decimal("0.55")))
    report = run(sync)
    assert report.ok, report.render()


async def test_a_balance_changed_by_sql_after_its_insert_is_named(
    db: Database, sync: sa.Engine
) -> None:
    await shipped(db, "ok-1", (1, 2))
    sql(sync, "UPDATE customers SET balance = balance + 7 WHERE customer_id = 2")
    assert ledger(run(sync)) == [
        "[ledger] customer 2: balance is 507.00 but the ledger says 500.00"
    ]


async def test_an_available_count_changed_by_sql_is_named(db: Database, sync: sa.Engine) -> None:
    await shipped(db, "ok-1", (1, 2))
    sql(sync, "UPDATE inventory SET available = available + 3 WHERE book_id = 1")
    assert ledger(run(sync)) == ["[ledger] book 1: available is 11 but the ledger says 8"]


async def test_a_reserved_count_changed_by_sql_is_named(db: Database, sync: sa.Engine) -> None:
    placed = await create_order(db, order("p-1", (3, 4)))
    await reserve_stock(db, ReserveStock(order_id="p-1", items=placed.items))
    sql(sync, "UPDATE inventory SET reserved = reserved - 1 WHERE book_id = 3")
    assert ledger(run(sync)) == ["[ledger] book 3: reserved is 3 but the ledger says 4"]


async def test_units_shipped_changed_by_sql_are_named(db: Database, sync: sa.Engine) -> None:
    await shipped(db, "ok-1", (1, 2))
    sql(sync, "UPDATE stock_reservations SET quantity = 5 WHERE order_id = 'ok-1'")
    assert ledger(run(sync)) == ["[ledger] book 1: shipped is 5 but the ledger says 2"]


async def test_a_row_whose_opening_entry_is_gone_is_named(db: Database, sync: sa.Engine) -> None:
    sql(sync, "DELETE FROM ledger_entries WHERE account = 'customer' AND account_id = 1")
    assert ledger(run(sync)) == [
        "[ledger] customer 1: balance is 10000.00 but the ledger has no entries"
    ]


async def test_a_row_deleted_by_sql_is_named(db: Database, sync: sa.Engine) -> None:
    sql(sync, "INSERT INTO customers VALUES (7, 'Direct', 'd@example.jp', 12.00)")
    sql(sync, "INSERT INTO customers VALUES (8, 'Empty', 'e@example.jp', 0)")
    sql(sync, "INSERT INTO books VALUES (9, 'Direct', 3.00)")
    sql(sync, "INSERT INTO inventory VALUES (9, 4, 0)")
    sql(sync, "DELETE FROM customers WHERE customer_id IN (7, 8)")
    sql(sync, "DELETE FROM inventory WHERE book_id = 9")
    assert ledger(run(sync)) == [  # an empty account deleted takes nothing away
        "[ledger] book 9: no stock row but the ledger says available 4, reserved 0, shipped 0",
        "[ledger] customer 7: no row but the ledger says balance 12.00",
    ]


async def test_a_database_from_before_the_ledger_is_adopted_by_init(
    db: Database, sync: sa.Engine
) -> None:
    await shipped(db, "ok-1", (1, 2))
    placed = await create_order(db, order("p-1", (3, 4)))
    await reserve_stock(db, ReserveStock(order_id="p-1", items=placed.items))
    sql(sync, "DELETE FROM ledger_entries")  # as a database created before the ledger
    assert "[ledger] book 1: available 8, reserved 0, shipped 2 but the ledger has no entries" in (
        ledger(run(sync))
    )
    assert len(ledger(run(sync))) == 5  # two customers, three books
    await create_schema(db.engine)  # cloudmart db init, again
    await create_schema(db.engine)  # adopting twice opens nothing twice
    assert ledger(run(sync)) == []
    sql(sync, "UPDATE inventory SET available = available + 1 WHERE book_id = 1")
    assert ledger(run(sync)) == ["[ledger] book 1: available is 9 but the ledger says 8"]


async def test_restock_and_top_up_move_the_rows_and_their_entries_once(
    db: Database, sync: sa.Engine
) -> None:
    first = await restock(db, Restock(request_id="r-1", book_id=2, quantity=3))
    again = await restock(db, Restock(request_id="r-1", book_id=2, quantity=3))
    paid = await top_up(db, TopUp(request_id="t-1", customer_id=2, amount=Decimal("12.50")))
    await top_up(db, TopUp(request_id="t-1", customer_id=2, amount=Decimal("12.50")))
    assert first == again and first.available == 8
    assert paid.balance == Decimal("512.50")
    with sync.connect() as conn:
        entries = conn.execute(
            sa.text(
                "SELECT account, account_id, bucket, delta, order_id FROM ledger_entries "
                "WHERE operation IN ('restock', 'top_up') ORDER BY id"
            )
        ).all()
    assert [(a, i, b, Decimal(str(d)), o) for a, i, b, d, o in entries] == [
        ("book", 2, "available", Decimal(3), "r-1"),
        ("customer", 2, "balance", Decimal("12.50"), "t-1"),
    ]
    assert run(sync).ok


async def test_cli_check_without_a_baseline_exits_1_naming_the_customer(
    db: Database, sync: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "CLOUDMART_DATABASE_URL", db.engine.url.render_as_string(hide_password=False)
    )
    monkeypatch.setenv("CLOUDMART_ENV", "test")
    runner = CliRunner()
    clean_run = await asyncio.to_thread(runner.invoke, app, ["check", "--grace", "0"])
    assert clean_run.exit_code == 0, clean_run.output
    sql(sync, "UPDATE customers SET balance = balance + 7 WHERE customer_id = 2")
    broken = await asyncio.to_thread(runner.invoke, app, ["check", "--grace", "0", "--json"])
    assert broken.exit_code == 1
    assert json.loads(broken.output)["violations"] == [
        {
            "rule": "ledger",
            "subject": "customer 2",
            "detail": "balance is 507.00 but the ledger says 500.00",
        }
    ]


def test_cli_restock_and_top_up_post_to_the_services_with_a_key() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    transport = httpx.MockTransport(answer)
    runner = CliRunner()
    stocked = runner.invoke(
        app,
        ["stock", "restock", "3", "20", "--idempotency-key", "k-1"],
        obj={"transport": transport},
        env={"CLOUDMART_ENV": "test", "CLOUDMART_API_KEY": "secret"},
    )
    topped = runner.invoke(
        app,
        ["money", "top-up", "2", "12.50", "--url", "http://pay.example:9"],
        obj={"transport": transport},
        env={"CLOUDMART_ENV": "test", "CLOUDMART_API_KEY": "secret"},
    )
    assert stocked.exit_code == 0, stocked.output
    assert topped.exit_code == 0, topped.output
    restock_sent, top_up_sent = seen
    assert str(restock_sent.url) == "http://127.0.0.1:8002/inventory/3/restock"
    assert json.loads(restock_sent.content) == {"quantity": 20}
    assert restock_sent.headers["Idempotency-Key"] == "k-1"
    assert restock_sent.headers["Authorization"] == "Bearer secret"
    assert str(top_up_sent.url) == "http://pay.example:9/payments/top-up"
    assert json.loads(top_up_sent.content) == {"customer_id": 2, "amount": "12.50"}
    assert top_up_sent.headers["Idempotency-Key"]  # a fresh one, printed for a retry


def test_cli_top_up_refused_by_the_service_exits_1_with_its_answer() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": "CustomerNotFound"})

    result = CliRunner().invoke(
        app,
        ["money", "top-up", "999", "1.00"],
        obj={"transport": httpx.MockTransport(refuse)},
        env={"CLOUDMART_ENV": "test"},
    )
    assert result.exit_code == 1
    assert "CustomerNotFound" in result.output


# Round trips per operation on MariaDB, measured on main before the ledger: the same for every
# operation but release_stock, which sent two per book (8 for two books) and now sends its
# moves, reservations and entries in one packet.
ROUND_TRIPS = {
    "reserve_stock": 2,
    "process_payment": 2,
    "arrange_shipping": 2,
    "complete_order": 2,
    "restock": 2,
    "top_up": 2,
    "cancel_shipping": 6,
    "refund_payment": 6,
    "release_stock": 5,
    "cancel_order": 4,
}


@pytest.mark.mysql
async def test_recording_the_movements_costs_no_round_trip() -> None:
    db = Database.from_url(mysql_database_url("cloudmart_test_ledger_trips"), pool_size=1)
    try:
        await create_schema(db.engine)
        await clean(db)
        sent = count_round_trips(db.engine)
        trips: dict[str, int] = {}

        async def measure(name: str, operation: Any) -> None:
            before = len(sent)
            await operation
            trips[name] = len(sent) - before

        for oid in ("ok-1", "undone-1"):
            placed = await create_order(db, order(oid, (1, 2), (3, 1)))
            ref = OrderRef(order_id=oid)
            take = ReserveStock(order_id=oid, items=placed.items)
            await measure("reserve_stock", reserve_stock(db, take))
            pay = ProcessPayment(order_id=oid, customer_id=1, amount=placed.total_amount)
            await measure("process_payment", process_payment(db, pay))
            ship = ArrangeShipping(order_id=oid, address=JP)
            await measure("arrange_shipping", arrange_shipping(db, ship))
            if oid == "ok-1":
                await measure("complete_order", complete_order(db, ref))
                continue
            for name, undo in (
                ("cancel_shipping", cancel_shipping),
                ("refund_payment", refund_payment),
                ("release_stock", release_stock),
                ("cancel_order", cancel_order),
            ):
                await measure(name, undo(db, ref))
        await measure("restock", restock(db, Restock(request_id="r-1", book_id=2, quantity=3)))
        await measure(
            "top_up", top_up(db, TopUp(request_id="t-1", customer_id=2, amount=Decimal(1)))
        )
        assert trips == ROUND_TRIPS
    finally:
        await db.dispose()
