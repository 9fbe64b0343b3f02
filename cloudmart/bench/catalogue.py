"""The bench's own catalogues (customers and books from 900001 for the live run, from 910001
for a preloaded history), added through the database so that every saga that is meant to
complete can."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from activities.db import create_engine
from activities.tables import books, customers, inventory, ledger_entries
from cloudmart.bench.mix import BENCH, Catalogue


async def seed_catalogue(database_url: str, catalogue: Catalogue = BENCH) -> None:
    """The bench's own customers and books: one rich customer and ten well-stocked books that
    every saga can complete with, one customer with nothing and one book out of stock."""
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        async with engine.begin() as conn:
            await seed(conn, catalogue)
    finally:
        await engine.dispose()


async def seed(conn: Any, catalogue: Catalogue = BENCH) -> None:
    """:func:`seed_catalogue` in the caller's transaction; the rich customer's balance and the
    books' stock are filled up again each time."""
    cat = catalogue
    people = {cat.customer: cat.label, cat.broke_customer: f"{cat.label} (broke)"}
    have = set(
        await conn.scalars(
            sa.select(customers.c.customer_id).where(customers.c.customer_id.in_(people))
        )
    )
    missing = [customer for customer in people if customer not in have]
    if missing:
        await conn.execute(
            customers.insert(),
            [
                {
                    "customer_id": customer,
                    "name": people[customer],
                    "email": f"bench-{customer}@example.invalid",
                    "balance": Decimal(0),
                }
                for customer in missing
            ],
        )
    titles = [*cat.books, cat.sold_out_book]
    have = set(await conn.scalars(sa.select(books.c.book_id).where(books.c.book_id.in_(titles))))
    missing = [b for b in titles if b not in have]
    if missing:
        await conn.execute(
            books.insert(),
            [
                {"book_id": b, "title": f"{cat.label} {b}", "price": Decimal("1.00")}
                for b in missing
            ],
        )
        await conn.execute(
            inventory.insert(), [{"book_id": b, "available": 0, "reserved": 0} for b in missing]
        )
    # Fill the rich customer's balance and the books' stock up, each move recorded in the
    # ledger in this transaction, so cloudmart check's ledger rule accepts them.
    rich, stocked = Decimal("9999999999.00"), 10_000_000
    held = await conn.scalar(
        sa.select(customers.c.balance)
        .where(customers.c.customer_id == cat.customer)
        .with_for_update()
    )
    moves: list[tuple[str, int, str, Decimal | int]] = [
        ("customer", cat.customer, "balance", rich - Decimal(str(held)))
    ]
    stock = await conn.execute(
        sa.select(inventory.c.book_id, inventory.c.available)
        .where(inventory.c.book_id.in_(cat.books))
        .with_for_update()
    )
    moves += [("book", int(b), "available", stocked - int(a)) for b, a in stock]
    await conn.execute(
        customers.update().where(customers.c.customer_id == cat.customer).values(balance=rich)
    )
    await conn.execute(
        inventory.update().where(inventory.c.book_id.in_(cat.books)).values(available=stocked)
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
