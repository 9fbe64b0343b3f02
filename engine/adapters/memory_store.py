"""An in-memory :class:`~engine.ports.HistoryStore` that obeys the SQL store's contract."""

from __future__ import annotations

import builtins
import copy
import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from engine.errors import (
    CancelRequested,
    ConcurrencyConflict,
    SagaNotFound,
)
from engine.history import (
    Event,
    Projection,
    SagaRecord,
    operator_request,
    plan_action,
)
from engine.listing import SagaCounts, SagaFilter, SagaPosition

__all__ = ["InMemoryHistoryStore"]


class InMemoryHistoryStore:
    """Dicts behind the same checks as the SQL store.

    ``after_commit`` (tests): called with the saga id and the events after every successful
    create/append; raising from it simulates a crash after the write became durable.
    ``before_commit`` is called before every write; raising from it fails the write (nothing
    stored). ``commits`` counts successful writes.
    """

    def __init__(
        self,
        *,
        after_commit: Callable[[str, Sequence[Event]], None] | None = None,
        before_commit: Callable[[str, Sequence[Event]], None] | None = None,
    ) -> None:
        self._rows: dict[str, SagaRecord] = {}
        self._by_workflow: dict[str, str] = {}
        self._events: dict[str, list[Event]] = {}
        self.after_commit = after_commit
        self.before_commit = before_commit
        self.commits = 0

    async def create(self, record: SagaRecord, events: Sequence[Event]) -> tuple[SagaRecord, bool]:
        existing = self._by_workflow.get(record.workflow_id)
        if existing is not None:
            return self._rows[existing], False
        if record.saga_id in self._rows:
            raise ConcurrencyConflict(f"saga {record.saga_id} exists")
        _check_seq(events, 0)
        if self.before_commit is not None:
            self.before_commit(record.saga_id, events)
        self._rows[record.saga_id] = dataclasses.replace(record, next_seq=len(events))
        self._by_workflow[record.workflow_id] = record.saga_id
        self._events[record.saga_id] = [copy.deepcopy(e) for e in events]
        self._committed(record.saga_id, events)
        return self._rows[record.saga_id], True

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
        row = self._rows.get(saga_id)
        if row is None:
            raise SagaNotFound(saga_id)
        if row.version != version or row.owner != owner:
            raise ConcurrencyConflict(
                f"saga {saga_id}: fenced (version {version}/{owner}, store has "
                f"{row.version}/{row.owner})"
            )
        if row.next_seq != expected_seq:
            raise ConcurrencyConflict(f"saga {saga_id}: seq {expected_seq} taken")
        if honour_cancel and row.cancel_requested:
            raise CancelRequested(saga_id, copy.deepcopy(row.operator_request))
        _check_seq(events, expected_seq)
        if self.before_commit is not None:
            self.before_commit(saga_id, events)
        now = events[-1].created_at if events else row.updated_at
        pending = row.operator_request
        answered = pending is not None and pending["id"] == projection.handled_request
        self._rows[saga_id] = dataclasses.replace(
            row,
            next_seq=expected_seq + len(events),
            status=projection.status,
            current_step=projection.current_step,
            result=copy.deepcopy(projection.result),
            failure_reason=projection.failure_reason,
            needs_operator=projection.needs_operator,
            compensation_attempts=projection.compensation_attempts,
            failed_step=projection.failed_step,
            past_pivot=projection.past_pivot,
            operator_request=None if answered else row.operator_request,
            updated_at=now,
            owner=None if projection.finished else row.owner,
            lease_expires_at=None if projection.finished else row.lease_expires_at,
        )
        self._events[saga_id].extend(copy.deepcopy(e) for e in events)
        self._committed(saga_id, events)

    async def load(self, saga_id: str) -> tuple[SagaRecord, list[Event]]:
        row = self._rows.get(saga_id)
        if row is None:
            raise SagaNotFound(saga_id)
        return row, [copy.deepcopy(e) for e in self._events[saga_id]]

    async def get(self, workflow_id: str) -> SagaRecord | None:
        saga_id = self._by_workflow.get(workflow_id)
        return None if saga_id is None else self._rows[saga_id]

    async def list(
        self,
        where: SagaFilter = SagaFilter(),
        *,
        after: SagaPosition | None = None,
        limit: int = 100,
    ) -> builtins.list[SagaRecord]:
        rows = [
            r
            for r in self._rows.values()
            if _matches(r, where) and (after is None or _position(r) < after)
        ]
        rows.sort(key=_position, reverse=True)
        return rows[:limit]

    async def counts(self) -> SagaCounts:
        by_status = Counter(r.status for r in self._rows.values())
        flagged = sum(r.needs_operator for r in self._rows.values())
        return SagaCounts(by_status=dict(by_status), needs_operator=flagged)

    async def count_needing_operator(self) -> int:
        return sum(r.needs_operator for r in self._rows.values())

    async def list_claimable(
        self,
        *,
        owner: str,
        now: datetime,
        limit: int,
        workflows: Sequence[str] | None = None,
        known: bool = True,
    ) -> builtins.list[SagaRecord]:
        rows = [
            r
            for r in self._rows.values()
            if _claimable(r, owner, now)
            and (workflows is None or (r.workflow_name in workflows) == known)
        ]
        rows.sort(key=lambda r: (r.lease_expires_at or datetime.min, r.created_at or datetime.min))
        return rows[:limit]

    async def acquire(
        self, saga_id: str, *, owner: str, expected_version: int, now: datetime, until: datetime
    ) -> int | None:
        row = self._rows.get(saga_id)
        if row is None or row.version != expected_version:
            return None
        if not _claimable(row, owner, now):
            return None
        self._rows[saga_id] = dataclasses.replace(
            row, owner=owner, version=row.version + 1, lease_expires_at=until
        )
        return row.version + 1

    async def renew(self, *, owner: str, saga_ids: Sequence[str], until: datetime) -> set[str]:
        kept = set()
        for saga_id in saga_ids:
            row = self._rows.get(saga_id)
            if row is not None and row.owner == owner:
                self._rows[saga_id] = dataclasses.replace(row, lease_expires_at=until)
                kept.add(saga_id)
        return kept

    async def release(self, saga_id: str, *, owner: str, version: int) -> None:
        row = self._rows.get(saga_id)
        if row is not None and row.owner == owner and row.version == version:
            self._rows[saga_id] = dataclasses.replace(row, owner=None, lease_expires_at=None)

    async def request_action(
        self, workflow_id: str, action: str, *, reason: str, now: datetime
    ) -> SagaRecord:
        saga_id = self._by_workflow.get(workflow_id)
        if saga_id is None:
            raise SagaNotFound(workflow_id)
        row = self._rows[saga_id]
        flag_cancel, leave_request = plan_action(row, action)
        if flag_cancel:
            row = dataclasses.replace(row, cancel_requested=True)
        if leave_request:
            row = dataclasses.replace(row, operator_request=operator_request(action, reason, now))
        self._rows[saga_id] = row
        return row

    async def operator_requests(self, saga_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        requests = {}
        for saga_id in saga_ids:
            row = self._rows.get(saga_id)
            if row is not None and row.operator_request is not None:
                requests[saga_id] = copy.deepcopy(row.operator_request)
        return requests

    def _committed(self, saga_id: str, events: Sequence[Event]) -> None:
        self.commits += 1
        if self.after_commit is not None:
            self.after_commit(saga_id, events)


def _position(row: SagaRecord) -> SagaPosition:
    return SagaPosition(row.created_at or datetime.min, row.saga_id)


def _matches(row: SagaRecord, where: SagaFilter) -> bool:
    """The SQL store's WHERE clause, in Python (``created_at`` half-open, prefix exact)."""
    created = row.created_at or datetime.min
    return (
        (not where.statuses or row.status in where.statuses)
        and (where.needs_operator is None or row.needs_operator == where.needs_operator)
        and (where.failed_step is None or row.failed_step == where.failed_step)
        and (where.workflow is None or row.workflow_name == where.workflow)
        and (where.created_after is None or created >= where.created_after)
        and (where.created_before is None or created < where.created_before)
        and (not where.order_id_prefix or row.workflow_id.startswith(where.order_id_prefix))
    )


def _claimable(row: SagaRecord, owner: str, now: datetime) -> bool:
    return row.claimable and (
        row.owner is None
        or row.owner == owner
        or row.lease_expires_at is None
        or row.lease_expires_at < now
    )


def _check_seq(events: Sequence[Event], first: int) -> None:
    for offset, event in enumerate(events):
        if event.seq != first + offset:
            raise ConcurrencyConflict(f"event seq {event.seq} != expected {first + offset}")
