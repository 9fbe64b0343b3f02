"""The saga page's two lanes (``/ui/sagas/{order_id}``), drawn from the saga's history.

The forward lane holds a :class:`Box` per step, in order, the pivot marked; the compensation
lane a :class:`Box` per compensation, in its step's column, in the order the compensation runs
them. A box carries its state (``SCHEDULED``, ``RETRYING``, ``COMPLETED``, ``FAILED``; for a
compensation ``PENDING``, ``COMPENSATING``, ``COMPENSATED``), attempts, duration and last
error. The page around them: :mod:`services.orchestrator.console`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime

from engine.history import Event, EventType
from services._kit import console as kit

__all__ = ["Box", "Lanes", "lanes"]

ET = EventType


@dataclasses.dataclass(frozen=True)
class Box:
    """One box of a lane: a forward step or a compensation, in its column (its step's)."""

    name: str
    column: int
    state: str
    attempts: int
    duration: str
    last_error: str
    pivot: bool = False
    undoes: str = ""


@dataclasses.dataclass(frozen=True)
class Lanes:
    forward: tuple[Box, ...]
    compensations: tuple[Box, ...]  # in the order they run (right to left)


def lanes(history: Sequence[Event]) -> Lanes:
    """The saga's steps and compensations as the console draws them, from its history.

    A compensation sits in its step's column; the compensation lane lists them in the order
    the compensation runs them (the reverse of their steps), those not begun yet as PENDING.
    The pivot is the step whose ``StepScheduled`` says so; in a history recorded before
    that was written, the last step with a compensation that a step without one followed
    (marked once it is passed).
    """
    groups: dict[int, list[Event]] = {}
    for event in history:
        if event.position is not None:
            groups.setdefault(event.position, []).append(event)
    steps = [(pos, g) for pos, g in sorted(groups.items()) if g[0].type == ET.STEP_SCHEDULED]
    forward: list[Box] = []
    undo: dict[int, Box] = {}
    begun: list[tuple[int, int]] = []  # (seq, position) of each compensation scheduled
    for column, (position, group) in enumerate(steps, start=1):
        first = group[0]
        compensation = (first.payload.get("compensation") or {}).get("target")
        state, attempts, error, finished = "SCHEDULED", first.attempt, None, None
        c_state, c_attempts, c_error = "PENDING", 0, None
        c_started: datetime | None = None
        c_finished: datetime | None = None
        for event in group:
            if event.type in (ET.STEP_RETRYING, ET.STEP_TIMED_OUT):
                state, error = "RETRYING", event.payload.get("error")
                attempts = max(attempts, event.attempt + 1)
            elif event.type in (ET.STEP_COMPLETED, ET.STEP_FAILED):
                state = "COMPLETED" if event.type == ET.STEP_COMPLETED else "FAILED"
                finished, attempts = event.created_at, max(attempts, event.attempt)
                if event.type == ET.STEP_FAILED:
                    error = event.payload.get("error")
            elif event.type == ET.COMPENSATION_SCHEDULED:
                c_state, c_attempts, c_started = "COMPENSATING", 1, event.created_at
                begun.append((event.seq, position))
            elif event.type == ET.COMPENSATION_RETRYING:
                c_error = event.payload.get("error")
                c_attempts = max(c_attempts, event.attempt + 1)
            elif event.type == ET.COMPENSATION_COMPLETED:
                c_state, c_finished = "COMPENSATED", event.created_at
                c_attempts = max(c_attempts, event.attempt)
        duration = kit.duration(first.created_at, finished)
        forward.append(
            Box(first.step or "", column, state, attempts, duration, kit.error_line(error))
        )
        if compensation:
            undo[position] = Box(
                compensation,
                column,
                c_state,
                c_attempts,
                kit.duration(c_started, c_finished),
                kit.error_line(c_error),
                undoes=first.step or "",
            )
    marked = [i for i, (_, g) in enumerate(steps) if g[0].payload.get("pivot")]
    has_undo = [bool((g[0].payload.get("compensation") or {}).get("target")) for _, g in steps]
    inferred = [i for i in range(len(forward) - 1) if has_undo[i] and not has_undo[i + 1]]
    for i in (marked or inferred)[:1]:
        forward[i] = dataclasses.replace(forward[i], pivot=True)
    started = [e for e in history if e.type == ET.COMPENSATION_STARTED]
    planned = [int(p) for p in started[-1].payload.get("steps", [])] if started else []
    order = list(dict.fromkeys([*(p for _, p in sorted(begun)), *planned]))
    return Lanes(tuple(forward), tuple(undo[p] for p in order if p in undo))
