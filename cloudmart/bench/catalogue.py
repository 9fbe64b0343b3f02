"""The bench's own catalogue (customers and books from 900001), added through the database so
that every saga that is meant to complete can."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from activities.db import create_engine
from activities.tables import books, customers, inventory
from cloudmart.bench.mix import BENCH_BOOKS, BENCH_CUSTOMER, BROKE_CUSTOMER, SOLD_OUT_BOOK


async def seed_catalogue(database_url: str) -> None:
    """The bench's own customers and books: one rich customer and ten well-stocked books that
    every saga can complete with, one customer with nothing and one book out of stock."""
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        async with engine.begin() as conn:
            await seed(conn)
    finally:
        await engine.dispose()


async def seed(conn: Any) -> None:
    people = {BENCH_CUSTOMER: "Bench", BROKE_CUSTOMER: "Bench (broke)"}
    have = set(
        await conn.scalars(
            sa.select(customers.c.customer_id).where(customers.c.customer_id.in_(people))
        )
    )
    missing = [c for c in people if c not in have]
    if missing:
        await conn.execute(
            customers.insert(),
            [
                {
                    "customer_id": c,
                    "name": people[c],
                    "email": f"bench-{c}@example.invalid",
                    "balance": Decimal(0),
                }
                for c in missing
            ],
        )
    titles = [*BENCH_BOOKS, SOLD_OUT_BOOK]
    have = set(await conn.scalars(sa.select(books.c.book_id).where(books.c.book_id.in_(titles))))
    missing = [b for b in titles if b not in have]
    if missing:
        await conn.execute(
            books.insert(),
            [{"book_id": b, "title": f"Bench {b}", "price": Decimal("1.00")} for b in missing],
        )
        await conn.execute(
            inventory.insert(), [{"book_id": b, "available": 0, "reserved": 0} for b in missing]
        )
    await conn.execute(
        customers.update()
        .where(customers.c.customer_id == BENCH_CUSTOMER)
        .values(balance=Decimal("9999999999.00"))
    )
    await conn.execute(
        inventory.update().where(inventory.c.book_id.in_(BENCH_BOOKS)).values(available=10_000_000)
    )
