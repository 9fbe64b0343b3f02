"""A step at the live edge: its command sent, retried and its outcome recorded (private).

:func:`send` makes the attempts of one step under its :class:`~engine.workflow.RetryPolicy`
and the saga's deadline. Each failed attempt is classified: a business refusal (wire
``non_retryable``, or a type the policy names) is final and did not take effect; a timeout or
transport error is recorded (``StepTimedOut`` / ``StepRetrying``, with ``retry_at``) and
retried after the policy's backoff, which an operator's retry cuts short. When the retries or
the deadline run out the step fails as possibly effected, so it is compensated. Past the pivot
a step only goes forward: retried until done, whatever the error or the deadline, and the saga
is flagged ``needs_operator`` while it keeps failing.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta
from typing import Any

from engine._operator import OperatorRequests
from engine._state import RunState, _Compensation, _Stop, _wire
from engine.errors import CancelRequested, RemoteError, StepFailed, StepTimeout
from engine.history import EventType
from engine.workflow import StepCall, _split

__all__ = ["send"]

ET = EventType


async def send(
    run: RunState,
    requests: OperatorRequests,
    call: StepCall,
    comp: _Compensation | None,
    attempt: int,
) -> dict[str, Any]:
    """Send ``call`` from ``attempt`` on until it completes (its result) or fails for good
    (:class:`~engine.errors.StepFailed`, or an ``abort`` past the deadline)."""
    config, observer = run.config, run.observer
    position, target, payload, key = call.position, call.target, call.payload, call.key
    # Past the pivot only forward: retried until done, whatever the error or the deadline.
    forward_only = run.past_pivot
    policy = call.retry or config.step_retry
    if forward_only:
        policy = dataclasses.replace(policy, max_attempts=None)
    service, method = _split(target)
    log = run.log.bind(step=target)
    while True:
        requests.take_retry()
        limit = call.timeout or config.default_step_timeout
        if run.deadline is not None and not forward_only:
            limit = max(0.0, min(limit, (run.deadline - run.clock.now()).total_seconds()))
        began = time.perf_counter()
        try:
            result = await run.transport.request(
                service,
                method,
                payload,
                timeout=limit,
                idempotency_key=key,
                headers=run.headers(target, attempt),
            )
        except Exception as exc:  # every transport failure is classified and recorded
            wire = _wire(exc)
            business = not forward_only and (
                (isinstance(exc, RemoteError) and exc.non_retryable)
                or wire["type"] in policy.non_retryable
            )
            outcome = (
                "refused"
                if business
                else "timed_out"
                if isinstance(exc, StepTimeout)
                else "transport_error"
            )
            observer.step_attempted(target, outcome, time.perf_counter() - began)
            if business:
                _failed(run, call, attempt, wire, took_effect=False)
                if comp is not None and comp in run.stack:
                    run.stack.remove(comp)
                log.info("step.failed", attempt=attempt, error=wire["type"])
                raise StepFailed(target, attempt, wire, took_effect=False) from None
            delay = policy.delay(attempt)
            retry_at = run.clock.now() + timedelta(seconds=delay)
            past_deadline = (
                not forward_only and run.deadline is not None and retry_at >= run.deadline
            )
            if not policy.allows(attempt + 1) or past_deadline:
                _failed(run, call, attempt, wire, took_effect=True)
                log.warning("step.gave_up", attempt=attempt, error=wire["type"])
                if past_deadline:
                    raise _Stop("abort", "deadline exceeded") from None
                raise StepFailed(target, attempt, wire, took_effect=True) from None
            kind = ET.STEP_TIMED_OUT if isinstance(exc, StepTimeout) else ET.STEP_RETRYING
            run.emit(
                kind,
                position=position,
                step=target,
                attempt=attempt,
                payload={"error": wire, "retry_at": retry_at.isoformat()},
            )
            run.counters.step_retries += 1
            if forward_only:
                run.alert(attempt, "step.needs_operator", log, wire)
            # The history records every attempt; the log says a step began failing once.
            say = log.info if attempt == 1 else log.debug
            say("step.retrying", attempt=attempt, error=wire["type"], delay=delay)
            try:
                await run.flush()
            except CancelRequested as exc:
                raise requests.cancel_stop(exc) from None
            await requests.backoff(delay)
            attempt += 1
            continue
        observer.step_attempted(target, "completed", time.perf_counter() - began)
        requests.take_retry()  # a retry asked for while this attempt was in flight
        run.emit(
            ET.STEP_COMPLETED,
            position=position,
            step=target,
            attempt=attempt,
            payload={"result": result},
        )
        if forward_only:
            run.projection.needs_operator = False  # the step an operator was told of is done
        run.reached(call)
        run.counters.steps_completed += 1
        return result


def _failed(
    run: RunState, call: StepCall, attempt: int, wire: dict[str, Any], *, took_effect: bool
) -> None:
    """Record that ``call`` failed for good at ``attempt`` (``took_effect``: it may have run)."""
    run.projection.failed_step = call.target
    run.emit(
        ET.STEP_FAILED,
        position=call.position,
        step=call.target,
        attempt=attempt,
        payload={"error": wire, "took_effect": took_effect},
    )
