"""The schema has one source: init.sql is what the metadata generates, and it loads on MariaDB."""

from __future__ import annotations

import sqlalchemy as sa
from conftest import mysql_database_url

from activities.db import create_engine
from cloudmart.schema import INIT_SQL, all_metadata, create_schema, generate_init_sql, seed_demo

SPEC_COLUMNS = {
    "customers": {"customer_id", "name", "email", "balance"},
    "books": {"book_id", "title", "price"},
    "inventory": {"book_id", "available", "reserved"},
    "orders": {"order_id", "customer_id", "status", "total_amount"},
    "order_items": {"order_id", "book_id", "quantity"},
    "payments": {"order_id", "amount", "status"},
    "shipments": {"order_id", "status"},
    "saga_instances": {"saga_id", "order_id", "status"},
    "saga_step_logs": {"saga_id"},
    "inbox": {"message_key"},
    "outbox": {"event_id", "order_id", "sequence"},
}


def test_committed_init_sql_is_the_generated_schema() -> None:
    assert INIT_SQL.read_text() == generate_init_sql(), "run: cloudmart db sql > init.sql"


def test_metadata_has_every_table_and_column_the_spec_names() -> None:
    tables = all_metadata().tables
    for name, columns in SPEC_COLUMNS.items():
        assert name in tables, name
        assert columns <= set(tables[name].columns.keys()), name


def _columns_on_server(sync_conn: sa.Connection) -> dict[str, set[str]]:
    inspector = sa.inspect(sync_conn)
    return {t: {c["name"] for c in inspector.get_columns(t)} for t in inspector.get_table_names()}


async def test_init_sql_loads_on_fresh_mariadb_with_every_spec_column() -> None:
    engine = create_engine(mysql_database_url("cloudmart_test_schema"))
    try:
        await create_schema(engine)
        await create_schema(engine)  # init.sql is re-runnable
        await seed_demo(engine)
        async with engine.connect() as conn:
            found = await conn.run_sync(_columns_on_server)
            books = await conn.scalar(sa.text("SELECT COUNT(*) FROM books"))
        for name, columns in SPEC_COLUMNS.items():
            assert columns <= found[name], name
        assert books == 10
    finally:
        await engine.dispose()


async def test_check_constraints_refuse_negative_stock_on_mariadb() -> None:
    engine = create_engine(mysql_database_url("cloudmart_test_schema_checks"))
    try:
        await create_schema(engine)
        await seed_demo(engine)
        async with engine.connect() as conn:
            try:
                await conn.execute(sa.text("UPDATE inventory SET available = -1 WHERE book_id = 1"))
            except sa.exc.DBAPIError as exc:
                refused = "CONSTRAINT" in str(exc.orig).upper()
            else:
                refused = False
            await conn.rollback()
        assert refused
    finally:
        await engine.dispose()


async def test_sqlite_gets_the_same_tables_with_reset(tmp_path) -> None:  # type: ignore[no-untyped-def]
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        await create_schema(engine)
        await seed_demo(engine)
        await create_schema(engine, reset=True)
        async with engine.connect() as conn:
            found = await conn.run_sync(_columns_on_server)
            customers = await conn.scalar(sa.text("SELECT COUNT(*) FROM customers"))
        assert set(all_metadata().tables) == set(found)
        assert customers == 0
    finally:
        await engine.dispose()
