"""Core statements compiled once and run on the driver's own cursor: the hot path's SQL.

Through SQLAlchemy a statement costs this machine about 250 µs of CPU even when it is built
once (an execution context, a greenlet switch, a result object), against about 80 µs on the
driver's cursor. A saga runs some fifty statements, so the hot path — the inbox, the forward
steps, the history appends — goes to the driver. A :class:`Prepared` statement is still
written in Core, compiled once per dialect and parameter set, and runs inside the caller's
transaction (same connection, same ``COMMIT``). On MySQL/MariaDB (aiomysql) it runs on the
driver's cursor; on any other dialect (SQLite in embedded mode) it simply goes through
SQLAlchemy, so the results are alike everywhere.

A driver error is raised as SQLAlchemy raises it (``IntegrityError``, ``OperationalError``...
wrapping the driver's), and a lost connection is invalidated, so callers and the pool handle
both paths alike. Bound values get their type's processing (a boolean is sent as ``0``/``1``);
rows come back as plain tuples in the statement's column order, as the driver reads them (a
boolean column reads as ``0``/``1``). Statements that rely on Python-side column defaults do not
belong here: every column an ``INSERT`` fills must be given.

The last write of a transaction can carry its ``COMMIT`` (``run(..., commit=True)``,
``run_many(..., commit=True)``): both go to the server in one packet (aiomysql connects with
multiple statements allowed), which saves the transaction's last round trip. The caller runs
nothing after it; :func:`skip_commits_already_sent` has the engine then skip the ``COMMIT``
SQLAlchemy would send. If the write fails, the ``COMMIT`` never runs and the transaction rolls
back as usual.

A transaction that several units of work share (:func:`share_transaction`: the events of
one batch, each handled as if alone) gets no ``COMMIT`` from them: its owner commits it once,
after the last.

Statements whose replies the caller needs together (a read and the writes it guards, or a
transaction's last writes) can go in one packet with :func:`run_together`.

:func:`error_code` reads the server's error number off a driver error, and
:func:`is_lock_conflict` says whether one was a deadlock or a lock-wait timeout (or SQLite's
busy database): the one test both the activities' transactions and the history store's group
commit retry on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, cast

import sqlalchemy as sa
from aiomysql.cursors import RE_INSERT_VALUES
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.compiler import SQLCompiler

__all__ = [
    "Prepared",
    "PreparedIn",
    "Reply",
    "Statement",
    "error_code",
    "is_lock_conflict",
    "run_together",
    "share_transaction",
    "shares_transaction",
    "skip_commits_already_sent",
]

_DRIVER_DIALECTS = frozenset({"mysql", "mariadb"})
_LOCK_CONFLICT_CODES = frozenset({1205, 1213})  # lock-wait timeout, deadlock


def error_code(exc: BaseException) -> int | None:
    """The server's error number of a MySQL/MariaDB driver error (as SQLAlchemy raises it),
    else None."""
    args = getattr(getattr(exc, "orig", None), "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def is_lock_conflict(exc: BaseException) -> bool:
    """True for a deadlock or lock-wait timeout (MySQL/MariaDB) or a busy SQLite database: the
    transaction was rolled back whole and may run again."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    code = error_code(exc)
    if code is not None:
        return code in _LOCK_CONFLICT_CODES
    return isinstance(exc, sa.exc.OperationalError) and "database is locked" in str(exc.orig)


# Each positional parameter: its name, its type's bind processor (None: sent as it is) and
# its value when the statement holds it (else _GIVEN: the caller's parameter of that name).
_Order = list[tuple[str, Callable[[Any], Any] | None, Any]]
_GIVEN = object()


