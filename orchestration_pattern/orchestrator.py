"""The saga orchestrator: the order saga of :mod:`workflows` on the durable engine.

:class:`Orchestrator` is what the REST routes of port 8005 call. :func:`build_engine` is the
composition root of the orchestration side: the SQL history store on the process's database,
and RabbitMQ request/reply to the services — or, embedded, an in-process transport that calls
the same business operations directly.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Collection, Sequence
from typing import Any, cast

import structlog

from activities import Database, check_order, order_id_for
from activities.errors import DomainError, IdempotencyKeyReused, SagaBacklogFull
from activities.registry import OPERATIONS, invoke
from contracts.commands import CreateOrder, PlaceOrder
from engine import Engine, RetryPolicy, SagaHandle, SagaStatus
from engine.adapters import InMemoryTransport, SqlHistoryStore
from engine.errors import (
    ActionRefused,
    SagaAlreadyFinished,
    SagaNotFound,
    SagaQueueFull,
    WorkflowAlreadyStarted,
)
from engine.history import CANCEL, COMPENSATE, RESUME, RETRY, Event, SagaRecord
from engine.listing import SagaCounts, SagaFilter, SagaPage
from engine.observer import SagaObserver
from engine.ports import HistoryStore, Transport
from engine.workflow import Workflow, workflow_name
from workflows.order_saga import place_order, place_order_declarative

# The workflows an orchestrator runs: what it recovers, and what `cloudmart replay` checks
# histories against. An orchestrator registers the ``WORKFLOWS`` of the module its settings
# name (:func:`workflows_of`), this one unless told otherwise.
WORKFLOWS: tuple[Workflow, ...] = (place_order, place_order_declarative)


def workflows_of(module: str) -> tuple[Workflow, ...]:
    """The ``WORKFLOWS`` tuple of ``module`` (a dotted name), the way a Temporal worker is
    given its workflows: what one orchestrator runs, recovers and starts by name. ValueError
    when the module cannot be imported or holds no such tuple; WorkflowDefinitionError when
    an entry is not a ``@workflow`` (or ``@workflow`` refused one as the module loaded)."""
    try:
        loaded = importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(f"cannot import the workflows module {module!r}: {exc}") from exc
    found = getattr(loaded, "WORKFLOWS", None)
    if not isinstance(found, tuple) or not found or not all(callable(wf) for wf in found):
        raise ValueError(f"module {module!r} has no WORKFLOWS tuple of workflows")
    for wf in found:
        workflow_name(wf)  # each must be a @workflow
    return found


# Called around every history write when given: ``(point, event_types)`` with the points
# ``freeze_before_history`` and ``crash_after_history`` (the process's failure points).
HistoryHook = Callable[[str, list[str]], None]


class SagaUnknown(DomainError):
    """No saga has this order id."""

    http_status = 404


class SagaActionRefused(DomainError):
    """The action does not apply to the saga in its status (``details.status``): resume is
    for a parked saga, retry for a running one, and cancel or compensate are refused once the
    saga is past its pivot."""

    http_status = 409


class SagaFinished(SagaActionRefused):
    """The saga is already COMPLETED or FAILED; no action applies to it."""


class Orchestrator:
    """Starts, cancels and reports order sagas, with the ``workflows`` its engine runs."""

    def __init__(
        self, engine: Engine, db: Database, *, workflows: Sequence[Workflow] = WORKFLOWS
    ) -> None:
        self.engine = engine
        self.db = db
        self._workflows = {workflow_name(wf): wf for wf in workflows}
        if "place_order" not in self._workflows:  # what POST /saga/start runs
            raise ValueError(f"no place_order among the workflows {sorted(self._workflows)}")

    async def start(
        self,
        order: PlaceOrder,
        *,
        idempotency_key: str | None = None,
        workflow: str = "place_order",
    ) -> SagaHandle:
        """Start the order saga; with a key, the same key and body give the same saga.

        Unknown customers and books are refused here (404), before any saga exists.
        ``workflow`` names the workflow: the typed ``place_order`` unless the caller asks for
        the seed's declarative definition of the same saga (``place_order_declarative``); the
        code of that name this orchestrator was given runs it.
        """
        wf = self._workflows[workflow]
        await check_order(self.db, order)
        order_id = order_id_for(idempotency_key)
        structlog.contextvars.bind_contextvars(order_id=order_id)  # the correlation id
        command = CreateOrder(order_id=order_id, **order.model_dump())
        try:
            return await self.engine.start(wf, command, workflow_id=order_id)
        except WorkflowAlreadyStarted as exc:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was used with a different order", order_id=order_id
            ) from exc
        except SagaQueueFull as exc:
            raise SagaBacklogFull(
                str(exc), retry_after=math.ceil(exc.retry_after), waiting=exc.waiting
            ) from exc

    async def status(self, order_id: str, *, wait: float = 0) -> SagaStatus:
        """The saga's status; with ``wait``, once it finished or after ``wait`` seconds."""
        try:
            if wait > 0:
                return await self.engine.wait(order_id, timeout=wait)
            return await self.engine.status(order_id)
        except SagaNotFound as exc:
            raise SagaUnknown(f"no saga for order {order_id}", order_id=order_id) from exc

    async def act(self, order_id: str, action: str, reason: str) -> SagaStatus:
        """An operator's ``action`` (cancel, retry, resume, compensate) with its ``reason``:
        durable, recorded in the history and honoured by whoever drives the saga."""
        try:
            if action == CANCEL:
                return await self.engine.cancel(order_id)
            do = {
                RETRY: self.engine.retry,
                RESUME: self.engine.resume,
                COMPENSATE: self.engine.compensate,
            }[action]
            return await do(order_id, reason=reason)
        except SagaNotFound as exc:
            raise SagaUnknown(f"no saga for order {order_id}", order_id=order_id) from exc
        except SagaAlreadyFinished as exc:
            raise SagaFinished(str(exc), order_id=order_id, status=exc.status) from exc
        except ActionRefused as exc:
            raise SagaActionRefused(str(exc), order_id=order_id, status=exc.status) from exc

    async def history(self, order_id: str) -> list[Event]:
        try:
            return await self.engine.history(order_id)
        except SagaNotFound as exc:
            raise SagaUnknown(f"no saga for order {order_id}", order_id=order_id) from exc

    async def list(self, where: SagaFilter, *, cursor: str | None, limit: int) -> SagaPage:
        """A page of sagas, newest first; ``cursor`` is the previous page's ``next_cursor``."""
        return await self.engine.list(where, cursor=cursor, limit=limit)

    async def counts(self) -> SagaCounts:
        return await self.engine.counts()


