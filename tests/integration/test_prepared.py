"""Prepared statements: the driver's cursor on MariaDB answers exactly as SQLAlchemy does on
SQLite, inside the caller's transaction, and its errors leave as SQLAlchemy's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import mysql_database_url
from round_trips import count_round_trips
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.db import create_engine
from prepared_sql import Prepared, Reply, run_together

metadata = sa.MetaData()
things = sa.Table(
    "prepared_things",
    metadata,
    sa.Column("thing_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(40), nullable=False),
    sa.Column("flag", sa.Boolean, nullable=True),
    sa.Column("amount", sa.Numeric(10, 2), nullable=False),
    sa.Column("at", sa.DateTime().with_variant(sa.dialects.mysql.DATETIME(fsp=6), "mysql")),
)

INSERT = Prepared(things.insert())
BY_NAME = Prepared(
    sa.select(things.c.thing_id, things.c.amount, things.c.at)
    .where(things.c.name == sa.bindparam("name"))
    .order_by(things.c.thing_id)
)
ADD = Prepared(  # the same parameter twice, and a condition on it
    things.update()
    .where(things.c.thing_id == sa.bindparam("id"), things.c.amount >= sa.bindparam("delta"))
    .values(amount=things.c.amount - sa.bindparam("delta"))
)
CLEAR_FLAG = Prepared(  # a value the statement holds itself
    things.update().where(things.c.thing_id == sa.bindparam("id")).values(flag=None)
)
FLAG = Prepared(sa.select(things.c.flag).where(things.c.thing_id == sa.bindparam("id")))
AT = datetime(2026, 11, 26, 12, 0, 0, 123456)


@pytest.fixture(params=["sqlite", "mariadb"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'prepared.db'}"
    else:
        url = mysql_database_url("cloudmart_test_prepared")
    engine = create_engine(url, pool_size=2, max_overflow=0)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


@pytest.fixture
async def one_connection() -> AsyncIterator[AsyncEngine]:
    """MariaDB with the table, through a pool of one connection (the same one every time)."""
    engine = create_engine(mysql_database_url("cloudmart_test_prepared"), pool_size=1)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


def row(thing_id: int, name: str = "a", flag: bool | None = True) -> dict[str, object]:
    return {"thing_id": thing_id, "name": name, "flag": flag, "amount": Decimal("5.00"), "at": AT}


async def test_statements_answer_alike_on_every_dialect(db: AsyncEngine) -> None:
    async with db.begin() as conn:
        assert await INSERT.run(conn, row(1)) == 1
        assert await INSERT.run_many(conn, [row(2), row(3, name="b")]) == 2
        assert await BY_NAME.rows(conn, {"name": "a"}) == [
            (1, Decimal("5.00"), AT),
            (2, Decimal("5.00"), AT),
        ]
        assert await BY_NAME.scalar(conn, {"name": "nobody"}) is None
        assert await ADD.run(conn, {"id": 1, "delta": Decimal("2.00")}) == 1
        assert await ADD.run(conn, {"id": 1, "delta": Decimal("9.00")}) == 0  # not enough
        assert await FLAG.scalar(conn, {"id": 2}) == 1  # a boolean reads as the driver has it
        assert await CLEAR_FLAG.run(conn, {"id": 2}) == 1
        assert await FLAG.scalar(conn, {"id": 2}) is None
        assert await INSERT.run_many(conn, []) == 0
    async with db.connect() as conn:
        assert await BY_NAME.scalar(conn, {"name": "b"}) == 3
        assert (await BY_NAME.rows(conn, {"name": "a"}))[0][1] == Decimal("3.00")


async def test_statements_run_together_answer_as_one_by_one(db: AsyncEngine) -> None:
    async with db.begin() as conn:
        replies = await run_together(
            conn,
            [
                (INSERT, row(1)),
                (INSERT, [row(2), row(3, name="b")]),  # one INSERT of two rows
                (INSERT, []),  # of none: nothing is sent
                (ADD, {"id": 1, "delta": Decimal("2.00")}),
                (ADD, {"id": 1, "delta": Decimal("9.00")}),  # not enough: matches nothing
                (BY_NAME, {"name": "a"}),  # sees the writes before it
                (CLEAR_FLAG, {"id": 1}),
            ],
        )
        assert [r.matched for r in replies[:5]] == [1, 2, 0, 1, 0]
        assert replies[5].rows == [(1, Decimal("3.00"), AT), (2, Decimal("5.00"), AT)]
        assert replies[6] == Reply(1, [])
        assert await run_together(conn, []) == []
        assert await run_together(conn, [(INSERT, [])]) == [Reply(0, [])]
    async with db.connect() as conn:
        assert await FLAG.scalar(conn, {"id": 1}) is None
        assert await BY_NAME.scalar(conn, {"name": "b"}) == 3


async def test_statements_run_together_can_carry_the_commit(db: AsyncEngine) -> None:
    async with db.begin() as conn:
        await run_together(conn, [(INSERT, row(1)), (INSERT, row(2))], commit=True)
    async with db.connect() as conn:
        assert [r[0] for r in await BY_NAME.rows(conn, {"name": "a"})] == [1, 2]


async def test_statements_run_together_stop_at_the_first_error(db: AsyncEngine) -> None:
    async with db.begin() as conn:
        await INSERT.run(conn, row(1))
    with pytest.raises(IntegrityError):
        async with db.begin() as conn:
            await run_together(conn, [(INSERT, row(2)), (INSERT, row(1)), (INSERT, row(3))])
    async with db.connect() as conn:  # rolled back whole; the pool is fine afterwards
        assert [r[0] for r in await BY_NAME.rows(conn, {"name": "a"})] == [1]


async def test_statements_run_together_cost_one_round_trip(one_connection: AsyncEngine) -> None:
    engine = one_connection
    sent = count_round_trips(engine)
    async with engine.begin() as conn:
        await run_together(conn, [(INSERT, row(1)), (INSERT, row(2)), (CLEAR_FLAG, {"id": 1})])
        await run_together(conn, [(INSERT, row(3)), (BY_NAME, {"name": "a"})], commit=True)
    assert len(sent) == 2, sent  # and the engine sent no COMMIT of its own


async def test_a_read_outside_a_transaction_costs_one_round_trip(
    one_connection: AsyncEngine,
) -> None:
    engine = one_connection
    sent = count_round_trips(engine)
    async with engine.connect() as conn:  # the pool sends no ROLLBACK when it is back
        assert await BY_NAME.rows(conn, {"name": "nobody"}) == []
    assert len(sent) == 1, sent


async def test_reads_run_together_outside_a_transaction_leave_none_open(
    one_connection: AsyncEngine,
) -> None:
    engine = one_connection
    async with engine.begin() as conn:
        await INSERT.run(conn, row(1))
    sent = count_round_trips(engine)
    async with engine.connect() as conn:  # the packet carries its ROLLBACK: none at checkin
        connection_id = await Prepared(sa.select(sa.func.connection_id())).scalar(conn)
        found, flag = await run_together(conn, [(BY_NAME, {"name": "a"}), (FLAG, {"id": 1})])
    assert (found.rows, flag.rows) == ([(1, Decimal("5.00"), AT)], [(1,)])
    assert len(sent) == 2, sent  # the two reads, each with its ROLLBACK
    assert await transactions_open(engine, connection_id) == 0


async def transactions_open(engine: AsyncEngine, connection_id: int) -> int:
    """Transactions the server holds open for connection ``connection_id`` (seen from another
    connection)."""
    other = create_engine(engine.url.render_as_string(hide_password=False), pool_size=1)
    try:
        async with other.connect() as conn:
            return int(
                await conn.scalar(
                    sa.text(
                        "SELECT COUNT(*) FROM information_schema.innodb_trx "
                        "WHERE trx_mysql_thread_id = :id"
                    ),
                    {"id": connection_id},
                )
            )
    finally:
        await other.dispose()


async def test_statements_run_inside_the_callers_transaction(db: AsyncEngine) -> None:
    async def insert_then_fail() -> None:
        async with db.begin() as conn:
            await INSERT.run(conn, row(1))
            raise RuntimeError("roll it back")

    with pytest.raises(RuntimeError):
        await insert_then_fail()
    async with db.connect() as conn:
        assert await BY_NAME.rows(conn, {"name": "a"}) == []


async def test_a_duplicate_key_is_sqlalchemys_integrity_error(db: AsyncEngine) -> None:
    async with db.begin() as conn:
        await INSERT.run(conn, row(1))
    with pytest.raises(IntegrityError):
        async with db.begin() as conn:
            await INSERT.run(conn, row(1))
    async with db.connect() as conn:  # the pool is fine afterwards
        assert len(await BY_NAME.rows(conn, {"name": "a"})) == 1


async def test_a_lost_connection_is_invalidated_and_replaced() -> None:
    url = mysql_database_url("cloudmart_test_prepared_lost")
    engine = create_engine(url, pool_size=1, max_overflow=0)
    killer = create_engine(url, pool_size=1, max_overflow=0)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        async with engine.connect() as conn:
            victim = await conn.scalar(sa.text("SELECT CONNECTION_ID()"))
            async with killer.connect() as other:
                await other.execute(sa.text(f"KILL {victim}"))
            with pytest.raises(DBAPIError) as raised:
                await BY_NAME.rows(conn, {"name": "a"})
        assert raised.value.connection_invalidated
        async with engine.connect() as conn:
            assert await conn.scalar(sa.text("SELECT CONNECTION_ID()")) != victim
            assert await BY_NAME.rows(conn, {"name": "a"}) == []
    finally:
        await engine.dispose()
        await killer.dispose()


async def test_a_last_write_carries_its_commit(db: AsyncEngine) -> None:
    async with db.begin() as conn:
        await INSERT.run(conn, row(1))
        assert await INSERT.run_many(conn, [row(2), row(3, name="b")], commit=True) == 2
    async with db.begin() as conn:
        assert await ADD.run(conn, {"id": 3, "delta": Decimal("1.00")}, commit=True) == 1
    async with db.connect() as conn:
        assert await BY_NAME.rows(conn, {"name": "a"}) == [
            (1, Decimal("5.00"), AT),
            (2, Decimal("5.00"), AT),
        ]
        assert (await BY_NAME.rows(conn, {"name": "b"}))[0][1] == Decimal("4.00")


async def test_a_last_write_that_fails_commits_nothing(db: AsyncEngine) -> None:
    async with db.begin() as conn:
        await INSERT.run(conn, row(1))

    async def insert_then_a_duplicate() -> None:
        async with db.begin() as conn:
            await INSERT.run(conn, row(2))
            await INSERT.run(conn, row(1), commit=True)  # fails: its COMMIT never runs

    with pytest.raises(IntegrityError):
        await insert_then_a_duplicate()
    async with db.connect() as conn:
        assert [r[0] for r in await BY_NAME.rows(conn, {"name": "a"})] == [1]


async def test_the_engine_sends_no_second_commit(one_connection: AsyncEngine) -> None:
    engine = one_connection

    async def commits() -> int:
        async with engine.connect() as conn:  # the pool's one connection, every time
            result = await conn.execute(sa.text("SHOW SESSION STATUS LIKE 'Com_commit'"))
            return int(result.one()[1])

    before = await commits()
    async with engine.begin() as conn:
        await INSERT.run(conn, row(1), commit=True)
    carried = await commits() - before
    async with engine.begin() as conn:
        await INSERT.run(conn, row(2))
    separate = await commits() - before - carried
    assert (carried, separate) == (1, 1)


async def test_a_read_outside_a_transaction_leaves_none_open_in_the_pool(
    one_connection: AsyncEngine,
) -> None:
    engine = one_connection
    # A read through engine.connect() opens a transaction on the server; the connection must
    # go back to the pool without it, or the server kills it once idle_transaction_timeout
    # passes and its next user finds it dead.
    async with engine.connect() as conn:
        assert await BY_NAME.rows(conn, {"name": "nobody"}) == []
        connection_id = await Prepared(sa.select(sa.func.connection_id())).scalar(conn)
    assert await transactions_open(engine, connection_id) == 0