class Prepared:
    """One Core statement (``SELECT``, ``INSERT``, ``UPDATE``, ``DELETE``) with named bind
    parameters, run with :meth:`rows`, :meth:`scalar`, :meth:`run` or :meth:`run_many`."""

    def __init__(self, statement: sa.Executable) -> None:
        self.statement = statement
        self._compiled: dict[tuple[str, tuple[str, ...]], tuple[str, _Order]] = {}

    async def rows(
        self, conn: AsyncConnection, params: Mapping[str, Any] | None = None
    ) -> Sequence[tuple[Any, ...]]:
        """Every row of a ``SELECT``.

        On a connection outside a transaction (``engine.connect()``), the ``SELECT`` carries a
        ``ROLLBACK`` in the same packet: the server opens a transaction for the read, and the
        driver, which learns whether one is open only from replies without rows, would
        otherwise hand the connection back to the pool still in it. (Beginning one, as
        ``conn.execute`` would, costs the ``ROLLBACK``'s own round trip when the pool takes
        the connection back.)
        """
        (reply,) = await run_together(conn, [(self, params or {})])
        return reply.rows

    async def scalar(self, conn: AsyncConnection, params: Mapping[str, Any] | None = None) -> Any:
        """The first column of the first row, or None."""
        rows = await self.rows(conn, params)
        return rows[0][0] if rows else None

    async def run(
        self,
        conn: AsyncConnection,
        params: Mapping[str, Any] | None = None,
        *,
        commit: bool = False,
    ) -> int:
        """Run a DML statement once; the rows it matched. ``commit``: the transaction's last
        statement, sent with its ``COMMIT`` (module docstring)."""
        (reply,) = await run_together(conn, [(self, params or {})], commit=commit)
        return reply.matched

    async def run_many(
        self, conn: AsyncConnection, rows: Sequence[Mapping[str, Any]], *, commit: bool = False
    ) -> int:
        """Run a DML statement for each parameter set (an ``INSERT`` goes as one multi-row
        statement); every set must have the same keys. Returns the rows affected.
        ``commit``: as for :meth:`run` (an ``INSERT`` only; other statements ignore it)."""
        if not rows:
            return 0
        if conn.dialect.name not in _DRIVER_DIALECTS:
            return int((await conn.execute(self.statement, [dict(r) for r in rows])).rowcount)
        sql, order = self._sql(conn.dialect, rows[0])
        if commit and RE_INSERT_VALUES.match(sql):
            (reply,) = await run_together(conn, [(self, rows)], commit=True)
            return reply.matched
        async with _DriverCursor(conn, sql, rows) as cursor:
            await cursor.executemany(sql, [_values(order, row) for row in rows])
            return int(cursor.rowcount)

    def _sql(self, dialect: Dialect, params: Mapping[str, Any]) -> tuple[str, _Order]:
        key = (dialect.name, tuple(params))
        found = self._compiled.get(key)
        if found is None:
            statement = cast(sa.ClauseElement, self.statement)
            compiled = cast(
                SQLCompiler, statement.compile(dialect=dialect, column_keys=list(params))
            )
            # Each type's processing of bound values (a Boolean becomes 0/1), by name; a value
            # the statement holds itself (``.values(owner=None)``) is taken from it.
            processors: Mapping[str, Any] = compiled._bind_processors
            order: _Order = [
                (
                    name,
                    processors.get(name),
                    _GIVEN if name in params else compiled.binds[name].effective_value,
                )
                for name in compiled.positiontup or ()
            ]
            found = (compiled.string, order)
            self._compiled[key] = found
        return found


class PreparedIn:
    """A :class:`Prepared` per length of an ``IN`` list, built the first time that length is
    asked for: ``build`` gets the list's bind parameters (``<name>0``, ``<name>1``...) and
    returns the statement; :meth:`params` names a list of values the same way. Callers bound
    the lengths (an order's books, a relay's batch), and with them the statements kept."""

    def __init__(
        self, name: str, build: Callable[[list[sa.BindParameter[Any]]], sa.Executable]
    ) -> None:
        self._name = name
        self._build = build
        self._by_length: dict[int, Prepared] = {}

    def of(self, length: int) -> Prepared:
        statement = self._by_length.get(length)
        if statement is None:
            names: list[sa.BindParameter[Any]] = [
                sa.bindparam(f"{self._name}{i}") for i in range(length)
            ]
            statement = self._by_length[length] = Prepared(self._build(names))
        return statement

    def params(self, values: Sequence[Any]) -> dict[str, Any]:
        return {f"{self._name}{i}": value for i, value in enumerate(values)}


