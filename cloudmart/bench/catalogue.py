"""The bench's own catalogue (customers and books from 900001), added through the database so
that every saga that is meant to complete can."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from activities.db import create_engine
from activities.tables import books, customers, inventory, ledger_entries
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
    # Fill the rich customer's balance and the books' stock up, each move recorded in the
    # ledger in this transaction, so cloudmart check's ledger rule accepts them.
    rich, stocked = Decimal("9999999999.00"), 10_000_000
    held = await conn.scalar(
        sa.select(customers.c.balance)
        .where(customers.c.customer_id == BENCH_CUSTOMER)
        .with_for_update()
    )
    moves: list[tuple[str, int, str, Decimal | int]] = [
        ("customer", BENCH_CUSTOMER, "balance", rich - Decimal(str(held)))
    ]
    stock = await conn.execute(
        sa.select(inventory.c.book_id, inventory.c.available)
        .where(inventory.c.book_id.in_(BENCH_BOOKS))
        .with_for_update()
    )
    moves += [("book", int(b), "available", stocked - int(a)) for b, a in stock]
    await conn.execute(
        customers.update().where(customers.c.customer_id == BENCH_CUSTOMER).values(balance=rich)
    )
    await conn.execute(
        inventory.update().where(inventory.c.book_id.in_(BENCH_BOOKS)).values(available=stocked)
    )
    at = datetime.now(UTC).replace(tzinfo=None)
    entries = [
        {
            "account": account,
            "account_id": account_id,
            "bucket": bucket,
            "delta": delta,
            "order_id": None,
            "operation": "bench_seed",
            "created_at": at,
        }
        for account, account_id, bucket, delta in moves
        if delta
    ]
    if entries:
        await conn.execute(ledger_entries.insert(), entries)
