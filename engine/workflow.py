"""What a workflow author uses: ``@workflow``, :class:`WorkflowContext`, :class:`RetryPolicy`
and :class:`Activity`, the shape of a step the context can call.

A workflow is ``async def wf(ctx: WorkflowContext, command: SomeModel) -> ResultModel``: the
engine validates the saga's recorded input into ``SomeModel`` (a pydantic model; an
unannotated or ``dict`` input stays JSON) and records a returned model as its JSON. Its body
touches the world only through ``ctx``:

- ``await ctx.step(ACTIVITY, Command(...))`` sends the command to the activity's service and
  returns its reply as the activity's result model. The activity's compensation (with its input
  made from the command) is registered *before* the command leaves, and its milestone becomes
  the saga's status when the step completes;
- ``await ctx.step("service.method", {...}, compensate=..., milestone=...)``, the same with
  names and JSON, for workflows built from data (the seed's declarative definition);
- ``ctx.now()``, ``ctx.uuid()``, ``ctx.sleep(seconds)``: recorded, so replay answers the same;
- ``ctx.patched("change-id")`` / ``ctx.deprecate_patch(...)``: change a workflow while sagas
  recorded by its older code are in flight.

Nothing here does I/O: the context hands each call to the run that replays the saga
(``engine._runtime``) through the narrow :class:`_Driver` it needs.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
import uuid as _uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Protocol, TypeVar, overload

from pydantic import BaseModel

from engine._body_check import NondeterministicCall, check_body, nondeterministic_calls
from engine.errors import WorkflowDefinitionError

__all__ = [
    "Activity",
    "NondeterministicCall",
    "RetryPolicy",
    "StepCall",
    "Workflow",
    "WorkflowContext",
    "nondeterministic_calls",
    "workflow",
    "workflow_input_model",
    "workflow_name",
]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)
In_contra = TypeVar("In_contra", bound=BaseModel, contravariant=True)
Out_co = TypeVar("Out_co", bound=BaseModel, covariant=True)
Workflow = Callable[["WorkflowContext", Any], Awaitable[Any]]


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: attempt n waits ``initial_interval * backoff**(n-1)``, capped.

    ``max_attempts=None`` retries forever. ``non_retryable`` names wire error types never
    retried, on top of errors that say ``non_retryable`` themselves.
    """

    initial_interval: float = 0.2
    backoff: float = 2.0
    max_interval: float = 10.0
    max_attempts: int | None = 5
    non_retryable: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.initial_interval < 0 or self.backoff < 1 or self.max_interval < 0:
            raise ValueError("RetryPolicy needs initial_interval >= 0, backoff >= 1")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be >= 1 or None")

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        return float(min(self.initial_interval * self.backoff ** (attempt - 1), self.max_interval))

    def allows(self, attempt: int) -> bool:
        """Whether attempt number ``attempt`` may be made."""
        return self.max_attempts is None or attempt <= self.max_attempts


class Activity(Protocol[In_contra, Out_co]):
    """A step ``ctx.step`` can call: an entry of an operation catalogue.

    ``name`` is ``"service.method"``; the reply is validated into ``result``; ``milestone``
    (or ``None``) becomes the saga's status when the step completes; ``compensation_for``
    gives the compensation's name and input for a command, or ``None`` if nothing undoes it.
    Typed by its command, so passing another command model is a type error.
    """

    @property
    def name(self) -> str: ...

    @property
    def result(self) -> type[Out_co]: ...

    @property
    def milestone(self) -> str | None: ...

    def compensation_for(self, command: In_contra) -> tuple[str, BaseModel] | None: ...


@overload
def workflow(fn: F, *, name: str | None = None) -> F: ...


@overload
def workflow(fn: None = None, *, name: str | None = None) -> Callable[[F], F]: ...


