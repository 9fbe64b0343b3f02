"""Concurrency on real MariaDB: no oversell, no negative balance, no deadlock escapes."""

from __future__ import annotations

import asyncio
from datetime import datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa
from domain_data import balance, stock

from activities import Database, process_payment, reserve_stock
from activities.commands import OrderItem, ProcessPayment, ReserveStock
from activities.errors import PaymentFailed, StockUnavailable
from activities.tables import customers, inventory, orders

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