class Reply(NamedTuple):
    """What one statement of :func:`run_together` answered."""

    matched: int
    """The rows a DML statement matched (an ``INSERT``: the rows it wrote)."""
    rows: list[tuple[Any, ...]]
    """The rows of a ``SELECT``; empty for any other statement."""


Statement = tuple[Prepared, Mapping[str, Any] | Sequence[Mapping[str, Any]]]
"""A statement and its parameters; a list of parameter sets makes an ``INSERT`` of that many
rows (one statement)."""


async def run_together(
    conn: AsyncConnection, statements: Sequence[Statement], *, commit: bool = False
) -> list[Reply]:
    """Run statements in order, in the caller's transaction; what each one answered.

    On MySQL/MariaDB they go to the server in one packet, so a transaction's reads and writes
    cost one round trip instead of one each; ``commit``: they are the transaction's last, and
    the ``COMMIT`` goes with them (as for :meth:`Prepared.run`). The server runs them one after
    another and stops at the first that fails; its error is raised as :meth:`Prepared.run`
    raises it, nothing after it ran, and the caller's transaction rolls back as usual.
    On a connection outside a transaction (``engine.connect()``, for reads) the packet ends
    with a ``ROLLBACK``, as :meth:`Prepared.rows` does. Elsewhere they run one by one.
    """
    if conn.dialect.name not in _DRIVER_DIALECTS:
        return [await _one_by_one(conn, prepared, params) for prepared, params in statements]
    parts: list[str] = []
    values: list[Any] = []
    for prepared, params in statements:
        if isinstance(params, Mapping) or params:  # an INSERT of no rows is not sent
            sql, these = _packed(prepared, conn.dialect, params)
            parts.append(sql)
            values.extend(these)
    if not parts:
        return [_NOTHING for _ in statements]
    commit = commit and not shares_transaction(conn)
    alone = not commit and not conn.in_transaction()
    together = "; ".join(parts) + (_AND_COMMIT if commit else _AND_ROLLBACK if alone else "")
    answers: list[Reply] = []
    async with _DriverCursor(conn, together, values) as cursor:
        await cursor.execute(together, values)
        while True:
            rows = list(await cursor.fetchall()) if cursor.description else []
            answers.append(Reply(int(cursor.rowcount), rows))
            if len(answers) == len(parts):
                break
            await cursor.nextset()  # the next statement's reply; its error is raised here
        if commit or alone:
            await cursor.nextset()  # the COMMIT's or ROLLBACK's own reply
        if commit:
            driver = cursor.connection
            driver._committed_by = driver._result
    sent = iter(answers)
    return [
        next(sent) if isinstance(params, Mapping) or params else _NOTHING
        for _, params in statements
    ]


_NOTHING = Reply(0, [])


async def _one_by_one(
    conn: AsyncConnection,
    prepared: Prepared,
    params: Mapping[str, Any] | Sequence[Mapping[str, Any]],
) -> Reply:
    if isinstance(params, Mapping):
        result = await conn.execute(prepared.statement, dict(params))
        if result.returns_rows:
            rows = [tuple(row) for row in result]
            return Reply(len(rows), rows)
        return Reply(int(result.rowcount), [])
    return Reply(await prepared.run_many(conn, params), [])


def _packed(
    prepared: Prepared,
    dialect: Dialect,
    params: Mapping[str, Any] | Sequence[Mapping[str, Any]],
) -> tuple[str, list[Any]]:
    """The SQL of one statement and its values; a list of parameter sets, as one ``INSERT``."""
    if isinstance(params, Mapping):
        sql, order = prepared._sql(dialect, params)
        return sql, _values(order, params)
    sql, order = prepared._sql(dialect, params[0])
    insert = RE_INSERT_VALUES.match(sql)
    if insert is None:
        raise ValueError(f"not an INSERT of many rows: {sql}")
    head, one_row, tail = insert.groups()
    many = head + ",".join([one_row] * len(params)) + tail
    return many, [value for row in params for value in _values(order, row)]


