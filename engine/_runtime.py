"""The replay loop: runs one saga's workflow body against its history (private).

A ``_Run`` owns one saga for one lease (fencing ``version``). It re-runs the workflow body from
the top; each ``ctx`` call takes the next *position*. Positions with recorded events are
answered from history (results returned, errors re-raised, nothing sent, nothing logged); the
first position without events is the live edge, where commands are recorded and sent.

Commit economy: decisions are buffered in ``pending`` and written by :meth:`RunState.flush`
only when the outside world is about to see something — right before a command is sent (so
the step's ``StepScheduled`` and the previous step's ``StepCompleted`` share one commit),
before a durable sleep, and at the end. Feeding a result to the body before it is durable is
safe: the body is deterministic and has no effects of its own, and the next command cannot
leave before the flush that carries the result.

What the run reads and writes is :class:`~engine._state.RunState`; a step's attempts are
``engine._attempts``, the compensation ``engine._compensation``, the operator's requests
``engine._operator`` and the comparison of code with history ``engine._determinism``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog.contextvars
from pydantic import BaseModel

from engine._attempts import send
from engine._compensation import compensate, recorded_compensation, stack_from_history
from engine._determinism import diverged, input_digest, input_mismatch
from engine._operator import OperatorRequests
from engine._state import RunConfig, RunDeps, RunState, _Compensation, _Stop
from engine.errors import CancelRequested, StepFailed
from engine.history import COMPLETED, PARKED, Event, EventType, SagaRecord
from engine.observer import NO_FAILED_STEP
from engine.workflow import StepCall, Workflow, WorkflowContext, workflow_input_model

__all__ = ["RunConfig", "RunDeps", "_Run"]

ET = EventType
# Events at a step's position that belong to its compensation, not to the step.
_COMPENSATION_EVENTS = frozenset(
    {ET.COMPENSATION_SCHEDULED, ET.COMPENSATION_RETRYING, ET.COMPENSATION_COMPLETED}
)


class _Run(RunState):
    """One saga driven (or, ``offline``, replayed) under one lease: the body run against
    history, what it asks for at the live edge recorded and sent."""

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
        super().__init__(config, deps, record, events, version)
        # Offline: replay against history only; nothing is sent, written or waited for.
        self.offline = offline
        self.divergence: str | None = None
        self.body = body
        self.requests = OperatorRequests(self)
        self.ctx = WorkflowContext(
            self, workflow_id=record.workflow_id, saga_id=record.saga_id, attempt=version
        )

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
                raise _Stop("park", error=diverged(position, f"step {target}", first))
            mismatch = input_mismatch(call, first)
            if mismatch is not None:
                raise _Stop("park", error=mismatch)
            comp = recorded_compensation(first) or comp
            if last.type == ET.STEP_COMPLETED:
                if comp is not None:
                    self.stack.append(comp)
                self.reached(call)
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
                await self.requests.backoff_until(last.payload.get("retry_at"))
                attempt += 1
            return await send(self, self.requests, call, comp, attempt)
        if self.offline:
            raise _Stop("end")
        self._check_deadline()
        if comp is not None:
            self.stack.append(comp)
        payload: dict[str, Any] = {
            "key": key,
            # What was sent, and its digest: replay compares the code's input with it.
            "input": call.payload,
            "digest": input_digest(call.payload),
            "compensation": None
            if comp is None
            else {"target": comp.target, "payload": comp.payload, "key": comp.key},
        }
        if call.pivot:
            payload["pivot"] = True  # so that a reader of the history sees it from the start
        scheduled = self.emit(
            ET.STEP_SCHEDULED, position=position, step=target, attempt=1, payload=payload
        )
        self.projection.current_step = target
        try:
            await self.flush()
        except CancelRequested as exc:
            self.unemit(scheduled)
            if comp is not None:
                self.stack.pop()
            raise self.requests.cancel_stop(exc) from None
        return await send(self, self.requests, call, comp, 1)

    async def marker(self, position: int, name: str, make: Callable[[], str]) -> str:
        recorded = self.by_pos.get(position)
        if recorded is not None:
            first = recorded[0]
            if first.type != ET.MARKER or first.step != name:
                raise _Stop("park", error=diverged(position, f"ctx.{name}()", first))
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
                raise _Stop("park", error=diverged(position, "ctx.sleep()", first))
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
                raise self.requests.cancel_stop(exc) from None
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
            if self.record.status == PARKED:
                undo = self.requests.answer_parked()
                if undo is not None:
                    self.stack = stack_from_history(self.by_pos)
                    await self._compensate(undo.reason, cancelled=undo.cancelled)
                    return
            if self.compensation_started is not None:
                reason = str(self.compensation_started.payload.get("reason", ""))
                self.stack = stack_from_history(self.by_pos)
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
            stop = self.requests.cancel_stop(exc)
            await self._compensate(stop.reason, cancelled=stop.cancelled, request=stop.request)
            return
        self.remember()
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
            self.requests.record(self.record.operator_request)
        await self._park(
            f"UnknownWorkflow: no workflow named {self.record.workflow_name!r} is registered "
            "with this orchestrator"
        )

    def poke(self, request: dict[str, Any]) -> None:
        """An operator asks for a retry now (see :meth:`OperatorRequests.poke`)."""
        self.requests.poke(request)

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
        await compensate(self, self.requests, reason, cancelled=cancelled, request=request)

    # -- helpers -----------------------------------------------------------------------------

    def _check_deadline(self) -> None:
        if self.past_pivot:
            return  # past the pivot the saga only goes forward, however late
        if self.deadline is not None and self.clock.now() >= self.deadline:
            raise _Stop("abort", "deadline exceeded")

    async def _sleep_until(self, when: str | None) -> None:
        if when:
            remaining = (datetime.fromisoformat(when) - self.clock.now()).total_seconds()
            if remaining > 0:
                await self.clock.sleep(remaining)
