"""A small catalogue and shortcuts for the tests of the business operations."""

from __future__ import annotations

from decimal import Decimal

import sqlalchemy as sa

from activities import Database
from activities.tables import books, customers, inventory, metadata
from contracts.commands import Address, CreateOrder, OrderItem

JP = Address(
    name="Hanako", line1="1-2-3 Shibuya", city="Tokyo", postal_code="150-0002", country="JP"
)


async def clean(db: Database) -> None:
    """Empty every domain table, then add customers 1-2 and books 1-3 with stock."""

    async def work(conn: sa.ext.asyncio.AsyncConnection) -> None:
        for table in reversed(metadata.sorted_tables):
            await conn.execute(table.delete())
        await conn.execute(
            customers.insert(),
            [
                {
                    "customer_id": 1,
                    "name": "Hanako",
                    "email": "h@example.jp",
                    "balance": Decimal("10000.00"),
                },
                {
                    "customer_id": 2,
                    "name": "Taro",
                    "email": "t@example.jp",
                    "balance": Decimal("500.00"),
                },
            ],
        )
        await conn.execute(
            books.insert(),
            [
                {"book_id": 1, "title": "Release It!", "price": Decimal("1000.00")},
                {"book_id": 2, "title": "Database Internals", "price": Decimal("2500.50")},
                {"book_id": 3, "title": "Streaming Systems", "price": Decimal("10.00")},
            ],
        )
        await conn.execute(
            inventory.insert(),
            [
                {"book_id": 1, "available": 10, "reserved": 0},
                {"book_id": 2, "available": 5, "reserved": 0},
                {"book_id": 3, "available": 50, "reserved": 0},
            ],
        )

    await db.transaction(work)


def order(
    order_id: str, *items: tuple[int, int], customer_id: int = 1, address: Address = JP
) -> CreateOrder:
    return CreateOrder(
        order_id=order_id,
        customer_id=customer_id,
        items=[OrderItem(book_id=b, quantity=q) for b, q in items],
        shipping_address=address,
    )


async def scalar(db: Database, statement: sa.Executable) -> object:
    async with db.engine.connect() as conn:
        return await conn.scalar(statement)


async def stock(db: Database, book_id: int) -> tuple[int, int]:
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(inventory.c.available, inventory.c.reserved).where(
                    inventory.c.book_id == book_id
                )
            )
        ).one()
    return int(row.available), int(row.reserved)


async def balance(db: Database, customer_id: int) -> Decimal:
    value = await scalar(
        db, sa.select(customers.c.balance).where(customers.c.customer_id == customer_id)
    )
    return Decimal(str(value))


async def ledger_violations(db: Database) -> list[str]:
    """What ``cloudmart check``'s ledger rule (no baseline) finds in the whole database."""
    from cloudmart.check import check

    report = await check(db.engine)
    return [str(v) for v in report.violations if v.rule == "ledger"]
