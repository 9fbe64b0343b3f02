"""How the SQL history store's rows are read and written (private): JSON columns, an event's
row and back, a saga's record, the WHERE clauses of a listing and of a claim, and the one
mapping of driver errors (integrity → ``ConcurrencyConflict``, anything else from the database
→ ``StoreUnavailable``)."""

from __future__ import annotations

import builtins
import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from engine.adapters.sql_tables import saga_instances
from engine.errors import ConcurrencyConflict, SagaError, StoreUnavailable
from engine.history import PARKED, TERMINAL_STATUSES, Event, SagaRecord
from engine.listing import SagaFilter, SagaPosition, order_id_prefix_bounds

__all__ = [
    "claimable",
    "conditions",
    "dumps",
    "event_of",
    "event_row",
    "loads",
    "map_error",
    "record_of",
]

_si = saga_instances


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def map_error(exc: BaseException) -> BaseException:
    if isinstance(exc, SagaError):
        return exc
    if isinstance(exc, IntegrityError):
        return ConcurrencyConflict(str(exc.orig))
    if isinstance(exc, Exception):
        error = StoreUnavailable(f"history store failed: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        return error
    return StoreUnavailable(f"history write interrupted ({type(exc).__name__})")


def claimable(owner: str, now: datetime) -> list[sa.ColumnElement[bool]]:
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


def conditions(where: SagaFilter, after: SagaPosition | None) -> builtins.list[Any]:
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


def event_row(saga_id: str, event: Event) -> dict[str, Any]:
    return {
        "saga_id": saga_id,
        "seq": event.seq,
        "event_type": event.type,
        "position": event.position,
        "step_name": event.step,
        "attempt": event.attempt,
        "payload": dumps(event.payload) if event.payload else None,
        "owner": event.owner,
        "version": event.version,
        "created_at": event.created_at,
    }


def event_of(row: Any) -> Event:
    """The event of a ``saga_step_logs`` row (anything with its columns as attributes)."""
    return Event(
        seq=row.seq,
        type=row.event_type,
        position=row.position,
        step=row.step_name,
        attempt=row.attempt,
        payload=loads(row.payload) or {},
        created_at=row.created_at,
        owner=row.owner,
        version=row.version,
    )


def record_of(row: Any) -> SagaRecord:
    """The record of a ``saga_instances`` row (anything with its columns as attributes)."""
    return SagaRecord(
        saga_id=row.saga_id,
        workflow_id=row.order_id,
        workflow_name=row.workflow_name,
        status=row.status,
        input=loads(row.input),
        current_step=row.current_step,
        result=loads(row.result),
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
        operator_request=loads(row.operator_request),
    )
