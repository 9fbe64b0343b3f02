"""CloudMart's durable workflow engine: sagas as plain async functions, replayed from history.

Design
======

*Workflows* are ``@workflow`` async functions ``(ctx, command)``. They touch the world only
through ``ctx.step(ACTIVITY, Command(...))`` (an :class:`Activity` names the operation, its result
model, its compensation and milestone; ``ctx.step("service.method", payload, compensate=...,
milestone=...)`` is the same by name, for workflows built from data), ``ctx.now()``,
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

Modules
=======

=========================  ====================================================================
:mod:`engine.workflow`     what workflow authors use: ``workflow``, ``WorkflowContext``,
                           ``RetryPolicy``, ``Activity`` (no I/O)
:mod:`engine.api`          :class:`Engine`, the client half: start, cancel, status, wait,
                           history, list; it drives sagas through its worker
:mod:`engine.worker`       the worker half: recovery, leases and their renewal, the background
                           loop, admission control (``max_running``), through:
``engine._admission``      the sagas that wait for a slot, oldest first, and the task that drives
                           them as slots free up
:mod:`engine.replay`       a recorded history replayed offline against today's workflow code
:mod:`engine.listing`      listing and counting sagas: ``SagaFilter``, keyset pages, cursors
:mod:`engine.views`        what it answers: ``SagaHandle``, ``SagaStatus``, ``StepStatus``
``engine._runtime``        the replay of one saga under one lease (private), working through:
``engine._state``          what the run read of the saga's row and history; buffered appends
``engine._attempts``       a step's attempts at the live edge: send, classify, retry, record
``engine._compensation``   the compensation stack, rebuilt from history and run in reverse
``engine._operator``       an operator's requests: retry now, resume, compensate, cancel
``engine._determinism``    input digests and the divergence of code from history
``engine._body_check``     the calls a body's source may not make (clock, randomness, I/O)
:mod:`engine.history`      the events and the ``saga_instances`` projection
:mod:`engine.ports`        ``HistoryStore``, ``Transport``, ``Clock`` (protocols only)
:mod:`engine.adapters`     SQL and in-memory stores, RabbitMQ and in-memory transports
:mod:`engine.observer`     what the engine reports (``SagaObserver``, ``EngineCounters``)
:mod:`engine.errors`       the error tree; :mod:`engine.clock`: system and fake clocks
:mod:`engine.testing`      the test driver (``run_until_idle``) and fake services
=========================  ====================================================================
"""

from __future__ import annotations

from engine.api import Engine
from engine.observer import EngineCounters
from engine.views import SagaHandle, SagaStatus, StepStatus
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
