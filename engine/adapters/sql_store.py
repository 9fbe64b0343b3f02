"""The SQL :class:`~engine.ports.HistoryStore`: SQLAlchemy Core over MySQL/MariaDB or SQLite.

Writes (saga creation and history appends) go through a *group commit*: concurrent callers queue
their write; whoever finds no write in flight becomes the leader and writes everything queued
in one transaction — per item a conditional ``UPDATE saga_instances … WHERE version AND owner
AND next_seq [AND NOT cancel_requested]`` (the fence), then one multi-row ``INSERT`` of all the
items' events, then one ``COMMIT``, on MySQL/MariaDB all in one packet (one round trip) as
long as every fence holds. At concurrency 1 the leader writes at once (no added latency); at
concurrency N one commit carries up to N sagas' steps. An item whose fence fails
gets ``ConcurrencyConflict``/``CancelRequested`` without affecting the others; if the batch
insert itself fails (a duplicate ``(saga_id, seq)``), the batch is retried item by item so the
offender alone is refused. No connection is held while the caller awaits anything else.

The group commit is :mod:`engine.adapters._group_commit`, the rows and the WHERE clauses
:mod:`engine.adapters._sql_rows`. Driver errors are mapped there, once: integrity →
``ConcurrencyConflict``, anything else from the database → ``StoreUnavailable`` (retryable;
the write's outcome is unknown).
"""

from __future__ import annotations

import builtins
import collections
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from engine.adapters._group_commit import UPDATES, GroupCommit, Write
from engine.adapters._sql_rows import (
    claimable,
    conditions,
    dumps,
    event_of,
    loads,
    map_error,
    record_of,
)
from engine.adapters.sql_tables import metadata, saga_instances, saga_step_logs
from engine.errors import ConcurrencyConflict, SagaNotFound
from engine.history import Event, Projection, SagaRecord, operator_request, plan_action
from engine.listing import SagaCounts, SagaFilter, SagaPosition
from prepared_sql import Prepared, run_together

__all__ = ["SqlHistoryStore"]

T = TypeVar("T")

_si = saga_instances
_sl = saga_step_logs


