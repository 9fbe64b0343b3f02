"""History events and the saga projection record.

A saga's history is an append-only list of :class:`Event` keyed ``(saga_id, seq)``; ``seq``
counts from 0 and has no gaps. ``position`` is the deterministic command counter of the workflow
body (the n-th ``ctx.step`` / ``ctx.now`` / ``ctx.uuid`` / ``ctx.sleep`` call): replay matches
recorded events to the body's calls by position, and a kind or name mismatch at one position is
nondeterminism. Compensation events carry the position of the forward step they undo.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

__all__ = [
    "ACTIVE_STATUSES",
    "TERMINAL_STATUSES",
    "Event",
    "EventType",
    "Projection",
    "SagaRecord",
]


class EventType:
    """Event type names, stored verbatim in ``saga_step_logs.event_type``."""

    WORKFLOW_STARTED = "WorkflowStarted"
    STEP_SCHEDULED = "StepScheduled"
    STEP_COMPLETED = "StepCompleted"
    STEP_RETRYING = "StepRetrying"  # an attempt failed transiently; a retry follows
    STEP_TIMED_OUT = "StepTimedOut"  # an attempt got no reply in time; a retry follows
    STEP_FAILED = "StepFailed"  # final: business refusal or retries exhausted
    MARKER = "MarkerRecorded"  # ctx.now() / ctx.uuid() value
    TIMER_STARTED = "TimerStarted"
    TIMER_FIRED = "TimerFired"
    CANCEL_REQUESTED = "CancelRequested"
    COMPENSATION_STARTED = "CompensationStarted"
    COMPENSATION_SCHEDULED = "CompensationScheduled"
    COMPENSATION_RETRYING = "CompensationRetrying"
    COMPENSATION_COMPLETED = "CompensationCompleted"
    WORKFLOW_COMPLETED = "WorkflowCompleted"
    WORKFLOW_FAILED = "WorkflowFailed"
    WORKFLOW_PARKED = "WorkflowParked"  # nondeterminism: waits for an operator


STARTED = "STARTED"
COMPLETED = "COMPLETED"
COMPENSATION_STARTED = "COMPENSATION_STARTED"
FAILED = "FAILED"
PARKED = "PARKED"
TERMINAL_STATUSES = frozenset({COMPLETED, FAILED, PARKED})
ACTIVE_STATUSES = frozenset({STARTED, COMPENSATION_STARTED})  # plus any milestone


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One history row. ``payload`` is JSON-serialisable."""

    seq: int
    type: str
    position: int | None = None
    step: str | None = None
    attempt: int = 0
    payload: dict[str, Any] = dataclasses.field(default_factory=dict)
    created_at: datetime | None = None
    owner: str | None = None
    version: int = 0


@dataclasses.dataclass(slots=True)
class Projection:
    """The mutable columns of ``saga_instances`` an append rewrites (all of them, every time)."""

    status: str = STARTED
    current_step: str | None = None
    result: Any = None
    failure_reason: str | None = None
    needs_operator: bool = False
    compensation_attempts: int = 0
    finished: bool = False  # the append ends the saga: the lease is released with it


@dataclasses.dataclass(frozen=True, slots=True)
class SagaRecord:
    """One ``saga_instances`` row."""

    saga_id: str
    workflow_id: str
    workflow_name: str
    status: str
    input: Any
    current_step: str | None = None
    result: Any = None
    failure_reason: str | None = None
    owner: str | None = None
    lease_expires_at: datetime | None = None
    version: int = 0
    next_seq: int = 0
    needs_operator: bool = False
    cancel_requested: bool = False
    compensation_attempts: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES
