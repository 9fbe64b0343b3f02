"""The engine's whole error tree.

::

    SagaError                         root of everything the engine raises
    ├── TransientError                retried by RetryPolicy (retryable = True)
    │   ├── StepTimeout               no reply within the step's timeout
    │   ├── TransportError            broker/connection trouble; the request may or may not have run
    │   └── StoreUnavailable          the history store could not be reached
    ├── RemoteError                   an error that crossed the wire {type, message, non_retryable,
    │                                 details}; retryable unless ``non_retryable``
    ├── StepFailed                    a step gave up (business refusal or retries exhausted);
    │                                 raised into the workflow body, carries ``cause``
    ├── NondeterminismError           replayed code asked for something else than history holds
    ├── ConcurrencyConflict           duplicate seq / stale fencing version: someone else owns it
    ├── CancelRequested               the store refused an append because a cancel is pending
    ├── WorkflowAlreadyStarted        same workflow_id, different input (or different workflow)
    ├── SagaQueueFull                 a start refused: too many sagas already wait their turn
    ├── SagaNotFound                  no saga with that workflow_id
    ├── ActionRefused                 an operator action that does not apply to the saga now
    │   └── SagaAlreadyFinished       cancel of a COMPLETED/FAILED saga
    └── WorkflowDefinitionError       a function that cannot be a workflow

"Retryable" is a property of the error (:func:`is_retryable`); ``RetryPolicy.non_retryable``
adds type names on top of it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ActionRefused",
    "CancelRequested",
    "ConcurrencyConflict",
    "NondeterminismError",
    "RemoteError",
    "SagaAlreadyFinished",
    "SagaError",
    "SagaNotFound",
    "SagaQueueFull",
    "StepFailed",
    "StepTimeout",
    "StoreUnavailable",
    "TransientError",
    "TransportError",
    "WorkflowAlreadyStarted",
    "WorkflowDefinitionError",
    "is_retryable",
]


class SagaError(Exception):
    """Root of the engine's errors."""

    retryable: bool = False

    @property
    def type_name(self) -> str:
        return type(self).__name__

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type_name,
            "message": str(self),
            "non_retryable": not self.retryable,
            "details": {},
        }


class TransientError(SagaError):
    """Something that may work if tried again."""

    retryable = True


class StepTimeout(TransientError):
    """No reply within the step's timeout; the command may still have run."""


class TransportError(TransientError):
    """The transport failed to deliver a request or its reply."""


class StoreUnavailable(TransientError):
    """The history store failed; the outcome of the write is unknown."""


class RemoteError(SagaError):
    """An error reported by the remote side, as it crossed the wire."""

    def __init__(
        self,
        type: str,
        message: str = "",
        *,
        non_retryable: bool = False,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{type}: {message}" if message else type)
        self.type = type
        self.message = message
        self.non_retryable = non_retryable
        self.details = details or {}
        self.retryable = not non_retryable

    @property
    def type_name(self) -> str:
        return self.type

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> RemoteError:
        return cls(
            str(wire.get("type", "RemoteError")),
            str(wire.get("message", "")),
            non_retryable=bool(wire.get("non_retryable", False)),
            details=dict(wire.get("details") or {}),
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "message": self.message,
            "non_retryable": self.non_retryable,
            "details": self.details,
        }


class StepFailed(SagaError):
    """A step gave up; ``cause`` says why, ``took_effect`` whether it may have happened."""

    def __init__(self, step: str, attempts: int, cause: dict[str, Any], *, took_effect: bool):
        super().__init__(f"{step} failed after {attempts} attempt(s): {_describe(cause)}")
        self.step = step
        self.attempts = attempts
        self.cause = cause
        self.took_effect = took_effect

    @property
    def cause_type(self) -> str:
        return str(self.cause.get("type", ""))


class NondeterminismError(SagaError):
    """Replayed workflow code diverged from its recorded history."""


class ConcurrencyConflict(SagaError):
    """Append refused: duplicate seq, stale fencing version, or another owner."""


class CancelRequested(SagaError):
    """Append refused because the saga has a pending cancel request; ``request`` is the
    operator's compensate request behind it, if it was one."""

    def __init__(self, saga_id: str, request: dict[str, Any] | None = None) -> None:
        super().__init__(saga_id)
        self.request = request


class WorkflowAlreadyStarted(SagaError):
    """The workflow_id is taken by a saga with another input or workflow."""


class SagaQueueFull(SagaError):
    """A start refused because ``waiting`` sagas already wait for a slot in this engine (its
    ``max_queued``); nothing was written. Try again after ``retry_after`` seconds."""

    def __init__(self, waiting: int, *, retry_after: float) -> None:
        super().__init__(f"{waiting} sagas are waiting to run; try again shortly")
        self.waiting = waiting
        self.retry_after = retry_after


class SagaNotFound(SagaError):
    """No saga with that workflow_id."""


class ActionRefused(SagaError):
    """An operator action (cancel, retry, resume, compensate) that does not apply to the saga
    in its ``status`` now."""

    def __init__(self, message: str, *, status: str) -> None:
        super().__init__(message)
        self.status = status


class SagaAlreadyFinished(ActionRefused):
    """The saga is already COMPLETED or FAILED."""


class WorkflowDefinitionError(SagaError, TypeError):
    """The decorated object cannot be a workflow."""


def is_retryable(exc: BaseException) -> bool:
    """True when retrying ``exc`` may help (transient/transport errors, retryable remote ones)."""
    if isinstance(exc, SagaError):
        return exc.retryable
    return isinstance(exc, (ConnectionError, TimeoutError, OSError))


def _describe(wire: dict[str, Any]) -> str:
    message = wire.get("message") or ""
    return f"{wire.get('type')}: {message}" if message else str(wire.get("type"))
