"""The one way every process talks to its database.

:class:`Database` owns a SQLAlchemy async engine and runs units of work as transactions that
are retried, after a full rollback, when the server reports a deadlock (1213) or a lock-wait
timeout (1205) — or SQLite says it is busy. MySQL/MariaDB sessions run at READ COMMITTED:
the activities change stock and money through conditional updates, which always read the
latest committed row, and READ COMMITTED avoids the gap locks that make REPEATABLE READ
deadlock-prone under concurrent inserts.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from prepared_sql import is_lock_conflict, share_transaction, skip_commits_already_sent

T = TypeVar("T")
log = structlog.get_logger(__name__)


def create_engine(
    url: str,
    *,
    pool_size: int = 10,
    max_overflow: int = 0,
    pool_timeout: float = 10.0,
    idle_transaction_timeout: int | None = None,
) -> AsyncEngine:
    """Build the process's engine: READ COMMITTED on MySQL, one writer at a time on SQLite.

    ``idle_transaction_timeout`` (seconds, MariaDB only) has the server end a transaction that
    sits idle that long, so a process frozen mid-transaction (paused, swapping, stuck) cannot
    hold row locks that others need; MySQL has no such setting and is left as it is.
    """
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        # SQLite allows one writer; a single shared connection serialises the process's
        # transactions instead of failing them with "database is locked".
        return create_async_engine(
            url,
            pool_size=1,
            max_overflow=0,
            pool_timeout=pool_timeout,
            connect_args={"timeout": 30},
        )
    kwargs: dict[str, Any] = {
        "isolation_level": "READ COMMITTED",
        "pool_recycle": 3600,
        "pool_reset_on_return": None,  # _roll_back_open_transactions does it, when needed
        # The most recently returned connection first: under light load the same few stay
        # warm and skip the idle ping (_ping_when_idle); under load every one is in use anyway.
        "pool_use_lifo": True,
    }
    if pool_size == 0:
        kwargs["poolclass"] = NullPool
    else:
        kwargs.update(pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout)
    engine = create_async_engine(url, **kwargs)
    skip_commits_already_sent(engine)
    _ping_when_idle(engine)
    _roll_back_open_transactions(engine)
    if idle_transaction_timeout:
        _limit_idle_transactions(engine, int(idle_transaction_timeout))
    return engine


PING_AFTER_IDLE = 1.0
"""Seconds a pooled connection may sit unused before its next checkout pings it first."""


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Ping a connection at checkout only when it sat in the pool over ``PING_AFTER_IDLE``.

    ``pool_pre_ping`` pings at every checkout: one round trip more per transaction, on every
    hot path. A connection that was used a moment ago is as alive as a ping would show; one
    that sat idle (a server restart may have passed) is pinged and, if dead, replaced before
    anyone uses it. A server that dies under load fails the statements in flight either way,
    and the pool then replaces every connection older than the failure.
    """
    dialect = engine.sync_engine.dialect

    @sa.event.listens_for(engine.sync_engine, "checkin")
    def on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @sa.event.listens_for(engine.sync_engine, "checkout")
    def on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since <= PING_AFTER_IDLE:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:  # dead: the pool discards it and checks out another
            raise DisconnectionError(f"pooled connection failed its ping: {exc}") from exc


def _roll_back_open_transactions(engine: AsyncEngine) -> None:
    """Roll a connection back on its way into the pool only when a transaction is open on it.

    By default the pool sends a ROLLBACK with every connection it takes back, even right after
    the COMMIT of its transaction: one round trip more per transaction. The server says in
    every reply whether a transaction is open (``SERVER_STATUS_IN_TRANS``); only then does a
    returned connection need one. (A query cancelled mid-flight makes aiomysql close the
    connection, so a connection never comes back with a reply unread.)
    """

    @sa.event.listens_for(engine.sync_engine, "reset")
    def on_reset(dbapi_connection: Any, _record: Any, reset_state: Any) -> None:
        if reset_state.terminate_only:
            return
        driver = dbapi_connection.driver_connection
        if driver is None or driver.get_transaction_status():
            dbapi_connection.rollback()