def in_process_transport(db: Database, *, served_countries: Collection[str]) -> InMemoryTransport:
    """Request/reply by direct call of the business operations (embedded mode)."""

    def handler(name: str) -> Any:
        async def handle(payload: dict[str, Any]) -> dict[str, Any]:
            return await invoke(db, name, payload, served_countries=served_countries)

        return handle

    return InMemoryTransport({name: handler(name) for name in OPERATIONS})


class _HookedHistory:
    """The history store, passing each write by the ``freeze_before_history`` and
    ``crash_after_history`` points of a :data:`HistoryHook` (used only when one is given)."""

    def __init__(self, store: HistoryStore, hook: HistoryHook) -> None:
        self._store = store
        self._hook = hook

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def create(self, record: SagaRecord, events: Sequence[Event]) -> tuple[SagaRecord, bool]:
        types = [e.type for e in events]
        self._hook("freeze_before_history", types)
        stored, created = await self._store.create(record, events)
        if created:
            self._hook("crash_after_history", types)
        return stored, created

    async def append(self, saga_id: str, events: Sequence[Event], **fence: Any) -> None:
        types = [e.type for e in events]
        self._hook("freeze_before_history", types)
        await self._store.append(saga_id, events, **fence)
        self._hook("crash_after_history", types)


def build_engine(
    db: Database,
    transport: Transport,
    *,
    lease_seconds: float,
    compensation_alert_attempts: int,
    step_timeout: float,
    saga_deadline: float | None,
    step_retry: RetryPolicy,
    compensation_retry: RetryPolicy,
    max_running: int | None = None,
    max_queued: int | None = None,
    observer: SagaObserver | None = None,
    history_hook: HistoryHook | None = None,
    workflows: Sequence[Workflow] = WORKFLOWS,
) -> Engine:
    """The engine of one orchestrator process (the settings' values, passed as they are),
    running ``workflows`` (see :func:`workflows_of`).

    ``observer`` receives its saga and step events (the process's metrics); ``history_hook``,
    when given, sees every history write (see :data:`HistoryHook`). ``max_running`` and
    ``max_queued`` bound the sagas it drives at once and those that wait for a slot.
    """
    store: HistoryStore = SqlHistoryStore(db.engine)
    if history_hook is not None:
        store = cast(HistoryStore, _HookedHistory(store, history_hook))
    return Engine(
        store,
        transport,
        lease_seconds=lease_seconds,
        compensation_alert_attempts=compensation_alert_attempts,
        default_step_timeout=step_timeout,
        saga_deadline=saga_deadline,
        step_retry=step_retry,
        compensation_retry=compensation_retry,
        workflows=workflows,
        observer=observer,
        max_running=max_running,
        max_queued=max_queued,
    )
