"""The pool on MariaDB: no round trip it does not need, and no dead or dirty connection handed
out (activities.db.create_engine)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from conftest import mysql_database_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from activities import db as db_module
from activities.db import create_engine

pytestmark = pytest.mark.mysql


@pytest.fixture
async def engine() -> AsyncIterator[AsyncEngine]:
    url = mysql_database_url("cloudmart_test_pool")
    engine = create_engine(url, pool_size=1, max_overflow=0)
    async with engine.begin() as conn:
        await conn.execute(sa.text("CREATE TABLE notes (id INT PRIMARY KEY)"))
    yield engine
    await engine.dispose()


async def session_count(engine: AsyncEngine, counter: str) -> int:
    async with engine.connect() as conn:
        row = (await conn.execute(sa.text(f"SHOW SESSION STATUS LIKE '{counter}'"))).one()
    return int(row[1])


async def test_a_committed_connection_goes_back_to_the_pool_without_a_rollback(
    engine: AsyncEngine,
) -> None:
    before = await session_count(engine, "Com_rollback")  # its own close rolls back once
    for n in range(5):
        async with engine.begin() as conn:
            await conn.execute(sa.text(f"INSERT INTO notes VALUES ({n})"))
    assert await session_count(engine, "Com_rollback") == before + 1


async def test_a_connection_returned_with_an_open_transaction_is_rolled_back(
    engine: AsyncEngine,
) -> None:
    raw = await engine.raw_connection()
    cursor = await raw.driver_connection.cursor()
    await cursor.execute("INSERT INTO notes VALUES (42)")  # opens a transaction, never ended
    await greenlet_spawn(raw.close)  # back into the pool as it is
    async with engine.connect() as conn:
        assert (await conn.execute(sa.text("SELECT COUNT(*) FROM notes"))).scalar() == 0


async def test_a_connection_idle_in_the_pool_is_pinged_and_replaced_when_dead(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with engine.connect() as conn:
        victim = await conn.scalar(sa.text("SELECT CONNECTION_ID()"))
    killer = create_engine(str(engine.url.render_as_string(hide_password=False)), pool_size=1)
    try:
        async with killer.connect() as conn:
            await conn.execute(sa.text(f"KILL {victim}"))
    finally:
        await killer.dispose()
    monkeypatch.setattr(db_module, "PING_AFTER_IDLE", 0.0)  # idle long enough: ping it
    async with engine.connect() as conn:
        assert await conn.scalar(sa.text("SELECT CONNECTION_ID()")) != victim


async def test_a_connection_used_a_moment_ago_is_not_pinged(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(sa.text("SELECT 1"))
    pings = await session_count(engine, "Com_admin_commands")  # COM_PING counts here
    for _ in range(5):
        async with engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
    assert await session_count(engine, "Com_admin_commands") == pings
