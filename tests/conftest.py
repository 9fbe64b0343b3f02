"""Shared test fixtures: real MariaDB databases made fresh per test module, and a waiting helper.

The server is named by ``CLOUDMART_TEST_DATABASE_URL`` (default: the local MariaDB as root).
Each fixture user asks for a database of its own name, so suites never share rows.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from activities import Database

if TYPE_CHECKING:
    from processes import Deployment
    from shop import Shop

T = TypeVar("T")

TEST_DATABASE_URL = os.environ.get(
    "CLOUDMART_TEST_DATABASE_URL", "mysql+aiomysql://root@127.0.0.1:3306/cloudmart_test"
)
TEST_RABBITMQ_URL = os.environ.get(
    "CLOUDMART_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"
)
TEST_REDIS_URL = os.environ.get("CLOUDMART_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def mysql_database_url(name: str) -> str:
    """Drop and create database ``name`` on the test server; return its async URL."""
    base = make_url(TEST_DATABASE_URL)
    sync_url = base._replace(drivername="mysql+pymysql", database=None)
    engine = sa.create_engine(sync_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
            conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    finally:
        engine.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


class _Deadline:
    """When a wait of ``timeout`` seconds started now gives up, and what it says then: ``what``
    was awaited, and ``describe()`` (a process's log...) read at that moment."""

    def __init__(self, timeout: float, what: str, describe: Callable[[], str] | None) -> None:
        self.timeout, self.what, self.describe = timeout, what, describe
        self.at = time.monotonic() + timeout

    def check(self) -> None:
        """Fail the test once the deadline has passed."""
        if time.monotonic() > self.at:
            said = f"{self.what or 'condition'} not met within {self.timeout}s"
            pytest.fail(f"{said}:\n{self.describe()}" if self.describe else said)


async def until(
    predicate: Callable[[], Awaitable[T] | T],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "",
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; fail the test past
    ``timeout``, saying ``what`` was awaited and, when given, ``describe()``. An exception the
    predicate raises ends the wait at once (a process that died need not be waited for)."""
    deadline = _Deadline(timeout, what, describe)
    while True:
        value = predicate()
        if asyncio.iscoroutine(value) or isinstance(value, Awaitable):
            value = await value  # type: ignore[misc]
        if value:
            return value  # type: ignore[return-value]
        deadline.check()
        await asyncio.sleep(interval)


def until_sync(
    predicate: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "",
    describe: Callable[[], str] | None = None,
) -> T:
    """:func:`until` for code that is not async (a fixture, a thread): the same deadline and
    failure, blocking between polls."""
    deadline = _Deadline(timeout, what, describe)
    while True:
        value = predicate()
        if value:
            return value
        deadline.check()
        time.sleep(interval)


def answers_200(url: str) -> bool:
    """Whether ``url`` answers 200 now (a refused or dropped connection is a no)."""
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def port_free(port: int) -> bool:
    """Whether nothing listens on ``port`` of 127.0.0.1 (the default ports 8001-8005 are
    taken when a developer's CloudMart runs; the tests that need them skip then)."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


# Databases for the business operations: cleaned and filled with tests/domain_data.py's catalogue.


@pytest.fixture(scope="module")
def mysql_url() -> str:
    return mysql_database_url("cloudmart_test_activities")


@pytest.fixture(params=[pytest.param("mariadb", marks=pytest.mark.mysql), "sqlite"])
async def db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Database]:
    if request.param == "mariadb":
        url = request.getfixturevalue("mysql_url")
        database = Database.from_url(url, pool_size=20, max_overflow=20)
    else:
        path = tmp_path_factory.mktemp("sqlite") / "activities.db"
        database = Database.from_url(f"sqlite+aiosqlite:///{path}")
    await _prepared(database)
    yield database
    await database.dispose()


@pytest.fixture
def sync(db: Database) -> Iterator[sa.Engine]:
    """A blocking engine on ``db``'s database, for what reads it with plain SQL (``cloudmart
    check``) or breaks a row the way a bug would."""
    url = db.engine.url
    backend = url.get_backend_name()
    engine = sa.create_engine(
        url.set(drivername="mysql+pymysql" if backend == "mysql" else backend)
    )
    yield engine
    engine.dispose()


@pytest.fixture
async def mysql_db(mysql_url: str) -> AsyncIterator[Database]:
    database = Database.from_url(mysql_url, pool_size=30, max_overflow=30)
    await _prepared(database)
    yield database
    await database.dispose()


def with_schema(url: str) -> str:
    """``url`` once every table of the schema exists in its database."""
    from activities.db import create_engine
    from cloudmart.schema import create_schema

    async def create() -> None:
        engine = create_engine(url)
        try:
            await create_schema(engine)
        finally:
            await engine.dispose()

    asyncio.run(create())
    return url


def fresh_database(name: str) -> str:
    """A new test database ``name`` with the schema; its async URL."""
    return with_schema(mysql_database_url(name))


# For the modules that run processes of their own (a module-scoped fixture ``deployment``): a
# plain engine on its database, the shop on it, and a client of the pattern's entry service
# (the orchestrator, or the order service in the choreography).


@pytest.fixture(scope="module")
def sql(deployment: Deployment) -> Iterator[sa.Engine]:
    from shop import sync_engine

    engine = sync_engine(deployment.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def shop(sql: sa.Engine, deployment: Deployment) -> Shop:
    from shop import Shop

    return Shop(sql, pattern=deployment.pattern)


@pytest.fixture
async def api(deployment: Deployment) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(
        base_url=deployment.url(deployment.entry), timeout=30, limits=limits
    ) as client:
        yield client


async def _prepared(database: Database) -> None:
    """Every table of the schema there and empty, then the catalogue (``domain_data.clean``):
    the MariaDB database is one per module, and ``cloudmart check`` reads the sagas' rows too."""
    from domain_data import clean

    from cloudmart.schema import create_schema
    from engine.adapters import sql_tables

    await create_schema(database.engine)

    async def empty_history(conn: sa.ext.asyncio.AsyncConnection) -> None:
        for table in reversed(sql_tables.metadata.sorted_tables):
            await conn.execute(table.delete())

    await database.transaction(empty_history)
    await clean(database)
