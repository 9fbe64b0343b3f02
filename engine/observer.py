"""What the engine reports while sagas run: the hook its metrics hang on.

An :class:`Engine <engine.api.Engine>` calls its :class:`SagaObserver` when a saga starts or is
resumed, after each attempt of a step (with its outcome and round-trip time), after each
attempt of a compensation, when a saga is flagged for an operator, and when a saga finishes
(``COMPLETED``, ``FAILED`` or ``PARKED``, with the step whose failure made it compensate).

:class:`EngineCounters` are the same facts as plain numbers, kept by every engine.

The calls are synchronous and run on the saga's hot path: an observer only counts (no I/O,
no awaiting). The engine knows nothing of Prometheus; the process that runs it wires an
observer that does (:mod:`orchestration_pattern.metrics`).

Step attempt outcomes: ``completed``; ``refused`` (a business error: not retried);
``timed_out`` and ``transport_error`` (retried while the step's policy allows). Compensation
attempt outcomes: ``completed``, ``already_compensated`` (the forward step never ran: success
too) and ``failed`` (retried until it succeeds).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

__all__ = ["NO_FAILED_STEP", "EngineCounters", "NullObserver", "SagaObserver"]

NO_FAILED_STEP = "none"
"""``failed_step`` of a saga that did not compensate because a step failed (it completed, was
cancelled, ran past its deadline, or was parked)."""


@dataclasses.dataclass
class EngineCounters:
    """Monotonic counters for metrics (Prometheus collectors read them)."""

    sagas_started: int = 0
    sagas_completed: int = 0
    sagas_failed: int = 0
    sagas_parked: int = 0
    sagas_recovered: int = 0
    steps_completed: int = 0
    step_retries: int = 0
    compensations_completed: int = 0
    compensation_retries: int = 0
    operator_alerts: int = 0  # sagas flagged needs_operator (compensation kept failing)
    abandoned: int = 0  # runs stopped because the store refused (lost lease) or failed


class SagaObserver(Protocol):
    """Receives the engine's saga and step events (see the module docstring)."""

    def saga_started(self, workflow: str) -> None:
        """A new saga of ``workflow`` was recorded and is about to run."""
        ...

    def saga_resumed(self, workflow: str) -> None:
        """An unfinished saga was claimed from history (recovery or takeover)."""
        ...

    def saga_finished(self, workflow: str, status: str, failed_step: str) -> None:
        """The saga reached ``status``; ``failed_step`` is a step name or ``"none"``."""
        ...

    def step_attempted(self, step: str, outcome: str, seconds: float) -> None:
        """One request of forward step ``step`` ended with ``outcome`` after ``seconds``."""
        ...

    def compensation_attempted(self, step: str, outcome: str) -> None:
        """One request of compensation ``step`` ("service.method") ended with ``outcome``."""
        ...

    def operator_flagged(self, workflow: str) -> None:
        """A compensation kept failing: the saga is now flagged ``needs_operator``."""
        ...


class NullObserver:
    """Observes nothing: the engine's default."""

    def saga_started(self, workflow: str) -> None:
        return None

    def saga_resumed(self, workflow: str) -> None:
        return None

    def saga_finished(self, workflow: str, status: str, failed_step: str) -> None:
        return None

    def step_attempted(self, step: str, outcome: str, seconds: float) -> None:
        return None

    def compensation_attempted(self, step: str, outcome: str) -> None:
        return None

    def operator_flagged(self, workflow: str) -> None:
        return None
