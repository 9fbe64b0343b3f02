"""CloudMart's durable workflow engine: sagas as plain async functions, replayed from history.

Design
======

*Workflows* are ``@workflow`` async functions ``(ctx, input)``. They touch the world only through
``ctx.step("service.method", payload, compensate="service.undo", milestone=...)``, ``ctx.now()``,
``ctx.uuid()`` and ``ctx.sleep()``. Each such call takes the next *position*; history events carry
it, and replay answers a recorded position from history (result returned, error re-raised,
nothing sent, nothing logged). A position whose recorded command differs from the one the code
asks for parks the saga (status ``PARKED``, ``needs_operator``, the ``NondeterminismError`` text
as ``failure_reason``): never guessed at.

*History* (``saga_step_logs``) is append-only, keyed ``(saga_id, seq)``; ``saga_instances`` is
its projection (status, current step, failure reason, operator flag, lease), rewritten by the
same transaction as each append. Events: WorkflowStarted, StepScheduled, StepCompleted,
StepRetrying / StepTimedOut (an attempt failed; a retry follows at ``retry_at``), StepFailed
(final; ``took_effect`` says whether the step may have happened), MarkerRecorded, TimerStarted /
TimerFired, CancelRequested, CompensationStarted, CompensationScheduled, CompensationRetrying,
CompensationCompleted, WorkflowCompleted, WorkflowFailed, WorkflowParked.

*Commits*: decisions are buffered and written when the world is about to see something.
``StepScheduled(k)`` is written, together with ``StepCompleted(k-1)`` and the new status, in one
commit right before command ``k`` leaves; the last ``StepCompleted`` goes with
``WorkflowCompleted``. A saga of N steps costs N + 2 commits: start, one per step, finish.
The compensation is registered (recorded in ``StepScheduled``) before the command is sent, so a
step whose reply is lost is compensated. On recovery a step with a recorded outcome is never
re-sent; a step scheduled without an outcome is re-sent with the same idempotency key
``f"{workflow_id}:{method}"``. The SQL store *group-commits*: appends from concurrent sagas
queue up while a write is in flight and the next leader writes them all in one transaction
(one fenced ``UPDATE`` per saga, one multi-row ``INSERT``, one ``COMMIT``).

*Failure*: business errors (wire ``non_retryable``) are not retried and mean "did not take
effect"; transport errors and timeouts are retried per ``RetryPolicy``, and when they run out
the step counts as possibly effected. The body sees :class:`~engine.errors.StepFailed`; if it
does not handle it, the compensations of every completed or possibly completed step run in
reverse order, each retried with capped backoff until it succeeds (``AlreadyCompensated``
counts as success); past ``compensation_alert_attempts`` the saga is flagged
``needs_operator``. ``FAILED`` is written only after the last compensation. A cancel is a flag on
``saga_instances`` that the fenced append refuses, so it is seen at the next step boundary at no
cost on the hot path; a saga deadline is checked at each boundary and caps step timeouts.

*Ownership*: a saga is driven only under a lease (``owner``, ``lease_expires_at``) with a fencing
``version`` bumped on every acquisition; every append is conditional on (version, owner,
next_seq), so a stale owner's writes are refused and it stops. The background loop renews the
leases of running sagas and claims unowned or expired ones.

Public surface: :func:`workflow`, :class:`WorkflowContext`, :class:`RetryPolicy`,
:class:`Engine` (+ the result types it returns). Ports in :mod:`engine.ports`, adapters in
:mod:`engine.adapters`, errors in :mod:`engine.errors`, clocks in :mod:`engine.clock`.
"""

from __future__ import annotations

from engine.api import Engine, SagaHandle, SagaStatus, StepStatus
from engine.observer import EngineCounters
from engine.workflow import Activity, RetryPolicy, WorkflowContext, workflow

__all__ = [
    "Activity",
    "Engine",
    "EngineCounters",
    "RetryPolicy",
    "SagaHandle",
    "SagaStatus",
    "StepStatus",
    "WorkflowContext",
    "workflow",
]