def workflow(fn: F | None = None, *, name: str | None = None) -> Any:
    """Mark ``async def wf(ctx: WorkflowContext, input)`` as a workflow (tags, does not wrap).

    The body must be deterministic: only ``ctx.step``/``ctx.now``/``ctx.uuid``/``ctx.sleep``
    touch the world. A body that calls the clock, randomness, ``uuid4``, ``asyncio.sleep`` or
    does I/O itself is refused here, naming the line and what to call instead (a check of
    the source, the cheap half of a sandbox: what it cannot see, replay still catches).
    ``name`` (default: the function's name) is what history records. An input annotated with
    a pydantic model is validated into it on every run.
    """

    def tag(func: F) -> F:
        tagged = func  # returned as is: tag, don't wrap
        if not inspect.iscoroutinefunction(func):
            raise WorkflowDefinitionError(f"workflow {func!r} must be an async function")
        params = list(inspect.signature(func).parameters.values())
        if len(params) != 2:
            raise WorkflowDefinitionError(
                f"workflow {func.__qualname__} must take (ctx, input), got {len(params)} params"
            )
        check_body(func)
        tagged.__workflow_name__ = name or func.__name__  # type: ignore[attr-defined]
        tagged.__workflow_input__ = _input_model(func, params[1].name)  # type: ignore[attr-defined]
        return tagged

    return tag(fn) if fn is not None else tag


def _input_model(func: Callable[..., Any], param: str) -> type[BaseModel] | None:
    try:
        hints = typing.get_type_hints(func)
    except NameError:  # an annotation only a type checker can resolve: the input stays JSON
        return None
    hint = hints.get(param)
    return hint if isinstance(hint, type) and issubclass(hint, BaseModel) else None


def workflow_name(wf: Workflow) -> str:
    """The name ``wf`` records in history; ``WorkflowDefinitionError`` if not a workflow."""
    name = getattr(wf, "__workflow_name__", None)
    if not isinstance(name, str):
        raise WorkflowDefinitionError(f"{wf!r} is not decorated with @workflow")
    return name


def workflow_input_model(wf: Workflow) -> type[BaseModel] | None:
    """The pydantic model ``wf`` takes as input, or ``None`` when it takes JSON."""
    model: type[BaseModel] | None = getattr(wf, "__workflow_input__", None)
    return model


@dataclasses.dataclass(frozen=True)
class StepCall:
    """One ``ctx.step`` as the run receives it: where it stands, what it sends, what undoes it.

    ``compensation`` is ``(target, payload, idempotency key)``, registered before the command
    leaves. ``pivot``: once this step completes the saga only goes forward.
    """

    position: int
    target: str
    payload: dict[str, Any]
    key: str
    compensation: tuple[str, dict[str, Any], str] | None
    retry: RetryPolicy | None
    timeout: float | None
    milestone: str | None
    pivot: bool = False


class _Driver(Protocol):
    """What a :class:`WorkflowContext` needs of the run that replays its saga."""

    @property
    def recorded_positions(self) -> int: ...

    async def step(self, call: StepCall) -> dict[str, Any]: ...

    async def marker(self, position: int, name: str, make: Callable[[], str]) -> str: ...

    async def sleep(self, position: int, seconds: float) -> None: ...

    def patched(self, position: int, change_id: str, *, deprecated: bool = False) -> bool: ...

    def now(self) -> datetime: ...


def _split(target: str) -> tuple[str, str]:
    service, _, method = target.partition(".")
    if not service or not method:
        raise ValueError(f"step target must be 'service.method', got {target!r}")
    return service, method


