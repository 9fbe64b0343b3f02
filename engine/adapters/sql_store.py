"""The SQL :class:`~engine.ports.HistoryStore`: SQLAlchemy Core over MySQL/MariaDB or SQLite.

Writes (saga creation and history appends) go through a *group commit*: concurrent callers queue
their write; whoever finds no write in flight becomes the leader and writes everything queued
in one transaction — per item a conditional ``UPDATE saga_instances … WHERE version AND owner
AND next_seq [AND NOT cancel_requested]`` (the fence), then one multi-row ``INSERT`` of all the
items' events, then one ``COMMIT``. At concurrency 1 the leader writes at once (no added
latency); at concurrency N one commit carries up to N sagas' steps. An item whose fence fails
gets ``ConcurrencyConflict``/``CancelRequested`` without affecting the others; if the batch
insert itself fails (a duplicate ``(saga_id, seq)``), the batch is retried item by item so the
offender alone is refused. No connection is held while the caller awaits anything else.

Driver errors are mapped here, once: integrity → ``ConcurrencyConflict``, anything else from
the database → ``StoreUnavailable`` (retryable; the write's outcome is unknown).
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import itertools
import json
import random
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from engine.adapters.sql_tables import metadata, saga_instances, saga_step_logs
from engine.errors import (
    CancelRequested,
    ConcurrencyConflict,
    SagaError,
    SagaNotFound,
    StoreUnavailable,
)
from engine.history import (
    PARKED,
    TERMINAL_STATUSES,
    Event,
    Projection,
    SagaRecord,
    operator_request,
    plan_action,
)
from engine.listing import SagaCounts, SagaFilter, SagaPosition, order_id_prefix_bounds
from prepared_sql import Prepared, run_together

__all__ = ["SqlHistoryStore"]

_si = saga_instances
_sl = saga_step_logs


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


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
_UPDATES = {
    (hc, fin): Prepared(_update_statement(honour_cancel=hc, finished=fin))
    for hc in (True, False)
    for fin in (True, False)
}
_INSERT_INSTANCE = Prepared(
    sa.insert(_si)
    .prefix_with("IGNORE", dialect="mysql")
    .prefix_with("IGNORE", dialect="mariadb")
    .prefix_with("OR IGNORE", dialect="sqlite")
)
_INSERT_EVENTS = Prepared(sa.insert(_sl))


@dataclasses.dataclass(eq=False)
class _Write:
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
            return _INSERT_INSTANCE, self.instance
        assert self.statement is not None
        assert self.params is not None
        return self.statement, self.params


class SqlHistoryStore:
    """History store on an existing ``AsyncEngine`` (shared with the rest of the process)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._queue: list[_Write] = []
        self._busy = False
        self._batch_done = asyncio.Event()
        self.commits = 0  # write transactions committed (a group commit counts once)
        self.writes = 0  # creates + appends committed (each saga's write counts once)
        self.lock_retries = 0  # group commits run again after a deadlock or lock-wait timeout

    async def create_tables(self) -> None:
        """Create the engine's tables if missing (tests, embedded mode)."""
        async with self._engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    # -- writes (group-committed) -------------------------------------------------------

    async def create(self, record: SagaRecord, events: Sequence[Event]) -> tuple[SagaRecord, bool]:
        now = record.created_at
        write = _Write(
            saga_id=record.saga_id,
            events=events,
            instance={
                "saga_id": record.saga_id,
                "order_id": record.workflow_id,
                "workflow_name": record.workflow_name,
                "status": record.status,
                "current_step": record.current_step,
                "input": _dumps(record.input),
                "result": None,
                "failure_reason": None,
                "owner": record.owner,
                "lease_expires_at": record.lease_expires_at,
                "version": record.version,
                "next_seq": len(events),
                "needs_operator": False,
                "cancel_requested": False,
                "compensation_attempts": 0,
                "created_at": now,
                "updated_at": now,
                "failed_step": None,
                "past_pivot": False,
                "operator_request_id": None,
                "operator_request": None,
            },
        )
        await self._submit(write)
        if write.created:
            return dataclasses.replace(record, next_seq=len(events)), True
        existing = await self.get(record.workflow_id)
        if existing is None:  # the clash was on saga_id, not the business key
            raise ConcurrencyConflict(f"saga {record.saga_id} exists")
        return existing, False

    async def append(
        self,
        saga_id: str,
        events: Sequence[Event],
        *,
        expected_seq: int,
        version: int,
        owner: str,
        projection: Projection,
        honour_cancel: bool = True,
    ) -> None:
        for offset, event in enumerate(events):
            if event.seq != expected_seq + offset:
                raise ConcurrencyConflict(f"event seq {event.seq} != {expected_seq + offset}")
        updated_at = events[-1].created_at if events else None
        write = _Write(
            saga_id=saga_id,
            events=events,
            statement=_UPDATES[(honour_cancel, projection.finished)],
            params={
                "b_saga_id": saga_id,
                "b_version": version,
                "b_owner": owner,
                "b_expected": expected_seq,
                "v_next_seq": expected_seq + len(events),
                "v_status": projection.status,
                "v_current_step": projection.current_step,
                "v_result": None if projection.result is None else _dumps(projection.result),
                "v_failure_reason": projection.failure_reason,
                "v_needs_operator": projection.needs_operator,
                "v_compensation_attempts": projection.compensation_attempts,
                "v_failed_step": projection.failed_step,
                "v_past_pivot": projection.past_pivot,
                "v_updated_at": updated_at,
                "b_handled": projection.handled_request,
            },
        )
        await self._submit(write)

    async def _submit(self, write: _Write) -> None:
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
                        item.done, item.error = True, _map_error(exc)
                if not isinstance(exc, Exception):
                    raise
            finally:
                self._busy = False
                self._batch_done = asyncio.Event()
                batch_done.set()
        if write.error is not None:
            raise write.error

    async def _write_batch(self, batch: list[_Write]) -> None:
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
                    item.done, item.error = True, _map_error(exc)

    async def _write_retrying(self, batch: list[_Write]) -> None:
        """Write ``batch`` in one transaction, again (after its rollback) on a lock conflict.

        Nothing about a batch is recorded until its commit, so running it again is safe.
        """
        for attempt in itertools.count(1):
            try:
                await self._write_together(batch)
                return
            except DBAPIError as exc:
                if attempt >= _LOCK_RETRIES or not _is_lock_conflict(exc):
                    raise
                self.lock_retries += 1
                await asyncio.sleep(random.uniform(0, 0.002 * attempt))

    async def _write_together(self, batch: list[_Write]) -> None:
        rows: list[dict[str, Any]] = []
        outcomes: list[tuple[_Write, bool, BaseException | None]] = []
        async with self._engine.begin() as conn:
            # Every saga's row in one round trip, then its events with the COMMIT in another.
            matched = await run_together(conn, [item.row_write() for item in batch])
            for item, reply in zip(batch, matched, strict=True):
                ok = reply.matched == 1
                error = None if ok or item.instance is not None else await self._why(conn, item)
                outcomes.append((item, ok, error))
                if ok:
                    rows.extend(_event_row(item.saga_id, e) for e in item.events)
            await _INSERT_EVENTS.run_many(conn, rows, commit=True)
        self.commits += 1
        self.writes += len(batch)
        for item, ok, refusal in outcomes:
            item.done = True
            item.created = ok and item.instance is not None
            item.error = refusal

    async def _why(self, conn: AsyncConnection, item: _Write) -> SagaError:
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
            return CancelRequested(item.saga_id, _loads(row.operator_request))
        return ConcurrencyConflict(
            f"saga {item.saga_id}: fenced (append v{p['b_version']}/{p['b_owner']}/seq "
            f"{p['b_expected']}, store v{row.version}/{row.owner}/seq {row.next_seq})"
        )

    # -- reads and lease management -----------------------------------------------------

    async def load(self, saga_id: str) -> tuple[SagaRecord, list[Event]]:
        try:
            async with self._engine.connect() as conn:
                row = (await conn.execute(sa.select(_si).where(_si.c.saga_id == saga_id))).first()
                if row is None:
                    raise SagaNotFound(saga_id)
                events = (
                    await conn.execute(
                        sa.select(_sl).where(_sl.c.saga_id == saga_id).order_by(_sl.c.seq)
                    )
                ).all()
        except DBAPIError as exc:
            raise _map_error(exc) from exc
        return _record(row), [_event(r) for r in events]

    async def get(self, workflow_id: str) -> SagaRecord | None:
        rows = await self._select(sa.select(_si).where(_si.c.order_id == workflow_id))
        return _record(rows[0]) if rows else None

    async def list(
        self,
        where: SagaFilter = SagaFilter(),
        *,
        after: SagaPosition | None = None,
        limit: int = 100,
    ) -> builtins.list[SagaRecord]:
        query = (
            sa.select(_si)
            .where(*_conditions(where, after))
            .order_by(_si.c.created_at.desc(), _si.c.saga_id.desc())
            .limit(limit)
        )
        return [_record(r) for r in await self._select(query)]

    async def counts(self) -> SagaCounts:
        flagged = sa.func.sum(sa.case((_si.c.needs_operator == sa.true(), 1), else_=0))
        query = sa.select(
            _si.c.status, sa.func.count().label("sagas"), flagged.label("flagged")
        ).group_by(_si.c.status)
        rows = await self._select(query)
        return SagaCounts(
            by_status={row.status: int(row.sagas) for row in rows},
            needs_operator=sum(int(row.flagged or 0) for row in rows),
        )

    async def count_needing_operator(self) -> int:
        # A finished saga never carries the flag; its own index keeps the count cheap.
        query = sa.select(sa.func.count()).select_from(_si).where(_si.c.needs_operator == sa.true())
        rows = await self._select(query)
        return int(rows[0][0])

    async def list_claimable(
        self,
        *,
        owner: str,
        now: datetime,
        limit: int,
        workflows: Sequence[str] | None = None,
        known: bool = True,
    ) -> builtins.list[SagaRecord]:
        query = sa.select(_si).where(*_claimable(owner, now))
        if workflows is not None:
            names = sorted(workflows)
            query = query.where(
                _si.c.workflow_name.in_(names) if known else _si.c.workflow_name.not_in(names)
            )
        query = query.order_by(_si.c.lease_expires_at, _si.c.created_at).limit(limit)
        return [_record(r) for r in await self._select(query)]

    async def acquire(
        self, saga_id: str, *, owner: str, expected_version: int, now: datetime, until: datetime
    ) -> int | None:
        # SKIP LOCKED: a row locked by an owner frozen mid-commit is skipped, not waited on
        # (InnoDB would block for innodb_lock_wait_timeout); it is claimed on a later round.
        # SQLite has no row locks and ignores the clause.
        lock = (
            sa.select(_si.c.saga_id)
            .where(_si.c.saga_id == saga_id, _si.c.version == expected_version)
            .with_for_update(skip_locked=True)
        )
        claim = (
            sa.update(_si)
            .where(
                _si.c.saga_id == saga_id,
                _si.c.version == expected_version,
                *_claimable(owner, now),
            )
            .values(owner=owner, version=expected_version + 1, lease_expires_at=until)
        )
        try:
            async with self._engine.begin() as conn:
                if (await conn.execute(lock)).first() is None:
                    return None
                rowcount = (await conn.execute(claim)).rowcount
        except DBAPIError as exc:
            raise _map_error(exc) from exc
        return expected_version + 1 if rowcount == 1 else None

    async def renew(self, *, owner: str, saga_ids: Sequence[str], until: datetime) -> set[str]:
        if not saga_ids:
            return set()
        ids = list(saga_ids)
        try:
            async with self._engine.begin() as conn:
                # Rows our own group commit holds are skipped (not waited on: waiting would
                # deadlock against it); they are renewed on the next round.
                free = (
                    (
                        await conn.execute(
                            sa.select(_si.c.saga_id)
                            .where(_si.c.saga_id.in_(ids), _si.c.owner == owner)
                            .order_by(_si.c.saga_id)
                            .with_for_update(skip_locked=True)
                        )
                    )
                    .scalars()
                    .all()
                )
                if free:
                    await conn.execute(
                        sa.update(_si)
                        .where(_si.c.saga_id.in_(list(free)), _si.c.owner == owner)
                        .values(lease_expires_at=until)
                    )
                kept = await conn.execute(
                    sa.select(_si.c.saga_id).where(_si.c.saga_id.in_(ids), _si.c.owner == owner)
                )
                return {r.saga_id for r in kept}
        except DBAPIError as exc:
            raise _map_error(exc) from exc

    async def release(self, saga_id: str, *, owner: str, version: int) -> None:
        await self._execute(
            sa.update(_si)
            .where(_si.c.saga_id == saga_id, _si.c.owner == owner, _si.c.version == version)
            .values(owner=None, lease_expires_at=None)
        )

    async def request_action(
        self, workflow_id: str, action: str, *, reason: str, now: datetime
    ) -> SagaRecord:
        try:
            async with self._engine.begin() as conn:
                # The row lock orders this against the driver's appends (which lock it too).
                row = (
                    await conn.execute(
                        sa.select(_si).where(_si.c.order_id == workflow_id).with_for_update()
                    )
                ).first()
                if row is None:
                    raise SagaNotFound(workflow_id)
                record = _record(row)
                flag_cancel, leave_request = plan_action(record, action)
                values: dict[str, Any] = {}
                if flag_cancel:
                    values["cancel_requested"] = True
                if leave_request:
                    request = operator_request(action, reason, now)
                    values["operator_request_id"] = request["id"]
                    values["operator_request"] = _dumps(request)
                await conn.execute(
                    sa.update(_si).where(_si.c.saga_id == record.saga_id).values(**values)
                )
        except DBAPIError as exc:
            raise _map_error(exc) from exc
        return await self._get_by_id(record.saga_id)

    async def operator_requests(self, saga_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not saga_ids:
            return {}
        rows = await self._select(
            sa.select(_si.c.saga_id, _si.c.operator_request).where(
                _si.c.saga_id.in_(list(saga_ids)), _si.c.operator_request_id.is_not(None)
            )
        )
        return {r.saga_id: _loads(r.operator_request) for r in rows}

    async def _get_by_id(self, saga_id: str) -> SagaRecord:
        rows = await self._select(sa.select(_si).where(_si.c.saga_id == saga_id))
        if not rows:
            raise SagaNotFound(saga_id)
        return _record(rows[0])

    async def _select(self, query: sa.Select[Any]) -> builtins.list[sa.Row[Any]]:
        try:
            async with self._engine.connect() as conn:
                return list((await conn.execute(query)).all())
        except DBAPIError as exc:
            raise _map_error(exc) from exc

    async def _execute(self, statement: sa.Update) -> int:
        try:
            async with self._engine.begin() as conn:
                return int((await conn.execute(statement)).rowcount)
        except DBAPIError as exc:
            raise _map_error(exc) from exc


def _claimable(owner: str, now: datetime) -> list[sa.ColumnElement[bool]]:
    """Unfinished (or parked with an operator's action waiting), and not leased by another."""
    return [
        sa.or_(
            _si.c.status.not_in(sorted(TERMINAL_STATUSES)),
            sa.and_(_si.c.status == PARKED, _si.c.operator_request_id.is_not(None)),
        ),
        sa.or_(
            _si.c.owner.is_(None),
            _si.c.owner == owner,
            _si.c.lease_expires_at.is_(None),
            _si.c.lease_expires_at < now,
        ),
    ]


_LOCK_RETRIES = 8
_LOCK_CONFLICT_CODES = frozenset({1205, 1213})  # lock-wait timeout, deadlock (MySQL/MariaDB)


def _is_lock_conflict(exc: DBAPIError) -> bool:
    args = getattr(exc.orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0] in _LOCK_CONFLICT_CODES
    return "database is locked" in str(exc.orig)


def _map_error(exc: BaseException) -> BaseException:
    if isinstance(exc, SagaError):
        return exc
    if isinstance(exc, IntegrityError):
        return ConcurrencyConflict(str(exc.orig))
    if isinstance(exc, Exception):
        error = StoreUnavailable(f"history store failed: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return error
    return StoreUnavailable(f"history write interrupted ({type(exc).__name__})")


def _conditions(where: SagaFilter, after: SagaPosition | None) -> builtins.list[Any]:
    """The WHERE clauses of a listing: the filter's, then the keyset's (below ``after``)."""
    conditions: builtins.list[Any] = []
    if where.statuses:
        conditions.append(_si.c.status.in_(sorted(set(where.statuses))))
    if where.needs_operator is not None:
        conditions.append(_si.c.needs_operator == where.needs_operator)
    if where.failed_step is not None:
        conditions.append(_si.c.failed_step == where.failed_step)
    if where.workflow is not None:
        conditions.append(_si.c.workflow_name == where.workflow)
    if where.created_after is not None:
        conditions.append(_si.c.created_at >= where.created_after)
    if where.created_before is not None:
        conditions.append(_si.c.created_at < where.created_before)
    if where.order_id_prefix:
        low, high = order_id_prefix_bounds(where.order_id_prefix)
        conditions.extend((_si.c.order_id >= low, _si.c.order_id < high))
    if after is not None:
        conditions.append(
            sa.or_(
                _si.c.created_at < after.created_at,
                sa.and_(_si.c.created_at == after.created_at, _si.c.saga_id < after.saga_id),
            )
        )
    return conditions


def _event_row(saga_id: str, event: Event) -> dict[str, Any]:
    return {
        "saga_id": saga_id,
        "seq": event.seq,
        "event_type": event.type,
        "position": event.position,
        "step_name": event.step,
        "attempt": event.attempt,
        "payload": _dumps(event.payload) if event.payload else None,
        "owner": event.owner,
        "version": event.version,
        "created_at": event.created_at,
    }


def _event(row: sa.Row[Any]) -> Event:
    return Event(
        seq=row.seq,
        type=row.event_type,
        position=row.position,
        step=row.step_name,
        attempt=row.attempt,
        payload=_loads(row.payload) or {},
        created_at=row.created_at,
        owner=row.owner,
        version=row.version,
    )


def _record(row: sa.Row[Any]) -> SagaRecord:
    return SagaRecord(
        saga_id=row.saga_id,
        workflow_id=row.order_id,
        workflow_name=row.workflow_name,
        status=row.status,
        input=_loads(row.input),
        current_step=row.current_step,
        result=_loads(row.result),
        failure_reason=row.failure_reason,
        owner=row.owner,
        lease_expires_at=row.lease_expires_at,
        version=row.version,
        next_seq=row.next_seq,
        needs_operator=bool(row.needs_operator),
        cancel_requested=bool(row.cancel_requested),
        compensation_attempts=row.compensation_attempts,
        created_at=row.created_at,
        updated_at=row.updated_at,
        failed_step=row.failed_step,
        past_pivot=bool(row.past_pivot),
        operator_request=_loads(row.operator_request),
    )
