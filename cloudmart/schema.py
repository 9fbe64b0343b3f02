"""The database schema, from one source of truth: the SQLAlchemy metadata of the domain
(:mod:`activities.tables`) and of the engine's history (:mod:`engine.adapters.sql_tables`).

``init.sql`` is generated from it (``cloudmart db sql > init.sql``; a test keeps the committed
file equal to the generated one) and runs unchanged on MySQL 8.0 and MariaDB 10.11. SQLite,
for the embedded mode, gets the same tables through ``metadata.create_all``. Both get the
ledger's triggers (:func:`ledger_triggers`) after the tables.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.schema import CreateTable

from activities import tables as domain
from engine.adapters import sql_tables as history

INIT_SQL = Path(__file__).resolve().parent.parent / "init.sql"

_HEADER = """\
-- CloudMart sagas: every table, for MySQL 8.0 and MariaDB 10.11.
-- Generated from activities/tables.py and engine/adapters/sql_tables.py by
-- `cloudmart db sql`; edit those, not this file (tests/unit/test_schema.py checks they agree).
"""


def all_metadata() -> sa.MetaData:
    """The domain's and the engine's tables in one metadata, in dependency order."""
    combined = sa.MetaData()
    for source in (domain.metadata, history.metadata):
        for table in source.sorted_tables:
            table.to_metadata(combined)
    return combined


def _mysql_ddl(table: sa.Table) -> str:
    """CREATE TABLE IF NOT EXISTS with the table's indexes inline, in a stable order.

    Inline indexes keep the file re-runnable on MySQL 8.0, which has no CREATE INDEX IF NOT
    EXISTS. SQLAlchemy emits constraints in set order, so they are sorted after the columns
    (primary key first) to make the generated text the same on every run.
    """
    dialect = mysql.dialect()
    ddl = str(CreateTable(table, if_not_exists=True).compile(dialect=dialect)).strip()
    head, rest = ddl.split("(\n", 1)
    close = rest.rindex("\n)")
    body, tail = rest[:close], rest[close:]
    lines = [line.rstrip() for line in re.split(r",[ \t]*\n", body)]
    columns = [line for line in lines if not line.lstrip().startswith(_CONSTRAINT_WORDS)]
    constraints = sorted(
        (line for line in lines if line.lstrip().startswith(_CONSTRAINT_WORDS)),
        key=lambda line: (not line.lstrip().startswith("PRIMARY KEY"), line),
    )
    preparer = dialect.identifier_preparer
    indexes = [
        f"\t{'UNIQUE INDEX' if ix.unique else 'INDEX'} {ix.name} "
        f"({', '.join(preparer.quote(c.name) for c in ix.columns)})"
        for ix in sorted(table.indexes, key=lambda ix: str(ix.name))
    ]
    return head + "(\n" + ",\n".join(columns + constraints + indexes) + tail + ";\n"


_CONSTRAINT_WORDS = ("PRIMARY KEY", "UNIQUE", "FOREIGN KEY", "CONSTRAINT", "CHECK")


# A row inserted directly (SPEC §5 lets tests and operators do it) opens its ledger account
# with what it holds then. A trigger is the one place that sees every insert, whoever makes it,
# in the inserting transaction; the operations themselves never insert customers or inventory.
_OPENINGS = {
    "customers": ("('customer', NEW.customer_id, 'balance', NEW.balance, NULL, 'opening', {now})"),
    "inventory": (
        "('book', NEW.book_id, 'available', NEW.available, NULL, 'opening', {now}), "
        "('book', NEW.book_id, 'reserved', NEW.reserved, NULL, 'opening', {now})"
    ),
}
_LEDGER_INSERT = (
    "INSERT INTO ledger_entries "
    "(account, account_id, bucket, delta, order_id, operation, created_at) VALUES "
)


def ledger_triggers(dialect: str) -> list[str]:
    """The statements that create the ledger's opening triggers on ``dialect``.

    MySQL/MariaDB: ``DROP TRIGGER IF EXISTS`` then ``CREATE TRIGGER`` with a one-statement
    body (no delimiter games; MySQL 8.0 before 8.0.29 has no ``CREATE TRIGGER IF NOT
    EXISTS``), so init.sql stays re-runnable. SQLite: ``CREATE TRIGGER IF NOT EXISTS`` with its
    required ``BEGIN ... END``. Timestamps are UTC, as the application writes them.
    """
    statements = []
    for table, values in _OPENINGS.items():
        name = f"tr_{table}_ledger_opening"
        if dialect == "sqlite":
            body = _LEDGER_INSERT + values.format(now="datetime('now')")
            statements.append(
                f"CREATE TRIGGER IF NOT EXISTS {name} AFTER INSERT ON {table} "
                f"FOR EACH ROW BEGIN {body}; END"
            )
        else:
            body = _LEDGER_INSERT + values.format(now="UTC_TIMESTAMP(6)")
            statements.append(f"DROP TRIGGER IF EXISTS {name}")
            statements.append(f"CREATE TRIGGER {name} AFTER INSERT ON {table}\nFOR EACH ROW {body}")
    return statements


# A database created before the ledger has rows and no entries: each row with no entry at all
# opens its account with what it holds (and, for a book, the units its CONSUMED reservations
# shipped), so re-running init.sql (``cloudmart db init``) adopts it. Rows that have entries are
# left alone, so this never hides a change that no operation explains.
_ADOPTIONS = (
    "INSERT INTO ledger_entries "
    "(account, account_id, bucket, delta, order_id, operation, created_at) "
    "SELECT 'customer', c.customer_id, 'balance', c.balance, NULL, 'opening', {now} "
    "FROM customers c WHERE NOT EXISTS (SELECT 1 FROM ledger_entries l "
    "WHERE l.account = 'customer' AND l.account_id = c.customer_id)",
    "INSERT INTO ledger_entries "
    "(account, account_id, bucket, delta, order_id, operation, created_at) "
    "SELECT 'book', i.book_id, b.bucket, CASE b.bucket WHEN 'available' THEN i.available "
    "WHEN 'reserved' THEN i.reserved ELSE COALESCE((SELECT SUM(r.quantity) "
    "FROM stock_reservations r WHERE r.book_id = i.book_id AND r.status = 'CONSUMED'), 0) END, "
    "NULL, 'opening', {now} "
    "FROM inventory i CROSS JOIN (SELECT 'available' AS bucket UNION ALL SELECT 'reserved' "
    "UNION ALL SELECT 'shipped') b WHERE NOT EXISTS (SELECT 1 FROM ledger_entries l "
    "WHERE l.account = 'book' AND l.account_id = i.book_id)",
)


def ledger_adoptions(dialect: str) -> list[str]:
    """The statements that open the accounts of rows a database held before its ledger."""
    now = "datetime('now')" if dialect == "sqlite" else "UTC_TIMESTAMP(6)"
    return [statement.format(now=now) for statement in _ADOPTIONS]


def generate_init_sql() -> str:
    """The text of ``init.sql``."""
    parts = [_HEADER]
    parts.extend(_mysql_ddl(table) for table in all_metadata().sorted_tables)
    parts.append("-- The ledger's opening entries for rows inserted directly (cloudmart check).")
    parts.extend(f"{statement};\n" for statement in ledger_triggers("mysql"))
    parts.append("-- Rows from before the ledger open their accounts with what they hold.")
    parts.extend(f"{statement};\n" for statement in ledger_adoptions("mysql"))
    return "\n".join(parts)


def _statements(sql: str) -> list[str]:
    body = "\n".join(line for line in sql.splitlines() if not line.startswith("--"))
    return [stmt.strip() for stmt in body.split(";\n") if stmt.strip().rstrip(";")]


async def ensure_database(url: str) -> None:
    """Create the database named in a MySQL/MariaDB URL if it is missing (SQLite: nothing)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" or not parsed.database:
        return
    server = create_async_engine(parsed._replace(database=None), isolation_level="AUTOCOMMIT")
    try:
        async with server.connect() as conn:
            await conn.execute(
                sa.text(
                    f"CREATE DATABASE IF NOT EXISTS `{parsed.database}` "
                    "CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                )
            )
    finally:
        await server.dispose()


async def create_schema(engine: AsyncEngine, *, reset: bool = False) -> None:
    """Create every table (dropping them first when ``reset``).

    MySQL/MariaDB run ``init.sql`` itself, statement by statement; SQLite builds the same
    metadata with ``create_all``.
    """
    metadata = all_metadata()
    async with engine.begin() as conn:
        if reset:
            await conn.run_sync(metadata.drop_all)
        if engine.dialect.name == "sqlite":
            await conn.run_sync(metadata.create_all)
            for statement in [*ledger_triggers("sqlite"), *ledger_adoptions("sqlite")]:
                await conn.execute(sa.text(statement))
        else:
            for statement in _statements(generate_init_sql()):
                await conn.execute(sa.text(statement))


DEMO_CUSTOMERS = [
    {
        "customer_id": 1,
        "name": "Hanako Yamada",
        "email": "hanako@example.jp",
        "balance": Decimal("50000.00"),
    },
    {
        "customer_id": 2,
        "name": "Taro Suzuki",
        "email": "taro@example.jp",
        "balance": Decimal("3000.00"),
    },
    {
        "customer_id": 3,
        "name": "Emma Smith",
        "email": "emma@example.com",
        "balance": Decimal("20000.00"),
    },
]
DEMO_BOOKS = [
    (1, "Designing Data-Intensive Applications", "4800.00", 50),
    (2, "Release It!", "3600.00", 30),
    (3, "Enterprise Integration Patterns", "6200.00", 20),
    (4, "Microservices Patterns", "5400.00", 25),
    (5, "Database Internals", "4400.00", 15),
    (6, "Kafka: The Definitive Guide", "4000.00", 10),
    (7, "Site Reliability Engineering", "3900.00", 40),
    (8, "Building Microservices", "4200.00", 35),
    (9, "Streaming Systems", "5000.00", 5),
    (10, "The Art of Computer Programming, Vol. 1", "9800.00", 2),
]


async def seed_demo(engine: AsyncEngine) -> None:
    """Add the demo catalogue (three customers, ten books with stock) unless it is there."""
    async with engine.begin() as conn:
        if await conn.scalar(sa.select(sa.func.count()).select_from(domain.customers)):
            return
        await conn.execute(domain.customers.insert(), DEMO_CUSTOMERS)
        await conn.execute(
            domain.books.insert(),
            [{"book_id": b, "title": t, "price": Decimal(p)} for b, t, p, _ in DEMO_BOOKS],
        )
        await conn.execute(
            domain.inventory.insert(),
            [{"book_id": b, "available": n, "reserved": 0} for b, _, _, n in DEMO_BOOKS],
        )
