"""The SQL history store's group commit (private; see :mod:`engine.adapters.sql_store`).

Concurrent writers queue a :class:`Write`; whoever finds no write in flight becomes the leader
and writes everything queued in one transaction. On MySQL/MariaDB that is one round trip: each
saga's row (the insert of a create, the fenced ``UPDATE`` of an append) followed by a check
that it matched, then all the events and the ``COMMIT``, in one packet; a check that finds its
row unmatched raises an error there, so the server runs nothing after it and the transaction
rolls back with nothing written. The batch then goes the two-packet way (on SQLite, the only
way): every row first, then the events of the rows that matched with the ``COMMIT``, so that a
refused fence is told apart (cancel, fenced, gone; a create whose saga exists) and answered to
its writer alone. A failed batch insert is retried item by item so the offender alone is
refused; a lock conflict runs the batch again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from engine.adapters._sql_rows import event_row, loads, map_error
from engine.adapters.sql_tables import saga_instances, saga_step_logs
from engine.errors import CancelRequested, ConcurrencyConflict, SagaError, SagaNotFound
from engine.history import Event
from prepared_sql import Prepared, Statement, error_code, is_lock_conflict, run_together

__all__ = ["UPDATES", "GroupCommit", "Write"]

_si = saga_instances
_sl = saga_step_logs


def _update_statement(*, honour_cancel: bool, finished: bool) -> sa.Update:
    where = [
        _si.c.saga_id == sa.bindparam("b_saga_id"),
        _si.c.version == sa.bindparam("b_version"),
        _si.c.owner == sa.bindparam("b_owner"),
        _si.c.next_seq == sa.bindparam("b_expected"),
    ]
    if honour_cancel:
        where.append(_si.c.cancel_requested == sa.false())
    values: dict[str, Any] = {
        "next_seq": sa.bindparam("v_next_seq"),
        "status": sa.bindparam("v_status"),
        "current_step": sa.bindparam("v_current_step"),
        "result": sa.bindparam("v_result"),
        "failure_reason": sa.bindparam("v_failure_reason"),
        "needs_operator": sa.bindparam("v_needs_operator"),
        "compensation_attempts": sa.bindparam("v_compensation_attempts"),
        "failed_step": sa.bindparam("v_failed_step"),
        "past_pivot": sa.bindparam("v_past_pivot"),
        "updated_at": sa.bindparam("v_updated_at"),
    }
    # The operator request this append answers is cleared; one that came after it stays.
    # (In this order: MySQL assigns left to right, and each CASE must see the id as it was.)
    answered = _si.c.operator_request_id == sa.bindparam("b_handled")
    values["operator_request"] = sa.case((answered, None), else_=_si.c.operator_request)
    values["operator_request_id"] = sa.case((answered, None), else_=_si.c.operator_request_id)
    if finished:
        values["owner"] = None
        values["lease_expires_at"] = None
    return sa.update(_si).where(*where).ordered_values(*values.items())


# The appends' statements run on the driver's cursor (prepared_sql).
UPDATES = {
    (hc, fin): Prepared(_update_statement(honour_cancel=hc, finished=fin))
    for hc in (True, False)
    for fin in (True, False)
}
INSERT_INSTANCE = Prepared(
    sa.insert(_si)
    .prefix_with("IGNORE", dialect="mysql")
    .prefix_with("IGNORE", dialect="mariadb")
    .prefix_with("OR IGNORE", dialect="sqlite")
)
INSERT_EVENTS = Prepared(sa.insert(_sl))
# After a row's write, in the same packet: an error (a scalar subquery of two rows) unless it
# matched one row, so that nothing after it runs. MySQL and MariaDB alike.
MATCHED_ONE = Prepared(sa.text("SELECT IF(ROW_COUNT() = 1, 1, (SELECT 1 UNION ALL SELECT 2))"))
_UNMATCHED = 1242  # ER_SUBQUERY_NO_1_ROW: MATCHED_ONE found its row's write unmatched


@dataclasses.dataclass(eq=False)
class Write:
    """One saga's write in a group commit: a create (``instance``, its row) or an append
    (``statement``, the fenced update, with ``params``), and its events."""

    saga_id: str
    events: Sequence[Event]
    instance: dict[str, Any] | None = None  # a create
    params: dict[str, Any] | None = None  # an append
    statement: Prepared | None = None
    done: bool = False
    created: bool = False
    error: BaseException | None = None

    def row_write(self) -> tuple[Prepared, dict[str, Any]]:
        """The statement that writes this saga's row (an insert or a fenced update), with
        its parameters."""
        if self.instance is not None:
            return INSERT_INSTANCE, self.instance
        assert self.statement is not None
        assert self.params is not None
        return self.statement, self.params


class GroupCommit:
    """The writes of one store, group-committed on ``engine``; counts what it committed."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._one_packet = engine.dialect.name in ("mysql", "mariadb")
        self._queue: list[Write] = []
        self._busy = False
        self._batch_done = asyncio.Event()
        self.commits = 0  # write transactions committed (a group commit counts once)
        self.writes = 0  # creates + appends committed (each saga's write counts once)
        self.lock_retries = 0  # group commits run again after a deadlock or lock-wait timeout

    async def submit(self, write: Write) -> None:
        """Queue ``write`` and return once it is committed (or refused: its error raised)."""
        self._queue.append(write)
        while not write.done:
            if self._busy:
                await self._batch_done.wait()
                continue
            self._busy = True
            batch, self._queue = self._queue, []
            batch_done = self._batch_done
            try:
                await self._write_batch(batch)
            except BaseException as exc:
                for item in batch:
                    if not item.done:
                        item.done, item.error = True, map_error(exc)
                if not isinstance(exc, Exception):
                    raise
            finally:
                self._busy = False
                self._batch_done = asyncio.Event()
                batch_done.set()
        if write.error is not None:
            raise write.error

    async def _write_batch(self, batch: list[Write]) -> None:
        # One lock order for every writer: rows are updated in saga_id order.
        batch.sort(key=lambda item: item.saga_id)
        try:
            await self._write_retrying(batch)
        except IntegrityError:
            if len(batch) == 1:
                batch[0].done = True
                batch[0].error = ConcurrencyConflict(f"saga {batch[0].saga_id}: seq taken")
                return
            for item in batch:  # isolate the offender
                item.done, item.error, item.created = False, None, False
                try:
                    await self._write_retrying([item])
                except IntegrityError:
                    item.done = True
                    item.error = ConcurrencyConflict(f"saga {item.saga_id}: seq taken")
                except Exception as exc:
                    item.done, item.error = True, map_error(exc)

    async def _write_retrying(self, batch: list[Write]) -> None:
        """Write ``batch`` in one transaction, again (after its rollback) on a lock conflict.

        Nothing about a batch is recorded until its commit, so running it again is safe.
        """
        for attempt in itertools.count(1):
            try:
                await self._write_together(batch)
                return
            except DBAPIError as exc:
                if attempt >= _LOCK_RETRIES or not is_lock_conflict(exc):
                    raise
                self.lock_retries += 1
                await asyncio.sleep(random.uniform(0, 0.002 * attempt))

    async def _write_together(self, batch: list[Write]) -> None:
        if self._one_packet and await self._write_in_one_packet(batch):
            return
        rows: list[dict[str, Any]] = []
        outcomes: list[tuple[Write, bool, BaseException | None]] = []
        async with self._engine.begin() as conn:
            # Every saga's row in one round trip, then its events with the COMMIT in another.
            matched = await run_together(conn, [item.row_write() for item in batch])
            for item, reply in zip(batch, matched, strict=True):
                ok = reply.matched == 1
                error = None if ok or item.instance is not None else await self._why(conn, item)
                outcomes.append((item, ok, error))
                if ok:
                    rows.extend(event_row(item.saga_id, e) for e in item.events)
            await INSERT_EVENTS.run_many(conn, rows, commit=True)
        self.commits += 1
        self.writes += len(batch)
        for item, ok, refusal in outcomes:
            item.done = True
            item.created = ok and item.instance is not None
            item.error = refusal

    async def _write_in_one_packet(self, batch: list[Write]) -> bool:
        """Write ``batch`` in one round trip when every row matches; False (nothing written)
        when one did not, for the two-packet way to tell which and why."""
        statements: list[Statement] = []
        for item in batch:
            statements += [item.row_write(), (MATCHED_ONE, {})]
        statements.append(
            (INSERT_EVENTS, [event_row(i.saga_id, e) for i in batch for e in i.events])
        )
        try:
            async with self._engine.begin() as conn:
                await run_together(conn, statements, commit=True)
        except DBAPIError as exc:
            if error_code(exc) == _UNMATCHED:
                return False
            raise
        self.commits += 1
        self.writes += len(batch)
        for item in batch:
            item.done, item.created, item.error = True, item.instance is not None, None
        return True

    async def _why(self, conn: AsyncConnection, item: Write) -> SagaError:
        assert item.params is not None
        row = (
            await conn.execute(
                sa.select(
                    _si.c.version,
                    _si.c.owner,
                    _si.c.next_seq,
                    _si.c.cancel_requested,
                    _si.c.operator_request,
                ).where(_si.c.saga_id == item.saga_id)
            )
        ).first()
        if row is None:
            return SagaNotFound(item.saga_id)
        p = item.params
        fence = (p["b_version"], p["b_owner"], p["b_expected"])
        if (row.version, row.owner, row.next_seq) == fence and row.cancel_requested:
            return CancelRequested(item.saga_id, loads(row.operator_request))
        return ConcurrencyConflict(
            f"saga {item.saga_id}: fenced (append v{p['b_version']}/{p['b_owner']}/seq "
            f"{p['b_expected']}, store v{row.version}/{row.owner}/seq {row.next_seq})"
        )


_LOCK_RETRIES = 8
