"""Test kit: a driver that runs an engine's sagas to the end, and fake services that behave
like the real ones towards the engine.

:func:`run_until_idle` drives every saga of an :class:`~engine.api.Engine` until none is left
to run; with a :class:`~engine.clock.FakeClock` it moves time to the next sleeper whenever
every saga waits on the clock, so retries and timeouts take no real time.

:class:`FakeServices` serves forward steps and their compensations over an
:class:`~engine.adapters.InMemoryTransport`: a forward step takes effect once per idempotency
key (a re-send returns the recorded reply), a compensation undoes the effect once or, when the
forward step never ran, leaves a tombstone so that a late forward command does nothing
(``AlreadyCompensated``). ``journal`` lists what took effect, in order: ``("do", target)`` and
``("undo", target)``; ``executions`` counts effects per target (never more than one per saga).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Callable
from typing import Any

from engine.adapters.memory_transport import Handler, InMemoryTransport, current_request
from engine.api import Engine
from engine.clock import FakeClock

__all__ = ["BusinessError", "FakeServices", "run_until_idle"]


async def run_until_idle(
    engine: Engine, *, recover: bool = True, max_idle_rounds: int = 200
) -> None:
    """Drive every saga of ``engine`` until none is left to run.

    ``recover`` also claims sagas that are unowned, expired or ours but not running — a saga
    abandoned after a (simulated) crash included; ``recover=False`` plays a process that stops
    driving what it lost. With a :class:`FakeClock`, time jumps to the next sleeper whenever
    every saga waits on the clock.
    """
    fake = engine.clock if isinstance(engine.clock, FakeClock) else None
    idle = 0
    while True:
        if not engine.running:
            if not recover or await engine.recover() == 0:
                return
            continue
        if fake is not None:
            await _settle(engine, fake)
            if not engine.running:
                continue
            if fake.advance_to_next():
                continue
            idle += 1
            if idle > max_idle_rounds:
                raise RuntimeError("run_until_idle: sagas are blocked outside the clock")
        await asyncio.wait(
            engine.drive_tasks(),
            return_when=asyncio.FIRST_COMPLETED,
            timeout=0.05 if fake is not None else None,
        )


async def _settle(engine: Engine, clock: FakeClock) -> None:
    """Let every saga run until nothing moves: same sagas, sleepers and counts three times."""
    stable = 0
    last: tuple[int, ...] = ()
    while stable < 3:
        for _ in range(10):
            await asyncio.sleep(0)
        counters = engine.counters
        state = (
            engine.running,
            clock.sleepers,
            counters.steps_completed,
            counters.step_retries,
            counters.compensations_completed,
        )
        stable = stable + 1 if state == last else 0
        last = state


class BusinessError(Exception):
    """A business refusal (crosses the wire ``non_retryable``)."""

    non_retryable = True


class AlreadyCompensated(BusinessError):
    pass


class TransientServiceError(Exception):
    """A retryable service error (``non_retryable`` False)."""


@dataclasses.dataclass
class FakeServices:
    """Forward targets -> compensation targets (``None``: not compensable)."""

    steps: dict[str, str | None]
    # target -> its reply, or a function of the command's payload that makes it
    reply: dict[str, dict[str, Any] | Callable[[dict[str, Any]], dict[str, Any]]] = (
        dataclasses.field(default_factory=dict)
    )
    refuse: set[str] = dataclasses.field(default_factory=set)  # targets answering BusinessError
    comp_failures: dict[str, int] = dataclasses.field(default_factory=dict)  # comp -> n failures
    journal: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    executions: collections.Counter[tuple[str, str]] = dataclasses.field(
        default_factory=collections.Counter
    )

    def __post_init__(self) -> None:
        self._effects: dict[str, dict[str, Any]] = {}
        self._undone: set[str] = set()
        self._tombstones: set[str] = set()
        self.calls: collections.Counter[str] = collections.Counter()

    def transport(self, clock: FakeClock | None = None) -> InMemoryTransport:
        handlers: dict[str, Handler] = {}
        for target, comp in self.steps.items():
            handlers[target] = self._forward(target)
            if comp is not None:
                handlers[comp] = self._compensate(comp, target)
        return InMemoryTransport(handlers, clock=clock)

    def effective(self, workflow_id: str) -> list[str]:
        """Targets whose effect is in place (done and not undone) for one saga."""
        return [
            t
            for (w, kind, t) in self.journal
            if w == workflow_id and kind == "do" and f"{workflow_id}:{t}" not in self._undone
        ]

    def for_saga(self, workflow_id: str) -> list[tuple[str, str]]:
        return [(kind, t) for (w, kind, t) in self.journal if w == workflow_id]

    def _forward(self, target: str) -> Handler:
        async def handle(payload: dict[str, Any]) -> dict[str, Any]:
            info = current_request()
            assert info is not None
            self.calls[target] += 1
            workflow_id = info.headers["workflow_id"]
            slot = f"{workflow_id}:{target}"
            if slot in self._tombstones:
                raise AlreadyCompensated(f"{target} was compensated first")
            if slot in self._effects:
                return self._effects[slot]
            if target in self.refuse:
                raise BusinessError(f"{target} refused")
            answer = self.reply.get(target, {"done": target})
            result = answer(payload) if callable(answer) else dict(answer)
            self._effects[slot] = result
            self.journal.append((workflow_id, "do", target))
            self.executions[(workflow_id, target)] += 1
            return result

        return handle

    def _compensate(self, comp: str, target: str) -> Handler:
        async def handle(payload: dict[str, Any]) -> dict[str, Any]:
            info = current_request()
            assert info is not None
            self.calls[comp] += 1
            if self.comp_failures.get(comp, 0) > 0:
                self.comp_failures[comp] -= 1
                raise TransientServiceError(f"{comp} is down")
            workflow_id = info.headers["workflow_id"]
            slot = f"{workflow_id}:{target}"
            if slot in self._effects and slot not in self._undone:
                self._undone.add(slot)
                self.journal.append((workflow_id, "undo", target))
                self.executions[(workflow_id, comp)] += 1
            elif slot not in self._effects:
                self._tombstones.add(slot)
            return {"compensated": target}

        return handle
