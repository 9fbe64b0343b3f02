"""The replay loop: runs one saga's workflow body against its history (private).

A ``_Run`` owns one saga for one lease (fencing ``version``). It re-runs the workflow body from
the top; each ``ctx`` call takes the next *position*. Positions with recorded events are
answered from history (results returned, errors re-raised, nothing sent, nothing logged); the
first position without events is the live edge, where commands are recorded and sent.

Commit economy: decisions are buffered in ``pending`` and written by :meth:`_Run.flush` only
when the outside world is about to see something — right before a command is sent (so the
step's ``StepScheduled`` and the previous step's ``StepCompleted`` share one commit), before a
durable sleep, and at the end. Feeding a result to the body before it is durable is safe: the
body is deterministic and has no effects of its own, and the next command cannot leave before
the flush that carries the result.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog
import structlog.contextvars
from pydantic import BaseModel

from engine.errors import (
    CancelRequested,
    NondeterminismError,
    RemoteError,
    SagaError,
    StepFailed,
    StepTimeout,
)
from engine.history import (
    CANCEL,
    COMPENSATE,
    COMPENSATION_STARTED,
    COMPLETED,
    FAILED,
    PARKED,
    RESUME,
    RETRY,
    STARTED,
    Event,
    EventType,
    Projection,
    SagaRecord,
)
from engine.observer import NO_FAILED_STEP, EngineCounters, SagaObserver
from engine.ports import Clock, HistoryStore, Transport
from engine.workflow import (
    RetryPolicy,
    StepCall,
    Workflow,
    WorkflowContext,
    _split,
    workflow_input_model,
)

__all__ = ["RunConfig", "canonical_json", "input_digest"]

ET = EventType
# Events at a step's position that belong to its compensation, not to the step.
_COMPENSATION_EVENTS = frozenset(
    {ET.COMPENSATION_SCHEDULED, ET.COMPENSATION_RETRYING, ET.COMPENSATION_COMPLETED}
)
_log = structlog.get_logger("engine")


class _Stop(BaseException):
    """Unwinds the workflow body; ``except Exception`` in workflow code cannot swallow it.

    kind ``abort``: compensate (cancel, deadline, an operator's compensate, carried in
    ``request``); ``abandon``: the store refused or failed, stop touching this saga; ``park``:
    nondeterminism.
    """

    def __init__(
        self,
        kind: str,
        reason: str = "",
        *,
        cancelled: bool = False,
        error: BaseException | None = None,
        request: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(kind, reason)
        self.kind = kind
        self.reason = reason
        self.cancelled = cancelled
        self.error = error
        self.request = request


@dataclasses.dataclass(eq=False)
class _Compensation:
    position: int
    step: str
    target: str
    payload: dict[str, Any]
    key: str
    scheduled: bool = False
    attempts: int = 0
    retry_at: datetime | None = None
    done: bool = False


def _wire(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, SagaError):
        return exc.to_wire()
    return {"type": type(exc).__name__, "message": str(exc), "non_retryable": False, "details": {}}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What a run needs to know of the engine that drives it: its owner id (written on every
    event and fenced on every append) and its policies. ``compensation_alert_attempts``
    failed attempts of one compensation, or of one step past the pivot, flag the saga
    ``needs_operator``."""

    owner: str
    step_retry: RetryPolicy
    compensation_retry: RetryPolicy
    default_step_timeout: float
    compensation_alert_attempts: int


@dataclasses.dataclass(frozen=True)
class RunDeps:
    """The ports a run works through, the engine's counters and observer, and ``finished``,
    called with the final row and history of a saga that this run ended."""

    store: HistoryStore
    transport: Transport
    clock: Clock
    observer: SagaObserver
    counters: EngineCounters
    finished: Callable[[SagaRecord, list[Event]], None]


