"""What one run knows of its saga, and how it writes to it (private).

:class:`RunState` is read from the saga's row and history when a run takes the saga under a
lease: the events by position, the projection, the deadline, whether compensation or a cancel
was already recorded. Decisions are buffered in ``pending`` by :meth:`RunState.emit` and written
by :meth:`RunState.flush` in one fenced append; a refused or failed append unwinds the run with
:class:`_Stop` (``abandon``). The replay loop (``engine._runtime``), the step's attempts
(``engine._attempts``), the compensation (``engine._compensation``) and the operator's requests
(``engine._operator``) all work through it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog

from engine.errors import CancelRequested, SagaError
from engine.history import Event, EventType, Projection, SagaRecord
from engine.observer import EngineCounters, SagaObserver
from engine.ports import Clock, HistoryStore, Transport
from engine.workflow import RetryPolicy, StepCall

__all__ = ["RunConfig", "RunDeps", "RunState"]

ET = EventType
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
    """A compensation on the run's stack: registered with its step (``position``, ``step``),
    run when the saga compensates, and how far it got."""

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


class RunState:
    """One saga's row and history as this run (one lease, fencing ``version``) sees them."""

    def __init__(
        self,
        config: RunConfig,
        deps: RunDeps,
        record: SagaRecord,
        events: list[Event],
        version: int,
    ) -> None:
        self.config = config
        self.store = deps.store
        self.transport = deps.transport
        self.clock = deps.clock
        self.observer = deps.observer
        self.counters = deps.counters
        self._finished = deps.finished
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
        self.cancel_seen = False  # a compensating run stops asking once it saw the flag
        self.stack: list[_Compensation] = []
        self.log = _log.bind(saga_id=record.saga_id, workflow_id=record.workflow_id)

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

    def reached(self, call: StepCall) -> None:
        """A step completed (live or replayed): its milestone becomes the status, and a pivot
        turns the saga forward-only."""
        if call.milestone is not None:
            self.projection.status = call.milestone
        if call.pivot:
            self.past_pivot = True
            self.projection.past_pivot = True

    def remember(self) -> None:
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

    def headers(self, step: str, attempt: int) -> dict[str, str]:
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

    def alert(self, attempt: int, what: str, log: Any, wire: dict[str, Any]) -> None:
        """Flag the saga for an operator once one step or compensation has failed
        ``compensation_alert_attempts`` times."""
        if attempt >= self.config.compensation_alert_attempts and not (
            self.projection.needs_operator
        ):
            self.projection.needs_operator = True
            self.counters.operator_alerts += 1
            self.observer.operator_flagged(self.record.workflow_name)
            log.error(what, attempt=attempt, error=wire["type"])
