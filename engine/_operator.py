"""An operator's requests, as the run that drives the saga carries them out (private).

An operator acts on a saga by writing a request on its row (retry, resume, compensate,
cancel). A retry reaches a running saga through :meth:`OperatorRequests.poke` and cuts short
the backoff it waits out; a compensate or a cancel makes the next fenced append refuse
(:meth:`OperatorRequests.cancel_stop` says which it was); a parked saga is claimed for the
request that woke it (:meth:`OperatorRequests.answer_parked`). Each request is recorded as an
``OperatorAction`` event once, before what it causes.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from engine._state import RunState, _Stop
from engine.errors import CancelRequested
from engine.history import CANCEL, COMPENSATE, RESUME, RETRY, STARTED, EventType

__all__ = ["OperatorRequests"]


class OperatorRequests:
    """The requests one run has seen: a retry waiting to be recorded, those recorded, and the
    wake-up that cuts a backoff short."""

    def __init__(self, state: RunState) -> None:
        self._state = state
        request = state.record.operator_request
        self.request = request if request is not None and request["action"] == RETRY else None
        self.handled: set[str] = set()
        self._wake = asyncio.Event()
        if self.request is not None:
            self._wake.set()

    def poke(self, request: dict[str, Any]) -> None:
        """An operator asks for a retry now: cut short the backoff this run waits out (or the
        next one), and record the action before the attempt it causes."""
        if request["action"] == RETRY and request["id"] not in self.handled:
            self.request = request
            self._wake.set()

    def record(self, request: dict[str, Any]) -> None:
        state = self._state
        self.handled.add(request["id"])
        state.projection.handled_request = request["id"]  # the append clears it from the row
        payload = {
            "action": request["action"],
            "reason": request["reason"],
            "requested_at": request["at"],
        }
        if request["action"] == RESUME and state.deadline is not None:
            payload["deadline"] = state.deadline.isoformat()
        state.emit(EventType.OPERATOR_ACTION, payload=payload)
        state.log.info("saga.operator_action", action=request["action"], reason=request["reason"])

    def take_retry(self) -> None:
        """Record the retry an operator asked for, if one waits: before the attempt it causes,
        or beside the outcome of the attempt that was in flight when it came."""
        request, self.request = self.request, None
        if request is not None and request["id"] not in self.handled:
            self.record(request)

    def cancel_stop(self, refused: CancelRequested) -> _Stop:
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

    def answer_parked(self) -> _Stop | None:
        """Record the operator's action that brought a parked saga here: ``None`` when the
        workflow body is to run (resume), else the ``abort`` that compensates the saga."""
        state = self._state
        request = state.record.operator_request
        assert request is not None, "a parked saga is driven only for an operator's action"
        if request["action"] == RESUME and state.deadline is not None and state.history:
            # However long it was parked, a resumed saga gets its whole time budget again.
            began = state.history[0].created_at
            assert began is not None
            state.deadline = state.clock.now() + (state.deadline - began)
        self.record(request)
        if request["action"] == RESUME:
            p = state.projection
            p.status, p.current_step, p.failure_reason = STARTED, None, None
            p.needs_operator = False
            return None
        if request["action"] == CANCEL:
            return _Stop("abort", "cancelled", cancelled=True)
        return _Stop("abort", f"operator: {request['reason']}")

    async def backoff(self, seconds: float) -> None:
        """Wait out a retry's backoff, or less when an operator asks for a retry now."""
        if not self._wake.is_set():
            sleeper = asyncio.ensure_future(self._state.clock.sleep(seconds))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()
        self._wake.clear()

    async def backoff_until(self, when: str | None) -> None:
        if when:
            remaining = (datetime.fromisoformat(when) - self._state.clock.now()).total_seconds()
            if remaining > 0:
                await self.backoff(remaining)