_SHARED = "cloudmart_shared_transaction"


async def share_transaction(conn: AsyncConnection) -> None:
    """Mark ``conn``'s transaction as shared: the ``commit=True`` of the units of work run in
    it send no ``COMMIT``; the caller commits once, when the last is done. The mark lasts
    as long as this checkout of the connection (an execution option)."""
    await conn.execution_options(**{_SHARED: True})


def shares_transaction(conn: AsyncConnection) -> bool:
    """Whether ``conn``'s transaction is shared (:func:`share_transaction`)."""
    sync = conn.sync_connection
    return sync is not None and bool(sync.get_execution_options().get(_SHARED))


_AND_COMMIT = "; COMMIT"
_AND_ROLLBACK = "; ROLLBACK"


def skip_commits_already_sent(engine: AsyncEngine) -> None:
    """Have ``engine`` skip a transaction's ``COMMIT`` when its last statement carried one.

    The connection remembers the reply of the ``COMMIT`` a :class:`Prepared` sent; when nothing
    ran on the connection since (its latest reply is still that one), the transaction is
    already committed and SQLAlchemy's ``COMMIT`` would be one more round trip for nothing.
    Without this, such a transaction is still correct: the second ``COMMIT`` does nothing.
    """
    dialect = engine.sync_engine.dialect
    commit = dialect.do_commit

    def do_commit(dbapi_connection: Any) -> None:
        driver: Any = getattr(dbapi_connection, "driver_connection", None)
        sent = getattr(driver, "_committed_by", None)
        if sent is not None and sent is driver._result:
            driver._committed_by = None
            return
        commit(dbapi_connection)

    dialect.do_commit = do_commit  # type: ignore[method-assign]


def _values(order: _Order, params: Mapping[str, Any]) -> list[Any]:
    values = []
    for name, process, constant in order:
        value = params[name] if constant is _GIVEN else constant
        values.append(value if process is None or value is None else process(value))
    return values


class _DriverCursor:
    """The driver cursor of ``conn``'s connection; driver errors leave as SQLAlchemy's."""

    def __init__(self, conn: AsyncConnection, sql: str, params: Any) -> None:
        self._conn = conn
        self._sql = sql
        self._params = params
        self._cursor: Any = None

    async def __aenter__(self) -> Any:
        sync = self._conn.sync_connection
        assert sync is not None  # the caller's connection is open
        driver = sync.connection.driver_connection
        assert driver is not None
        self._cursor = await driver.cursor()
        return self._cursor

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        cursor, self._cursor = self._cursor, None
        if exc is None:
            await cursor.close()
            return
        dialect = self._conn.dialect
        dbapi = dialect.loaded_dbapi
        if isinstance(exc, AttributeError) and "NoneType" in str(exc):
            # aiomysql, when its socket is already gone
            exc = dbapi.InternalError(f"network operation failed: {exc}")
        elif isinstance(exc, RuntimeError) and "the handler is closed" in str(exc):
            # uvloop, when aiomysql writes to a connection the server (or the network) reset:
            # a lost connection (2013), so that it is invalidated and the error is the
            # OperationalError a dropped connection raises everywhere else.
            exc = dbapi.OperationalError(2013, f"Lost connection to server: {exc}")
        if not isinstance(exc, dbapi.Error):
            return
        lost = dialect.is_disconnect(exc, None, None)
        if lost:
            await self._conn.invalidate()
        raise sa.exc.DBAPIError.instance(
            self._sql,
            self._params,
            exc,
            dbapi.Error,
            connection_invalidated=lost,
            dialect=dialect,
        ) from exc
