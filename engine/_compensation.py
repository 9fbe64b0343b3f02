"""Compensation: the saga undone, in reverse, each compensation retried until it succeeds
(private).

A step's compensation is registered (recorded in its ``StepScheduled``) before the step is
sent; :func:`recorded_compensation` reads it back and :func:`stack_from_history` rebuilds the
stack of a saga that was compensating when its run stopped, with how far each got.
:func:`compensate` runs the stack in reverse — ``CompensationStarted``, then per step
``CompensationScheduled``, ``CompensationRetrying`` for each failed attempt and
``CompensationCompleted`` — and ends the saga ``FAILED`` after the last one. A compensation is
never given up: past ``compensation_alert_attempts`` the saga is flagged ``needs_operator``,
and ``AlreadyCompensated`` counts as success.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from engine._operator import OperatorRequests
from engine._state import RunState, _Compensation, _wire
from engine.errors import CancelRequested
from engine.history import COMPENSATION_STARTED, FAILED, Event, EventType
from engine.observer import NO_FAILED_STEP
from engine.workflow import _split

__all__ = ["compensate", "recorded_compensation", "stack_from_history"]

ET = EventType


def recorded_compensation(scheduled: Event) -> _Compensation | None:
    """The compensation a ``StepScheduled`` registered, if it did."""
    info = scheduled.payload.get("compensation")
    if not info:
        return None
    assert scheduled.position is not None
    assert scheduled.step is not None
    return _Compensation(
        scheduled.position, scheduled.step, info["target"], info["payload"], info["key"]
    )


def stack_from_history(by_pos: dict[int, list[Event]]) -> list[_Compensation]:
    """The compensations of every step that completed or may have taken effect, in order,
    with what history says of their own progress."""
    stack = []
    for position in sorted(by_pos):
        events = by_pos[position]
        if events[0].type != ET.STEP_SCHEDULED:
            continue
        comp = recorded_compensation(events[0])
        if comp is None:
            continue
        failed = [e for e in events if e.type == ET.STEP_FAILED]
        if failed and not failed[-1].payload.get("took_effect"):
            continue
        for event in events:
            if event.type == ET.COMPENSATION_SCHEDULED:
                comp.scheduled = True
            elif event.type == ET.COMPENSATION_RETRYING:
                comp.attempts = event.attempt
                comp.retry_at = datetime.fromisoformat(event.payload["retry_at"])
            elif event.type == ET.COMPENSATION_COMPLETED:
                comp.done = True
        stack.append(comp)
    return stack


async def compensate(
    run: RunState,
    requests: OperatorRequests,
    reason: str,
    *,
    cancelled: bool,
    request: dict[str, Any] | None = None,
) -> None:
    """Run ``run.stack`` in reverse and end the saga ``FAILED``; ``request`` is the
    operator's compensate that asked for it, recorded first."""
    config, observer, counters = run.config, run.observer, run.counters
    policy = config.compensation_retry
    if request is not None:
        requests.record(request)
    if run.compensation_started is None:
        if cancelled:
            run.emit(ET.CANCEL_REQUESTED)
        run.emit(
            ET.COMPENSATION_STARTED,
            payload={"reason": reason, "steps": [c.position for c in reversed(run.stack)]},
        )
        run.projection.status = COMPENSATION_STARTED
        run.projection.failure_reason = reason
        run.projection.current_step = None
        run.log.info("compensation.started", reason=reason)
    for comp in reversed(run.stack):
        if comp.done:
            continue
        service, method = _split(comp.target)
        log = run.log.bind(step=comp.target)
        attempt = comp.attempts + 1
        run.projection.current_step = comp.target
        if not comp.scheduled:
            run.emit(
                ET.COMPENSATION_SCHEDULED,
                position=comp.position,
                step=comp.target,
                attempt=attempt,
                payload={"key": comp.key, "for": comp.step},
            )
            comp.scheduled = True
        await _flush_compensating(run, requests)
        if comp.retry_at is not None:
            await requests.backoff_until(comp.retry_at.isoformat())
        while True:
            requests.take_retry()
            try:
                result = await run.transport.request(
                    service,
                    method,
                    comp.payload,
                    timeout=config.default_step_timeout,
                    idempotency_key=comp.key,
                    headers=run.headers(comp.target, attempt),
                )
            except Exception as exc:  # compensations are retried until they succeed
                wire = _wire(exc)
                if wire["type"] == "AlreadyCompensated":
                    observer.compensation_attempted(comp.target, "already_compensated")
                    result = {"already_compensated": True}
                    break
                observer.compensation_attempted(comp.target, "failed")
                delay = policy.delay(attempt)
                run.projection.compensation_attempts += 1
                counters.compensation_retries += 1
                run.alert(attempt, "compensation.needs_operator", log, wire)
                run.emit(
                    ET.COMPENSATION_RETRYING,
                    position=comp.position,
                    step=comp.target,
                    attempt=attempt,
                    payload={
                        "error": wire,
                        "retry_at": (run.clock.now() + timedelta(seconds=delay)).isoformat(),
                    },
                )
                say = log.warning if attempt == 1 else log.debug
                say("compensation.retrying", attempt=attempt, error=wire["type"])
                await _flush_compensating(run, requests)
                await requests.backoff(delay)
                attempt += 1
                continue
            observer.compensation_attempted(comp.target, "completed")
            break
        requests.take_retry()  # a retry asked for while this attempt was in flight
        run.emit(
            ET.COMPENSATION_COMPLETED,
            position=comp.position,
            step=comp.target,
            attempt=attempt,
            payload={"result": result},
        )
        comp.done = True
        counters.compensations_completed += 1
        log.info("compensation.completed", attempt=attempt)
    run.emit(ET.WORKFLOW_FAILED, payload={"reason": reason})
    run.projection.status = FAILED
    run.projection.current_step = None
    run.projection.needs_operator = False
    run.projection.finished = True
    await _flush_compensating(run, requests)
    run.remember()
    counters.sagas_failed += 1
    observer.saga_finished(
        run.record.workflow_name, FAILED, run.projection.failed_step or NO_FAILED_STEP
    )
    run.log.info("saga.failed", reason=reason)


async def _flush_compensating(run: RunState, requests: OperatorRequests) -> None:
    """Flush while compensating: a cancel changes nothing any more, but an operator's
    compensate that arrived meanwhile is recorded (it is being honoured)."""
    try:
        await run.flush(honour_cancel=not run.cancel_seen)
    except CancelRequested as refused:
        run.cancel_seen = True
        request = refused.request
        if request is not None and request["id"] not in requests.handled:
            requests.record(request)
        await run.flush(honour_cancel=False)