class SqlHistoryStore:
    """History store on an existing ``AsyncEngine`` (shared with the rest of the process)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._writer = GroupCommit(engine)

    @property
    def commits(self) -> int:
        """Write transactions committed (a group commit counts once)."""
        return self._writer.commits

    @property
    def writes(self) -> int:
        """Creates and appends committed (each saga's write counts once)."""
        return self._writer.writes

    @property
    def lock_retries(self) -> int:
        """Group commits run again after a deadlock or lock-wait timeout."""
        return self._writer.lock_retries

    async def create_tables(self) -> None:
        """Create the engine's tables if missing (tests, embedded mode)."""
        async with self._engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    # -- writes (group-committed) -------------------------------------------------------

    async def create(self, record: SagaRecord, events: Sequence[Event]) -> tuple[SagaRecord, bool]:
        now = record.created_at
        write = Write(
            saga_id=record.saga_id,
            events=events,
            instance={
                "saga_id": record.saga_id,
                "order_id": record.workflow_id,
                "workflow_name": record.workflow_name,
                "status": record.status,
                "current_step": record.current_step,
                "input": dumps(record.input),
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
        await self._writer.submit(write)
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
        write = Write(
            saga_id=saga_id,
            events=events,
            statement=UPDATES[(honour_cancel, projection.finished)],
            params={
                "b_saga_id": saga_id,
                "b_version": version,
                "b_owner": owner,
                "b_expected": expected_seq,
                "v_next_seq": expected_seq + len(events),
                "v_status": projection.status,
                "v_current_step": projection.current_step,
                "v_result": None if projection.result is None else dumps(projection.result),
                "v_failure_reason": projection.failure_reason,
                "v_needs_operator": projection.needs_operator,
                "v_compensation_attempts": projection.compensation_attempts,
                "v_failed_step": projection.failed_step,
                "v_past_pivot": projection.past_pivot,
                "v_updated_at": updated_at,
                "b_handled": projection.handled_request,
            },
        )
        await self._writer.submit(write)

    # -- reads and lease management -----------------------------------------------------

    async def load(self, saga_id: str) -> tuple[SagaRecord, list[Event]]:
        # Both reads in one packet (one round trip on MySQL/MariaDB), on statements compiled
        # once: a status read of a running saga comes this way.
        params = {"saga_id": saga_id}
        row, events = await self._read(
            lambda conn: run_together(conn, [(_LOAD_RECORD, params), (_LOAD_EVENTS, params)])
        )
        if not row.rows:
            raise SagaNotFound(saga_id)
        return record_of(_SagaRow(*row.rows[0])), [event_of(_EventRow(*r)) for r in events.rows]

    async def get(self, workflow_id: str) -> SagaRecord | None:
        rows = await self._read(lambda conn: _GET_RECORD.rows(conn, {"order_id": workflow_id}))
        return record_of(_SagaRow(*rows[0])) if rows else None

    async def list(
        self,
        where: SagaFilter = SagaFilter(),
        *,
        after: SagaPosition | None = None,
        limit: int = 100,
    ) -> builtins.list[SagaRecord]:
        query = (
            sa.select(_si)
            .where(*conditions(where, after))
            .order_by(_si.c.created_at.desc(), _si.c.saga_id.desc())
            .limit(limit)
        )
        return [record_of(r) for r in await self._select(query)]

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
        query = sa.select(_si).where(*claimable(owner, now))
        if workflows is not None:
            names = sorted(workflows)
            query = query.where(
                _si.c.workflow_name.in_(names) if known else _si.c.workflow_name.not_in(names)
            )
        query = query.order_by(_si.c.lease_expires_at, _si.c.created_at).limit(limit)
        return [record_of(r) for r in await self._select(query)]

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
                *claimable(owner, now),
            )
            .values(owner=owner, version=expected_version + 1, lease_expires_at=until)
        )
        try:
            async with self._engine.begin() as conn:
                if (await conn.execute(lock)).first() is None:
                    return None
                rowcount = (await conn.execute(claim)).rowcount
        except DBAPIError as exc:
            raise map_error(exc) from exc
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
            raise map_error(exc) from exc

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
                record = record_of(row)
                flag_cancel, leave_request = plan_action(record, action)
                values: dict[str, Any] = {}
                if flag_cancel:
                    values["cancel_requested"] = True
                if leave_request:
                    request = operator_request(action, reason, now)
                    values["operator_request_id"] = request["id"]
                    values["operator_request"] = dumps(request)
                await conn.execute(
                    sa.update(_si).where(_si.c.saga_id == record.saga_id).values(**values)
                )
        except DBAPIError as exc:
            raise map_error(exc) from exc
        return await self._get_by_id(record.saga_id)

    async def operator_requests(self, saga_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        if not saga_ids:
            return {}
        rows = await self._select(
            sa.select(_si.c.saga_id, _si.c.operator_request).where(
                _si.c.saga_id.in_(list(saga_ids)), _si.c.operator_request_id.is_not(None)
            )
        )
        return {r.saga_id: loads(r.operator_request) for r in rows}

    async def _get_by_id(self, saga_id: str) -> SagaRecord:
        rows = await self._select(sa.select(_si).where(_si.c.saga_id == saga_id))
        if not rows:
            raise SagaNotFound(saga_id)
        return record_of(rows[0])

    async def _select(self, query: sa.Select[Any]) -> builtins.list[sa.Row[Any]]:
        async def rows(conn: AsyncConnection) -> builtins.list[sa.Row[Any]]:
            return list((await conn.execute(query)).all())

        return await self._read(rows)

    async def _read(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """``work`` on a connection outside a transaction; a driver error mapped as every
        store call maps it."""
        try:
            async with self._engine.connect() as conn:
                return await work(conn)
        except DBAPIError as exc:
            raise map_error(exc) from exc

    async def _execute(self, statement: sa.Update) -> int:
        try:
            async with self._engine.begin() as conn:
                return int((await conn.execute(statement)).rowcount)
        except DBAPIError as exc:
            raise map_error(exc) from exc


# The reads of a status, compiled once; their rows as the columns' named tuples.
_LOAD_RECORD = Prepared(sa.select(_si).where(_si.c.saga_id == sa.bindparam("saga_id")))
_GET_RECORD = Prepared(sa.select(_si).where(_si.c.order_id == sa.bindparam("order_id")))
_LOAD_EVENTS = Prepared(
    sa.select(_sl).where(_sl.c.saga_id == sa.bindparam("saga_id")).order_by(_sl.c.seq)
)
_SagaRow = collections.namedtuple("_SagaRow", [c.name for c in _si.columns])  # type: ignore[misc]
_EventRow = collections.namedtuple("_EventRow", [c.name for c in _sl.columns])  # type: ignore[misc]