class _Run:
    def __init__(
        self,
        config: RunConfig,
        deps: RunDeps,
        body: Workflow | None,
        record: SagaRecord,
        events: list[Event],
        version: int,
        *,
        offline: bool = False,
    ) -> None:
        self.config = config
        # Offline: replay against history only; nothing is sent, written or waited for.
        self.offline = offline
        self.divergence: str | None = None
        self.store = deps.store
        self.transport = deps.transport
        self.clock = deps.clock
        self.observer = deps.observer
        self.counters = deps.counters
        self._finished = deps.finished
        self.body = body
        self.record = record
        self.version = version
        self.owner = config.owner
        self.seq = len(events)
        self.history = list(events)  # every committed event: recorded ones, then our flushes
        self.pending: list[Event] = []
        self.by_pos: dict[int, list[Event]] = {}
        self.compensation_started: Event | None = None
        self.cancel_recorded = False
        # The step whose failure made the saga compensate (the list's filter and metrics).
        failed_step = record.failed_step
        for event in events:
            if event.position is not None:
                self.by_pos.setdefault(event.position, []).append(event)
            if event.type == ET.STEP_FAILED and event.step is not None:
                failed_step = event.step
            if event.type == ET.COMPENSATION_STARTED:
                self.compensation_started = event
            elif event.type == ET.CANCEL_REQUESTED:
                self.cancel_recorded = True
        self.recorded_positions = max(self.by_pos, default=-1) + 1
        started = events[0].payload if events else {}
        self.input = started.get("input", record.input)
        deadline = started.get("deadline")
        for event in events:  # a resumed saga has its deadline's budget again from then on
            if event.type == ET.OPERATOR_ACTION and event.payload.get("deadline"):
                deadline = event.payload["deadline"]
        self.deadline = datetime.fromisoformat(deadline) if deadline else None
        self.projection = Projection(
            status=record.status,
            current_step=record.current_step,
            failure_reason=record.failure_reason,
            needs_operator=record.needs_operator,
            compensation_attempts=record.compensation_attempts,
            failed_step=failed_step,
        )
        # Set again by replay when the pivot step's completion is replayed.
        self.past_pivot = False
        # An operator's retry waiting to be recorded, and the requests already recorded.
        request = record.operator_request
        self.request = request if request is not None and request["action"] == RETRY else None
        self.handled: set[str] = set()
        self.cancel_seen = False  # a compensating run stops asking once it saw the flag
        self._wake = asyncio.Event()
        if self.request is not None:
            self._wake.set()
        self.stack: list[_Compensation] = []
        self.log = _log.bind(saga_id=record.saga_id, workflow_id=record.workflow_id)
        self.ctx = WorkflowContext(
            self, workflow_id=record.workflow_id, saga_id=record.saga_id, attempt=version
        )

    # -- history ---------------------------------------------------------------------------

    def emit(
        self,
        type_: str,
        *,
        position: int | None = None,
        step: str | None = None,
        attempt: int = 0,
        payload: dict[str, Any] | None = None,
    ) -> Event:
        event = Event(
            self.seq,
            type_,
            position,
            step,
            attempt,
            payload or {},
            self.clock.now(),
            self.owner,
            self.version,
        )
        self.seq += 1
        self.pending.append(event)
        return event

    def unemit(self, event: Event) -> None:
        assert self.pending
        assert self.pending[-1] is event
        self.pending.pop()
        self.seq -= 1

    async def flush(self, *, honour_cancel: bool = True) -> None:
        if not self.pending:
            return
        events = self.pending
        try:
            await self.store.append(
                self.record.saga_id,
                events,
                expected_seq=events[0].seq,
                version=self.version,
                owner=self.owner,
                projection=self.projection,
                honour_cancel=honour_cancel,
            )
        except CancelRequested:
            raise
        except Exception as exc:  # conflict (fenced) or store failure: this run must stop here
            raise _Stop("abandon", error=exc) from exc
        self.history.extend(events)
        self.pending = []

    # -- the body's operations -------------------------------------------------------------

    def now(self) -> datetime:
        return self.clock.now()

    async def step(self, call: StepCall) -> dict[str, Any]:
        position, target, key = call.position, call.target, call.key
        comp = None
        if call.compensation is not None:
            comp = _Compensation(position, target, *call.compensation)
        recorded = self.by_pos.get(position)
        if recorded is not None:
            first = recorded[0]
            last = next(e for e in reversed(recorded) if e.type not in _COMPENSATION_EVENTS)
            if first.type != ET.STEP_SCHEDULED or first.step != target:
                raise self._diverged(position, f"step {target}", first)
            self._check_input(call, first)
            comp = self._recorded_compensation(first) or comp
            if last.type == ET.STEP_COMPLETED:
                if comp is not None:
                    self.stack.append(comp)
                self._reached(call)
                return dict(last.payload.get("result") or {})
            if last.type == ET.STEP_FAILED:
                took_effect = bool(last.payload.get("took_effect"))
                if comp is not None and took_effect:
                    self.stack.append(comp)
                raise StepFailed(
                    target, last.attempt, last.payload.get("error") or {}, took_effect=took_effect
                )
            # Scheduled, outcome unknown: it may have happened, so compensable; re-send it.
            if comp is not None:
                self.stack.append(comp)
            if self.offline:
                raise _Stop("end")
            attempt = last.attempt
            if last.type in (ET.STEP_RETRYING, ET.STEP_TIMED_OUT):
                await self._backoff_until(last.payload.get("retry_at"))
                attempt += 1
            return await self._send(call, comp, attempt)
        if self.offline:
            raise _Stop("end")
        self._check_deadline()
        if comp is not None:
            self.stack.append(comp)
        scheduled = self.emit(
            ET.STEP_SCHEDULED,
            position=position,
            step=target,
            attempt=1,
            payload={
                "key": key,
                # What was sent, and its digest: replay compares the code's input with it.
                "input": call.payload,
                "digest": input_digest(call.payload),
                "compensation": None
                if comp is None
                else {"target": comp.target, "payload": comp.payload, "key": comp.key},
            },
        )
        self.projection.current_step = target
        try:
            await self.flush()
        except CancelRequested as exc:
            self.unemit(scheduled)
            if comp is not None:
                self.stack.pop()
            raise self._cancel_stop(exc) from None
        return await self._send(call, comp, 1)

    async def _send(
        self, call: StepCall, comp: _Compensation | None, attempt: int
    ) -> dict[str, Any]:
        config, observer = self.config, self.observer
        position, target, payload, key = call.position, call.target, call.payload, call.key
        # Past the pivot only forward: retried until done, whatever the error or the deadline.
        forward_only = self.past_pivot
        policy = call.retry or config.step_retry
        if forward_only:
            policy = dataclasses.replace(policy, max_attempts=None)
        service, method = _split(target)
        log = self.log.bind(step=target)
        while True:
            self._take_retry()
            limit = call.timeout or config.default_step_timeout
            if self.deadline is not None and not forward_only:
                limit = max(0.0, min(limit, (self.deadline - self.clock.now()).total_seconds()))
            began = time.perf_counter()
            try:
                result = await self.transport.request(
                    service,
                    method,
                    payload,
                    timeout=limit,
                    idempotency_key=key,
                    headers=self._headers(target, attempt),
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
                    self.projection.failed_step = target
                    self.emit(
                        ET.STEP_FAILED,
                        position=position,
                        step=target,
                        attempt=attempt,
                        payload={"error": wire, "took_effect": False},
                    )
                    if comp is not None and comp in self.stack:
                        self.stack.remove(comp)
                    log.info("step.failed", attempt=attempt, error=wire["type"])
                    raise StepFailed(target, attempt, wire, took_effect=False) from None
                delay = policy.delay(attempt)
                retry_at = self.clock.now() + timedelta(seconds=delay)
                past_deadline = (
                    not forward_only and self.deadline is not None and retry_at >= self.deadline
                )
                if not policy.allows(attempt + 1) or past_deadline:
                    self.projection.failed_step = target
                    self.emit(
                        ET.STEP_FAILED,
                        position=position,
                        step=target,
                        attempt=attempt,
                        payload={"error": wire, "took_effect": True},
                    )
                    log.warning("step.gave_up", attempt=attempt, error=wire["type"])
                    if past_deadline:
                        raise _Stop("abort", "deadline exceeded") from None
                    raise StepFailed(target, attempt, wire, took_effect=True) from None
                kind = ET.STEP_TIMED_OUT if isinstance(exc, StepTimeout) else ET.STEP_RETRYING
                self.emit(
                    kind,
                    position=position,
                    step=target,
                    attempt=attempt,
                    payload={"error": wire, "retry_at": retry_at.isoformat()},
                )
                self.counters.step_retries += 1
                if forward_only:
                    self._alert(attempt, "step.needs_operator", log, wire)
                # The history records every attempt; the log says a step began failing once.
                say = log.info if attempt == 1 else log.debug
                say("step.retrying", attempt=attempt, error=wire["type"], delay=delay)
                try:
                    await self.flush()
                except CancelRequested as exc:
                    raise self._cancel_stop(exc) from None
                await self._backoff(delay)
                attempt += 1
                continue
            observer.step_attempted(target, "completed", time.perf_counter() - began)
            self.emit(
                ET.STEP_COMPLETED,
                position=position,
                step=target,
                attempt=attempt,
                payload={"result": result},
            )
            if forward_only:
                self.projection.needs_operator = False  # the step an operator was told of is done
            self._reached(call)
            self.counters.steps_completed += 1
            return result

    async def marker(self, position: int, name: str, make: Callable[[], str]) -> str:
        recorded = self.by_pos.get(position)
        if recorded is not None:
            first = recorded[0]
            if first.type != ET.MARKER or first.step != name:
                raise self._diverged(position, f"ctx.{name}()", first)
            return str(first.payload["value"])
        if self.offline:
            raise _Stop("end")
        value = make()
        self.emit(ET.MARKER, position=position, step=name, payload={"value": value})
        return value

    async def sleep(self, position: int, seconds: float) -> None:
        recorded = self.by_pos.get(position)
        if recorded is not None:
            first = recorded[0]
            if first.type != ET.TIMER_STARTED:
                raise self._diverged(position, "ctx.sleep()", first)
            if recorded[-1].type == ET.TIMER_FIRED:
                return
            if self.offline:
                raise _Stop("end")
            await self._sleep_until(first.payload.get("fire_at"))
        else:
            if self.offline:
                raise _Stop("end")
            self._check_deadline()
            fire_at = self.clock.now() + timedelta(seconds=seconds)
            started = self.emit(
                ET.TIMER_STARTED,
                position=position,
                step="sleep",
                payload={"fire_at": fire_at.isoformat()},
            )
            try:
                await self.flush()
            except CancelRequested as exc:
                self.unemit(started)
                raise self._cancel_stop(exc) from None
            await self.clock.sleep(seconds)
        self.emit(ET.TIMER_FIRED, position=position, step="sleep")

    def patched(self, position: int, change_id: str, *, deprecated: bool = False) -> bool:
        """Whether the saga runs the code of patch ``change_id`` (see ``WorkflowContext``);
        the marker takes ``position`` only when it is (or, live, becomes) part of history."""
        name = f"patch:{change_id}"
        recorded = self.by_pos.get(position)
        if recorded is not None:
            first = recorded[0]
            return first.type == ET.MARKER and first.step == name
        if deprecated or self.offline:
            return False  # nothing more is recorded for a retired patch, nor offline
        self.emit(ET.MARKER, position=position, step=name, payload={"value": "true"})
        return True

    # -- the saga ----------------------------------------------------------------------------

    async def run(self) -> None:
        # Each saga runs in its own task (its own context copy): activity code called
        # in-process and the transport's headers see the same ids in their log lines.
        structlog.contextvars.bind_contextvars(
            saga_id=self.record.saga_id,
            workflow_id=self.record.workflow_id,
            order_id=self.record.workflow_id,
        )
        if self.offline:
            await self._replay_offline()
            return
        try:
            if self.record.status == PARKED and not await self._answer_parked():
                return
            if self.compensation_started is not None:
                reason = str(self.compensation_started.payload.get("reason", ""))
                self.stack = self._stack_from_history()
                await self._compensate(reason, cancelled=self.cancel_recorded)
                return
            assert self.body is not None, "only a parked saga is driven without its workflow"
            try:
                model = workflow_input_model(self.body)
                given = self.input if model is None else model.model_validate(self.input)
                result = await self.body(self.ctx, given)
                if isinstance(result, BaseModel):
                    result = result.model_dump(mode="json")
            except StepFailed as exc:
                await self._compensate(str(exc), cancelled=False)
            except _Stop as stop:
                if stop.kind == "abort":
                    await self._compensate(
                        stop.reason, cancelled=stop.cancelled, request=stop.request
                    )
                elif stop.kind == "park":
                    await self._park(f"NondeterminismError: {stop.error}")
                else:
                    raise
            except Exception as exc:  # a bug in the body: the saga cannot go on; undo it
                self.log.exception("workflow.error")
                await self._compensate(
                    f"workflow error: {type(exc).__name__}: {exc}", cancelled=False
                )
            else:
                if self.ctx.position < self.recorded_positions:
                    await self._park(
                        f"NondeterminismError: workflow returned at position "
                        f"{self.ctx.position} but history has commands up to position "
                        f"{self.recorded_positions - 1}"
                    )
                    return
                await self._finish(result)
        except _Stop as stop:
            if stop.kind == "park":
                await self._park(f"NondeterminismError: {stop.error}")
                return
            self.counters.abandoned += 1
            self.log.warning("saga.abandoned", reason=repr(stop.error))

    async def _finish(self, result: Any) -> None:
        completed = self.emit(ET.WORKFLOW_COMPLETED, payload={"result": result})
        p = self.projection
        before = dataclasses.replace(p)
        p.status, p.current_step, p.result, p.needs_operator = COMPLETED, None, result, False
        p.finished = True
        try:
            # A cancel accepted while the last step ran is honoured (past a pivot none is).
            await self.flush()
        except CancelRequested as exc:
            self.unemit(completed)
            self.projection = before
            stop = self._cancel_stop(exc)
            await self._compensate(stop.reason, cancelled=stop.cancelled, request=stop.request)
            return
        self._remember()
        self.counters.sagas_completed += 1
        self.observer.saga_finished(self.record.workflow_name, COMPLETED, NO_FAILED_STEP)
        self.log.info("saga.completed")

    async def _replay_offline(self) -> None:
        """Run the body against the history and nothing else; ``divergence`` says where they
        part, or stays ``None`` when the history is what today's code would have written."""
        assert self.body is not None
        try:
            model = workflow_input_model(self.body)
            given = self.input if model is None else model.model_validate(self.input)
            await self.body(self.ctx, given)
        except StepFailed:
            return  # a recorded failure: from here on the saga compensated what history says
        except _Stop as stop:
            if stop.kind == "park":
                self.divergence = str(stop.error)
            return
        except Exception as exc:  # replayed code that raises where history went on
            self.divergence = f"workflow error: {type(exc).__name__}: {exc}"
            return
        if self.ctx.position < self.recorded_positions:
            self.divergence = (
                f"workflow returned at position {self.ctx.position} but history has commands "
                f"up to position {self.recorded_positions - 1}"
            )

    async def park_unknown(self) -> None:
        """Park a saga whose workflow this engine does not know, recording the operator's
        action that brought it here, if one did."""
        if self.record.operator_request is not None:
            self._record_action(self.record.operator_request)
        await self._park(
            f"UnknownWorkflow: no workflow named {self.record.workflow_name!r} is registered "
            "with this orchestrator"
        )

    async def _answer_parked(self) -> bool:
        """Carry out the operator's action that brought a parked saga here; True when the
        workflow body is to run (resume), False when the saga was compensated."""
        request = self.record.operator_request
        assert request is not None, "a parked saga is driven only for an operator's action"
        if request["action"] == RESUME and self.deadline is not None and self.history:
            # However long it was parked, a resumed saga gets its whole time budget again.
            began = self.history[0].created_at
            assert began is not None
            self.deadline = self.clock.now() + (self.deadline - began)
        self._record_action(request)
        if request["action"] == RESUME:
            p = self.projection
            p.status, p.current_step, p.failure_reason = STARTED, None, None
            p.needs_operator = False
            return True
        self.stack = self._stack_from_history()
        if request["action"] == CANCEL:
            await self._compensate("cancelled", cancelled=True)
        else:
            await self._compensate(f"operator: {request['reason']}", cancelled=False)
        return False

    async def _park(self, message: str) -> None:
        self.emit(ET.WORKFLOW_PARKED, payload={"error": message})
        self.projection.status = PARKED
        self.projection.needs_operator = True
        self.projection.failure_reason = message
        self.projection.finished = True
        try:
            await self.flush(honour_cancel=False)
        except _Stop as stop:
            self.counters.abandoned += 1
            self.log.warning("saga.abandoned", reason=repr(stop.error))
            return
        self.counters.sagas_parked += 1
        self.observer.saga_finished(self.record.workflow_name, PARKED, NO_FAILED_STEP)
        self.log.error("saga.parked", error=message)

    async def _compensate(
        self, reason: str, *, cancelled: bool, request: dict[str, Any] | None = None
    ) -> None:
        config, observer, counters = self.config, self.observer, self.counters
        policy = config.compensation_retry
        if request is not None:
            self._record_action(request)
        if self.compensation_started is None:
            if cancelled:
                self.emit(ET.CANCEL_REQUESTED)
            self.emit(
                ET.COMPENSATION_STARTED,
                payload={"reason": reason, "steps": [c.position for c in reversed(self.stack)]},
            )
            self.projection.status = COMPENSATION_STARTED
            self.projection.failure_reason = reason
            self.projection.current_step = None
            self.log.info("compensation.started", reason=reason)
        for comp in reversed(self.stack):
            if comp.done:
                continue
            service, method = _split(comp.target)
            log = self.log.bind(step=comp.target)
            attempt = comp.attempts + 1
            self.projection.current_step = comp.target
            if not comp.scheduled:
                self.emit(
                    ET.COMPENSATION_SCHEDULED,
                    position=comp.position,
                    step=comp.target,
                    attempt=attempt,
                    payload={"key": comp.key, "for": comp.step},
                )
                comp.scheduled = True
            await self._flush_compensating()
            if comp.retry_at is not None:
                await self._backoff_until(comp.retry_at.isoformat())
            while True:
                self._take_retry()
                try:
                    result = await self.transport.request(
                        service,
                        method,
                        comp.payload,
                        timeout=config.default_step_timeout,
                        idempotency_key=comp.key,
                        headers=self._headers(comp.target, attempt),
                    )
                except Exception as exc:  # compensations are retried until they succeed
                    wire = _wire(exc)
                    if wire["type"] == "AlreadyCompensated":
                        observer.compensation_attempted(comp.target, "already_compensated")
                        result = {"already_compensated": True}
                        break
                    observer.compensation_attempted(comp.target, "failed")
                    delay = policy.delay(attempt)
                    self.projection.compensation_attempts += 1
                    counters.compensation_retries += 1
                    self._alert(attempt, "compensation.needs_operator", log, wire)
                    self.emit(
                        ET.COMPENSATION_RETRYING,
                        position=comp.position,
                        step=comp.target,
                        attempt=attempt,
                        payload={
                            "error": wire,
                            "retry_at": (self.clock.now() + timedelta(seconds=delay)).isoformat(),
                        },
                    )
                    say = log.warning if attempt == 1 else log.debug
                    say("compensation.retrying", attempt=attempt, error=wire["type"])
                    await self._flush_compensating()
                    await self._backoff(delay)
                    attempt += 1
                    continue
                observer.compensation_attempted(comp.target, "completed")
                break
            self.emit(
                ET.COMPENSATION_COMPLETED,
                position=comp.position,
                step=comp.target,
                attempt=attempt,
                payload={"result": result},
            )
            comp.done = True
            counters.compensations_completed += 1
            log.info("compensation.completed", attempt=attempt)
        self.emit(ET.WORKFLOW_FAILED, payload={"reason": reason})
        self.projection.status = FAILED
        self.projection.current_step = None
        self.projection.needs_operator = False
        self.projection.finished = True
        await self._flush_compensating()
        self._remember()
        counters.sagas_failed += 1
        observer.saga_finished(
            self.record.workflow_name, FAILED, self.projection.failed_step or NO_FAILED_STEP
        )
        self.log.info("saga.failed", reason=reason)

    # -- helpers -----------------------------------------------------------------------------

    def _remember(self) -> None:
        """Hand ``finished`` the saga's final row and history, as just committed.

        ``cancel_requested`` is what this run saw: a cancel that arrived during the last step
        (too late to be honoured) is on the stored row but not here.
        """
        p = self.projection
        record = dataclasses.replace(
            self.record,
            status=p.status,
            current_step=p.current_step,
            result=None if p.result is None else json.loads(json.dumps(p.result, default=str)),
            failure_reason=p.failure_reason,
            owner=None,
            lease_expires_at=None,
            version=self.version,
            next_seq=self.seq,
            needs_operator=p.needs_operator,
            cancel_requested=any(e.type == ET.CANCEL_REQUESTED for e in self.history),
            compensation_attempts=p.compensation_attempts,
            failed_step=p.failed_step,
            past_pivot=p.past_pivot,
            updated_at=self.history[-1].created_at,
        )
        self._finished(record, self.history)

    def _headers(self, step: str, attempt: int) -> dict[str, str]:
        """A command's headers: the ids the receiver binds to its log lines.

        The workflow id is the business key — the order id of an order saga — and travels as
        ``order_id`` too, the correlation id every CloudMart log line carries.
        """
        return {
            "saga_id": self.record.saga_id,
            "workflow_id": self.record.workflow_id,
            "order_id": self.record.workflow_id,
            "step": step,
            "attempt": str(attempt),
        }

    def _check_deadline(self) -> None:
        if self.past_pivot:
            return  # past the pivot the saga only goes forward, however late
        if self.deadline is not None and self.clock.now() >= self.deadline:
            raise _Stop("abort", "deadline exceeded")

    def _reached(self, call: StepCall) -> None:
        """A step completed (live or replayed): its milestone becomes the status, and a pivot
        turns the saga forward-only."""
        if call.milestone is not None:
            self.projection.status = call.milestone
        if call.pivot:
            self.past_pivot = True
            self.projection.past_pivot = True

    def _alert(self, attempt: int, what: str, log: Any, wire: dict[str, Any]) -> None:
        """Flag the saga for an operator once one step or compensation has failed
        ``compensation_alert_attempts`` times."""
        if attempt >= self.config.compensation_alert_attempts and not (
            self.projection.needs_operator
        ):
            self.projection.needs_operator = True
            self.counters.operator_alerts += 1
            self.observer.operator_flagged(self.record.workflow_name)
            log.error(what, attempt=attempt, error=wire["type"])

    # -- operator actions --------------------------------------------------------------------

    def poke(self, request: dict[str, Any]) -> None:
        """An operator asks for a retry now: cut short the backoff this run waits out (or the
        next one), and record the action before the attempt it causes."""
        if request["action"] == RETRY and request["id"] not in self.handled:
            self.request = request
            self._wake.set()

    def _record_action(self, request: dict[str, Any]) -> None:
        self.handled.add(request["id"])
        self.projection.handled_request = request["id"]  # the append clears it from the row
        payload = {
            "action": request["action"],
            "reason": request["reason"],
            "requested_at": request["at"],
        }
        if request["action"] == RESUME and self.deadline is not None:
            payload["deadline"] = self.deadline.isoformat()
        self.emit(ET.OPERATOR_ACTION, payload=payload)
        self.log.info("saga.operator_action", action=request["action"], reason=request["reason"])

    def _take_retry(self) -> None:
        request, self.request = self.request, None
        if request is not None and request["id"] not in self.handled:
            self._record_action(request)

    async def _flush_compensating(self) -> None:
        """Flush while compensating: a cancel changes nothing any more, but an operator's
        compensate that arrived meanwhile is recorded (it is being honoured)."""
        try:
            await self.flush(honour_cancel=not self.cancel_seen)
        except CancelRequested as refused:
            self.cancel_seen = True
            request = refused.request
            if request is not None and request["id"] not in self.handled:
                self._record_action(request)
            await self.flush(honour_cancel=False)

    def _cancel_stop(self, refused: CancelRequested) -> _Stop:
        """The stop for an append refused on a pending cancel: an operator's compensate (with
        its reason) or a plain cancel."""
        request = refused.request
        if (
            request is not None
            and request["action"] == COMPENSATE
            and request["id"] not in self.handled
        ):
            return _Stop("abort", f"operator: {request['reason']}", request=request)
        return _Stop("abort", "cancelled", cancelled=True)

    async def _backoff(self, seconds: float) -> None:
        """Wait out a retry's backoff, or less when an operator asks for a retry now."""
        if not self._wake.is_set():
            sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()
        self._wake.clear()

    async def _backoff_until(self, when: str | None) -> None:
        if when:
            remaining = (datetime.fromisoformat(when) - self.clock.now()).total_seconds()
            if remaining > 0:
                await self._backoff(remaining)

    async def _sleep_until(self, when: str | None) -> None:
        if when:
            remaining = (datetime.fromisoformat(when) - self.clock.now()).total_seconds()
            if remaining > 0:
                await self.clock.sleep(remaining)

    def _check_input(self, call: StepCall, scheduled: Event) -> None:
        """The code sends what history says it sent (histories recorded before inputs were
        kept are not checked)."""
        digest = scheduled.payload.get("digest")
        if digest is None or digest == input_digest(call.payload):
            return
        differences = _differences(scheduled.payload.get("input"), call.payload)
        raise _Stop(
            "park",
            error=NondeterminismError(
                f"at position {call.position} the workflow asked for step {call.target} with "
                f"another input than history holds: {'; '.join(differences)}"
            ),
        )

    def _diverged(self, position: int, asked: str, recorded: Event) -> _Stop:
        what = recorded.type if recorded.step is None else f"{recorded.type} {recorded.step}"
        return _Stop(
            "park",
            error=NondeterminismError(
                f"at position {position} the workflow asked for {asked} but history holds {what}"
            ),
        )

    @staticmethod
    def _recorded_compensation(scheduled: Event) -> _Compensation | None:
        info = scheduled.payload.get("compensation")
        if not info:
            return None
        assert scheduled.position is not None
        assert scheduled.step is not None
        return _Compensation(
            scheduled.position, scheduled.step, info["target"], info["payload"], info["key"]
        )

    def _stack_from_history(self) -> list[_Compensation]:
        stack = []
        for position in sorted(self.by_pos):
            events = self.by_pos[position]
            if events[0].type != ET.STEP_SCHEDULED:
                continue
            comp = self._recorded_compensation(events[0])
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


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def input_digest(payload: Any) -> str:
    """A step input's digest, recorded with ``StepScheduled`` and compared on replay."""
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()[:16]


def _differences(recorded: Any, asked: Any, path: str = "") -> list[str]:
    """Where two JSON values differ, as ``field: history X, code Y`` (dotted paths)."""
    if isinstance(recorded, dict) and isinstance(asked, dict):
        found = []
        for key in sorted(recorded.keys() | asked.keys()):
            here = f"{path}.{key}" if path else str(key)
            if key not in asked:
                found.append(f"{here}: history {recorded[key]!r}, code has no such field")
            elif key not in recorded:
                found.append(f"{here}: history has no such field, code {asked[key]!r}")
            else:
                found.extend(_differences(recorded[key], asked[key], here))
        return found
    if isinstance(recorded, list) and isinstance(asked, list) and len(recorded) == len(asked):
        return [
            d
            for i, (r, a) in enumerate(zip(recorded, asked, strict=True))
            for d in _differences(r, a, f"{path}[{i}]")
        ]
    if canonical_json(recorded) == canonical_json(asked):
        return []
    return [f"{path or 'input'}: history {recorded!r}, code {asked!r}"]