def _limit_idle_transactions(engine: AsyncEngine, seconds: int) -> None:
    @sa.event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SELECT VERSION()")
            if "mariadb" in str(cursor.fetchone()[0]).lower():
                cursor.execute(f"SET SESSION idle_transaction_timeout = {seconds}")
        finally:
            cursor.close()


class Database:
    """A pool plus the transaction discipline the activities rely on.

    ``inbox_repeats`` counts, per operation name, the repeats the activities answered from the
    inbox instead of running them again (metrics read it).
    """

    def __init__(self, engine: AsyncEngine, *, lock_retries: int = 8) -> None:
        self.engine = engine
        self._lock_retries = lock_retries
        self.inbox_repeats: Counter[str] = Counter()

    @classmethod
    def from_url(cls, url: str, **pool: Any) -> Database:
        lock_retries = pool.pop("lock_retries", 8)
        return cls(create_engine(url, **pool), lock_retries=lock_retries)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def transaction(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``work`` in one transaction; on a lock conflict roll back and run it again.

        The first attempt runs as it is; only a conflict sets up the retries (up to
        ``lock_retries`` attempts in all, with a random exponential pause before each).
        """
        try:
            async with self.engine.begin() as conn:
                return await work(conn)
        except DBAPIError as exc:
            if self._lock_retries <= 1 or not is_lock_conflict(exc):
                raise
        await asyncio.sleep(random.uniform(0, 0.005))
        async for attempt in AsyncRetrying(  # attempt k here is attempt k + 1 in all
            retry=retry_if_exception(is_lock_conflict),
            stop=stop_after_attempt(self._lock_retries - 1),
            wait=wait_random_exponential(multiplier=0.01, max=0.2),
            reraise=True,
        ):
            with attempt:
                log.info("db.lock_conflict_retry", attempt=attempt.retry_state.attempt_number + 1)
                async with self.engine.begin() as conn:
                    return await work(conn)
        raise AssertionError("unreachable")  # pragma: no cover

    async def together(self, work: Callable[[Database], Awaitable[T]]) -> T:
        """Run ``work(shared)`` in one transaction, committed once at the end, where every
        unit of work ``shared.transaction(...)`` runs (the operations, a handler's own) joins
        that transaction instead of committing one of its own.

        Nothing is retried here: the first error of any unit of work rolls the whole
        transaction back and is raised as :class:`SharedTransactionFailed` (even a lock
        conflict, or the race a unit would otherwise retry), so the caller can run each unit
        in a transaction of its own instead, where it retries as usual.
        """
        async with self.engine.begin() as conn:
            await share_transaction(conn)
            return await work(_Joined(self, conn))

    async def ping(self) -> bool:
        """True when the database answers; used by ``/health``."""
        try:
            async with self.engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except (DBAPIError, OSError, TimeoutError):
            return False
        return True

    async def dispose(self) -> None:
        await self.engine.dispose()


class SharedTransactionFailed(Exception):
    """A unit of work failed inside :meth:`Database.together`; the shared transaction was
    rolled back whole (the unit's own error is the ``__cause__``)."""


class _Joined(Database):
    """The database as :meth:`Database.together`'s units of work see it: their transactions
    are the one shared transaction."""

    def __init__(self, owner: Database, conn: AsyncConnection) -> None:
        super().__init__(owner.engine, lock_retries=1)
        self.inbox_repeats = owner.inbox_repeats
        self._conn = conn

    async def transaction(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        try:
            return await work(self._conn)
        except Exception as exc:
            raise SharedTransactionFailed(f"{type(exc).__name__}: {exc}") from exc

    async def together(self, work: Callable[[Database], Awaitable[T]]) -> T:
        return await work(self)