class WorkflowContext:
    """What a workflow body may use: deterministic, recorded operations only.

    ``workflow_id`` is the business key (the order id); ``attempt`` is the execution attempt (1,
    then +1 each time the saga is recovered or taken over) — for logging, never for branching.
    """

    def __init__(self, driver: _Driver, *, workflow_id: str, saga_id: str, attempt: int) -> None:
        self._driver = driver
        self._position = 0
        self._key_counts: dict[str, int] = {}
        self.workflow_id = workflow_id
        self.saga_id = saga_id
        self.attempt = attempt

    @property
    def is_replaying(self) -> bool:
        return self._position < self._driver.recorded_positions

    @property
    def position(self) -> int:
        """How many recorded operations the body has asked for so far."""
        return self._position

    @overload
    async def step(
        self,
        activity: Activity[In, Out],
        command: In,
        *,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        pivot: bool = False,
    ) -> Out: ...

    @overload
    async def step(
        self,
        activity: str,
        command: dict[str, Any],
        *,
        compensate: str | None = None,
        compensation_payload: dict[str, Any] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        milestone: str | None = None,
        pivot: bool = False,
    ) -> dict[str, Any]: ...

    async def step(
        self,
        activity: Activity[Any, Any] | str,
        command: BaseModel | dict[str, Any],
        *,
        compensate: str | None = None,
        compensation_payload: dict[str, Any] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        milestone: str | None = None,
        pivot: bool = False,
    ) -> Any:
        """Send ``command`` to ``activity`` and return its reply.

        Typed: ``ctx.step(RESERVE_STOCK, ReserveStock(...))`` returns the activity's result
        model; its compensation and milestone come from the activity. By name:
        ``ctx.step("service.method", payload, compensate="service.undo",
        compensation_payload=..., milestone=...)`` returns the reply's JSON (the compensation
        gets ``payload`` unless ``compensation_payload`` is given).

        The compensation is registered *before* the command is sent. Business errors
        (``non_retryable``) are not retried and mean the step did not take effect; transport
        errors and timeouts are retried by ``retry`` (the engine's default policy when
        ``None``). Raises :class:`~engine.errors.StepFailed` when the step gives up.

        ``pivot=True`` marks the saga's point of no return: once this step has completed, the
        saga only goes forward. Every later step is retried until it is done (a business
        refusal included; the saga is flagged ``needs_operator`` after the engine's alert
        attempts), the saga deadline no longer applies, and cancel or compensate is refused.
        The idempotency key is
        ``f"{workflow_id}:{method}"`` (``:n`` appended for the n-th repeat of one target).
        """
        undo: tuple[str, dict[str, Any]] | None = None
        if isinstance(activity, str):
            assert isinstance(command, dict), "a step by name sends JSON"
            target, payload, result_model = activity, command, None
            if compensate is not None:
                undo = compensate, command if compensation_payload is None else compensation_payload
        else:
            assert isinstance(command, BaseModel), "a typed step sends its command model"
            target, result_model = activity.name, activity.result
            # What travels is what was set: a field left at its default is the receiver's
            # default too, since it validates the payload with the same model.
            payload = command.model_dump(mode="json", exclude_defaults=True)
            milestone = activity.milestone
            compensation = activity.compensation_for(command)
            if compensation is not None:
                undo_target, undo_input = compensation
                undo = undo_target, undo_input.model_dump(mode="json", exclude_defaults=True)
        _, method = _split(target)
        position = self._next_position()
        key = self._key(target, method)
        registered = None
        if undo is not None:
            registered = (undo[0], undo[1], self._key(undo[0], _split(undo[0])[1]))
        call = StepCall(
            position, target, payload, key, registered, retry, timeout, milestone, pivot
        )
        reply = await self._driver.step(call)
        return reply if result_model is None else result_model.model_validate(reply)

    async def now(self) -> datetime:
        """The current (naive UTC) time, recorded; replay returns the recorded value."""
        value = await self._driver.marker(
            self._next_position(), "now", lambda: self._driver.now().isoformat()
        )
        return datetime.fromisoformat(value)

    async def uuid(self) -> str:
        """A random UUID string, recorded; replay returns the recorded value."""
        return await self._driver.marker(self._next_position(), "uuid", lambda: str(_uuid.uuid4()))

    async def sleep(self, seconds: float) -> None:
        """A durable timer: a recovered saga sleeps only what is left."""
        await self._driver.sleep(self._next_position(), seconds)

    def patched(self, change_id: str) -> bool:
        """Whether this saga runs the code of the change ``change_id``: ``True`` for a new run
        (the answer is recorded) and for a saga that reaches this point on the new code;
        ``False`` when replaying a history recorded before the change, which must go on as
        the old code did::

            if ctx.patched("fraud-check"):
                await ctx.step(CHECK_FRAUD, ...)

        Once no history in flight predates the change, :meth:`deprecate_patch` retires it.
        """
        return self._patch(change_id, deprecated=False)

    def deprecate_patch(self, change_id: str) -> None:
        """Retire the patch ``change_id``: the new code runs unconditionally and records
        nothing, while histories that recorded the patch still replay. Remove the call too
        once ``cloudmart replay`` finds no history in flight with the patch."""
        self._patch(change_id, deprecated=True)

    def _patch(self, change_id: str, *, deprecated: bool) -> bool:
        # The marker takes a position only when history holds it (or a live run records it):
        # a history from before the change goes on at the same position down the old branch.
        taken = self._driver.patched(self._position, change_id, deprecated=deprecated)
        if taken:
            self._position += 1
        return taken

    def _next_position(self) -> int:
        position = self._position
        self._position += 1
        return position

    def _key(self, target: str, method: str) -> str:
        count = self._key_counts[target] = self._key_counts.get(target, 0) + 1
        base = f"{self.workflow_id}:{method}"
        return base if count == 1 else f"{base}:{count}"
