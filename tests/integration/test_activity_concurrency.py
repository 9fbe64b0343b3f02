"""Concurrency on real MariaDB: no oversell, no negative balance, no deadlock escapes."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa
from domain_data import balance, stock

from activities import Database, process_payment, reserve_stock
from activities.errors import PaymentFailed, StockUnavailable
from activities.tables import customers, inventory, orders
from contracts.commands import OrderItem, ProcessPayment, ReserveStock

pytestmark = pytest.mark.mysql


async def _orders(db: Database, count: int, customer_id: int = 1) -> list[str]:
    ids = [f"c{i:04d}" for i in range(count)]
    stamp = datetime(2026, 1, 1)

    async def work(conn: sa.ext.asyncio.AsyncConnection) -> None:
        await conn.execute(
            orders.insert(),
            [
                {
                    "order_id": oid,
                    "customer_id": customer_id,
                    "status": "PENDING",
                    "total_amount": Decimal("10.00"),
                    "shipping_address": "{}",
                    "created_at": stamp,
                    "updated_at": stamp,
                }
                for oid in ids
            ],
        )

    await db.transaction(work)
    return ids


async def _set(db: Database, statement: sa.Executable) -> None:
    async def work(conn: sa.ext.asyncio.AsyncConnection) -> None:
        await conn.execute(statement)

    await db.transaction(work)


async def test_200_reservations_of_one_copy_against_50_available_exactly_50_succeed(
    mysql_db: Database,
) -> None:
    await _set(
        mysql_db,
        inventory.update().where(inventory.c.book_id == 1).values(available=50, reserved=0),
    )
    ids = await _orders(mysql_db, 200)

    async def reserve(oid: str) -> bool:
        try:
            await reserve_stock(
                mysql_db, ReserveStock(order_id=oid, items=[OrderItem(book_id=1, quantity=1)])
            )
        except StockUnavailable:
            return False
        return True

    outcomes = await asyncio.gather(*(reserve(oid) for oid in ids))
    assert sum(outcomes) == 50
    assert await stock(mysql_db, 1) == (0, 50)


async def test_100_payments_of_10_against_500_exactly_50_succeed_balance_zero(
    mysql_db: Database,
) -> None:
    await _set(
        mysql_db,
        customers.update().where(customers.c.customer_id == 1).values(balance=Decimal("500.00")),
    )
    ids = await _orders(mysql_db, 100)

    async def pay(oid: str) -> bool:
        try:
            await process_payment(
                mysql_db, ProcessPayment(order_id=oid, customer_id=1, amount=Decimal("10.00"))
            )
        except PaymentFailed:
            return False
        return True

    outcomes = await asyncio.gather(*(pay(oid) for oid in ids))
    assert sum(outcomes) == 50
    assert await balance(mysql_db, 1) == Decimal("0.00")


async def test_opposite_item_orders_at_concurrency_50_never_leak_a_deadlock(
    mysql_db: Database,
) -> None:
    await _set(mysql_db, inventory.update().values(available=1000, reserved=0))
    ids = await _orders(mysql_db, 100)

    async def reserve(index: int, oid: str) -> None:
        items = [OrderItem(book_id=1, quantity=1), OrderItem(book_id=2, quantity=1)]
        if index % 2:
            items.reverse()
        await reserve_stock(mysql_db, ReserveStock(order_id=oid, items=items))

    for batch in (ids[:50], ids[50:]):
        await asyncio.gather(*(reserve(i, oid) for i, oid in enumerate(batch)))
    assert await stock(mysql_db, 1) == (900, 100)
    assert await stock(mysql_db, 2) == (900, 100)


async def test_a_real_deadlock_is_rolled_back_and_retried(mysql_db: Database) -> None:
    first_locked, second_locked = asyncio.Event(), asyncio.Event()
    attempts = {"a": 0, "b": 0}

    def work(name: str, mine: int, other: int, done: asyncio.Event, wait: asyncio.Event):  # type: ignore[no-untyped-def]
        async def run(conn: sa.ext.asyncio.AsyncConnection) -> None:
            attempts[name] += 1
            bump = inventory.update().values(available=inventory.c.available + 1)
            await conn.execute(bump.where(inventory.c.book_id == mine))
            done.set()
            await wait.wait()
            await conn.execute(bump.where(inventory.c.book_id == other))

        return run

    await asyncio.gather(
        mysql_db.transaction(work("a", 1, 2, first_locked, second_locked)),
        mysql_db.transaction(work("b", 2, 1, second_locked, first_locked)),
    )
    assert sorted(attempts.values()) == [1, 2]  # one victim, retried once
    assert await stock(mysql_db, 1) == (12, 0)
    assert await stock(mysql_db, 2) == (7, 0)


async def test_concurrent_duplicates_of_one_command_take_effect_once(mysql_db: Database) -> None:
    (oid,) = await _orders(mysql_db, 1)
    cmd = ReserveStock(order_id=oid, items=[OrderItem(book_id=1, quantity=3)])
    results = await asyncio.gather(*(reserve_stock(mysql_db, cmd) for _ in range(20)))
    assert all(r == results[0] for r in results)
    assert await stock(mysql_db, 1) == (7, 3)


async def test_compensation_racing_its_operation_leaves_stock_conserved(mysql_db: Database) -> None:
    from activities import release_stock
    from activities.errors import AlreadyCompensated
    from contracts.commands import OrderRef

    ids = await _orders(mysql_db, 40)

    async def reserve(oid: str) -> None:
        with contextlib.suppress(AlreadyCompensated):
            await reserve_stock(
                mysql_db, ReserveStock(order_id=oid, items=[OrderItem(book_id=3, quantity=1)])
            )

    await asyncio.gather(
        *(reserve(oid) for oid in ids),
        *(release_stock(mysql_db, OrderRef(order_id=oid)) for oid in ids),
    )
    # whichever came first, every order's stock is back in available and nothing is held
    assert await stock(mysql_db, 3) == (50, 0)


async def test_mariadb_sessions_end_idle_transactions(mysql_url: str) -> None:
    database = Database.from_url(mysql_url, pool_size=1, idle_transaction_timeout=7)
    try:
        async with database.engine.connect() as conn:
            value = await conn.scalar(sa.text("SELECT @@session.idle_transaction_timeout"))
        assert int(value) == 7
    finally:
        await database.dispose()


async def test_concurrent_duplicates_of_payment_and_shipping_take_effect_once(
    mysql_db: Database,
) -> None:
    from domain_data import JP

    from activities import arrange_shipping
    from contracts.commands import ArrangeShipping

    (oid,) = await _orders(mysql_db, 1)
    await reserve_stock(
        mysql_db, ReserveStock(order_id=oid, items=[OrderItem(book_id=1, quantity=2)])
    )
    pay = ProcessPayment(order_id=oid, customer_id=1, amount=Decimal("10.00"))
    ship = ArrangeShipping(order_id=oid, address=JP)
    payments = await asyncio.gather(*(process_payment(mysql_db, pay) for _ in range(20)))
    shipments = await asyncio.gather(*(arrange_shipping(mysql_db, ship) for _ in range(20)))
    assert all(p == payments[0] for p in payments)
    assert all(s == shipments[0] for s in shipments)
    assert await balance(mysql_db, 1) == Decimal("9990.00")
    assert await stock(mysql_db, 1) == (8, 0)
