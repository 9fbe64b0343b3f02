"""History events and the saga projection record.

A saga's history is an append-only list of :class:`Event` keyed ``(saga_id, seq)``; ``seq``
counts from 0 and has no gaps. ``position`` is the deterministic command counter of the workflow
body (the n-th ``ctx.step`` / ``ctx.now`` / ``ctx.uuid`` / ``ctx.sleep`` call): replay matches
recorded events to the body's calls by position, and a kind or name mismatch at one position is
nondeterminism. Compensation events carry the position of the forward step they undo.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime
from typing import Any

from engine.errors import ActionRefused, SagaAlreadyFinished

__all__ = [
    "ACTIONS",
    "ACTIVE_STATUSES",
    "TERMINAL_STATUSES",
    "Event",
    "EventType",
    "Projection",
    "SagaRecord",
    "operator_request",
    "plan_action",
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
    WORKFLOW_PARKED = "WorkflowParked"  # nondeterminism or unknown workflow: waits for an operator
    OPERATOR_ACTION = "OperatorAction"  # retry / resume / compensate / cancel, with its reason


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
    failed_step: str | None = None  # the step whose failure made the saga compensate
    past_pivot: bool = False  # the pivot step completed: from here on, only forward
    handled_request: str | None = None  # the operator request this append answers (cleared)
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
    failed_step: str | None = None
    past_pivot: bool = False
    # An operator's action waiting for the saga's driver: {"id", "action", "reason", "at"}.
    operator_request: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def claimable(self) -> bool:
        """Whether a worker should drive it: unfinished, or parked with an operator's action
        waiting."""
        return not self.finished or (self.status == PARKED and self.operator_request is not None)


CANCEL, RETRY, RESUME, COMPENSATE = "cancel", "retry", "resume", "compensate"
ACTIONS = (CANCEL, RETRY, RESUME, COMPENSATE)


def plan_action(record: SagaRecord, action: str) -> tuple[bool, bool]:
    """What an operator's ``action`` writes on ``record``'s row, or why it cannot apply.

    Returns ``(flag_cancel, leave_request)``: whether to set ``cancel_requested`` (the run stops
    at its next write and compensates) and whether to leave the action for the saga's driver
    (who records it in the history and acts on it). Raises
    :class:`~engine.errors.ActionRefused` (``SagaAlreadyFinished`` for a finished saga). One
    rule for every store, so that each checks it in the transaction that writes the request:

    - nothing applies to a ``COMPLETED`` or ``FAILED`` saga;
    - ``resume`` applies to a ``PARKED`` saga only, ``retry`` to a running one only;
    - ``cancel`` and ``compensate`` are refused once the saga is past its pivot, and
      ``compensate`` while it already compensates; on a parked saga both are left for a
      driver to carry out.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown operator action {action!r}")
    status = record.status
    if status in (COMPLETED, FAILED):
        raise SagaAlreadyFinished(f"saga {record.workflow_id} is {status}", status=status)
    parked = status == PARKED
    if action == RESUME:
        if not parked:
            raise ActionRefused(f"only a {PARKED} saga can be resumed", status=status)
        return False, True
    if action == RETRY:
        if parked:
            raise ActionRefused(f"a {PARKED} saga is resumed, not retried", status=status)
        if record.cancel_requested:
            raise ActionRefused("the saga is already asked to compensate", status=status)
        return False, True
    if record.past_pivot:
        raise ActionRefused(
            f"the saga is past its pivot: it can only go forward ({action} refused)",
            status=status,
        )
    if parked:
        return False, True
    if action == COMPENSATE:
        if status == COMPENSATION_STARTED:
            raise ActionRefused("the saga is already compensating", status=status)
        return True, True
    return True, False


def operator_request(action: str, reason: str, now: datetime) -> dict[str, Any]:
    """An operator's action as it waits on the saga's row for its driver."""
    return {"id": str(uuid.uuid4()), "action": action, "reason": reason, "at": now.isoformat()}
