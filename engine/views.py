"""What the engine answers about a saga: :class:`SagaHandle` from ``start``, :class:`SagaStatus`
(with a :class:`StepStatus` per step) from ``status``, ``wait`` and ``list``, and
:func:`saga_status`, the projection of a row and its history into them.
"""

from __future__ import annotations

import builtins
import dataclasses
from datetime import datetime
from typing import Any

from engine.history import Event, EventType, SagaRecord

__all__ = ["SagaHandle", "SagaStatus", "StepStatus", "saga_status"]

ET = EventType


@dataclasses.dataclass(frozen=True)
class SagaHandle:
    """What ``start`` returns: the saga's ids, its status then, and whether this call made it."""

    saga_id: str
    workflow_id: str
    status: str
    created: bool  # False: the workflow_id was already started with the same input


@dataclasses.dataclass(frozen=True)
class StepStatus:
    """One step of a saga as its history tells it: state, attempts, times, error, compensation."""

    name: str
    state: str  # SCHEDULED, RETRYING, COMPLETED, FAILED, COMPENSATING, COMPENSATED
    attempts: int
    scheduled_at: datetime | None
    finished_at: datetime | None
    last_error: dict[str, Any] | None
    compensation: str | None
    compensation_attempts: int


@dataclasses.dataclass(frozen=True)
class SagaStatus:
    """What ``status``, ``wait`` and ``list`` answer: the saga's row and, from status, its steps."""

    saga_id: str
    workflow_id: str
    workflow_name: str
    status: str
    failure_reason: str | None
    needs_operator: bool
    cancel_requested: bool
    compensation_attempts: int
    failed_step: str | None
    past_pivot: bool
    result: Any
    created_at: datetime | None
    updated_at: datetime | None
    steps: tuple[StepStatus, ...] = ()


def saga_status(record: SagaRecord, events: builtins.list[Event] | None) -> SagaStatus:
    steps: builtins.list[StepStatus] = []
    if events is not None:
        by_pos: dict[int, list[Event]] = {}
        for event in events:
            if event.position is not None:
                by_pos.setdefault(event.position, []).append(event)
        for position in sorted(by_pos):
            group = by_pos[position]
            if group[0].type != ET.STEP_SCHEDULED:
                continue
            steps.append(_step_status(group))
    return SagaStatus(
        saga_id=record.saga_id,
        workflow_id=record.workflow_id,
        workflow_name=record.workflow_name,
        status=record.status,
        failure_reason=record.failure_reason,
        needs_operator=record.needs_operator,
        cancel_requested=record.cancel_requested,
        compensation_attempts=record.compensation_attempts,
        failed_step=record.failed_step,
        past_pivot=record.past_pivot,
        result=record.result,
        created_at=record.created_at,
        updated_at=record.updated_at,
        steps=tuple(steps),
    )


def _step_status(group: builtins.list[Event]) -> StepStatus:
    first = group[0]
    state, attempts, finished, last_error = "SCHEDULED", first.attempt, None, None
    comp_info = first.payload.get("compensation") or {}
    comp_attempts = 0
    for event in group:
        if event.type in (ET.STEP_RETRYING, ET.STEP_TIMED_OUT):
            state, last_error = "RETRYING", event.payload.get("error")
            attempts = max(attempts, event.attempt + 1)
        elif event.type == ET.STEP_COMPLETED:
            state, finished = "COMPLETED", event.created_at
            attempts = max(attempts, event.attempt)
        elif event.type == ET.STEP_FAILED:
            state, finished, last_error = "FAILED", event.created_at, event.payload.get("error")
            attempts = max(attempts, event.attempt)
        elif event.type == ET.COMPENSATION_SCHEDULED:
            state = "COMPENSATING"
            comp_attempts = max(comp_attempts, 1)
        elif event.type == ET.COMPENSATION_RETRYING:
            last_error = event.payload.get("error")
            comp_attempts = max(comp_attempts, event.attempt + 1)
        elif event.type == ET.COMPENSATION_COMPLETED:
            state, finished = "COMPENSATED", event.created_at
            comp_attempts = max(comp_attempts, event.attempt)
    return StepStatus(
        name=first.step or "",
        state=state,
        attempts=attempts,
        scheduled_at=first.created_at,
        finished_at=finished,
        last_error=last_error,
        compensation=comp_info.get("target"),
        compensation_attempts=comp_attempts,
    )
