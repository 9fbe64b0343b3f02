"""The :class:`Engine`: start, cancel, status, wait, history and list sagas; recover and drive
them under leases (its views are in :mod:`engine.views`)."""

from __future__ import annotations

import asyncio
import builtins
import json
import os
import socket
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import structlog
from pydantic import BaseModel

from engine._determinism import canonical_json
from engine._runtime import RunConfig
from engine.clock import SystemClock
from engine.errors import SagaNotFound, SagaQueueFull, WorkflowAlreadyStarted
from engine.history import (
    CANCEL,
    COMPENSATE,
    RESUME,
    RETRY,
    STARTED,
    TERMINAL_STATUSES,
    Event,
    EventType,
    SagaRecord,
)
from engine.listing import (
    SagaCounts,
    SagaFilter,
    SagaPage,
    SagaPosition,
    decode_cursor,
    encode_cursor,
)
from engine.observer import EngineCounters, NullObserver, SagaObserver
from engine.ports import Clock, HistoryStore, Transport
from engine.views import SagaHandle, SagaStatus, saga_status
from engine.worker import Worker
from engine.workflow import RetryPolicy, Workflow, workflow_input_model, workflow_name

__all__ = ["Engine"]

ET = EventType
_log = structlog.get_logger("engine")


DEFAULT_STEP_RETRY = RetryPolicy()
DEFAULT_COMPENSATION_RETRY = RetryPolicy(initial_interval=0.5, max_interval=30.0, max_attempts=None)


class Engine:
    """Runs workflows durably on a :class:`HistoryStore` and a :class:`Transport`.

    ``owner_id`` must be unique per process (default: host:pid:random). A saga is driven only
    under a lease (``lease_seconds``) whose fencing version every history write checks.
    ``saga_deadline`` (seconds, None = none) makes a saga compensate once exceeded;
    ``compensation_alert_attempts`` failed attempts of one compensation flag the saga
    ``needs_operator`` (and count ``counters.operator_alerts``). ``observer`` hears of every
    saga and step outcome (:mod:`engine.observer`; metrics hang on it). The last
    ``finished_cache`` sagas this engine finished are kept, so ``wait`` and ``status`` answer
    them without reading the store.

    Admission control: at most ``max_running`` sagas (None: no bound) are driven at once; a
    saga started beyond that is written all the same (durable, idempotent) and waits its turn
    (:mod:`engine.worker`). A start is refused with :class:`~engine.errors.SagaQueueFull`,
    nothing written, only when ``max_queued`` sagas started here already wait.
    """

    def __init__(
        self,
        store: HistoryStore,
        transport: Transport,
        *,
        clock: Clock | None = None,
        owner_id: str | None = None,
        lease_seconds: float = 30.0,
        compensation_alert_attempts: int = 10,
        default_step_timeout: float = 10.0,
        saga_deadline: float | None = None,
        workflows: Iterable[Workflow] = (),
        step_retry: RetryPolicy = DEFAULT_STEP_RETRY,
        compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY,
        poll_interval: float | None = None,
        claim_batch: int = 100,
        observer: SagaObserver | None = None,
        finished_cache: int = 2048,
        max_running: int | None = None,
        max_queued: int | None = None,
    ) -> None:
        self.store = store
        self.transport = transport
        self.clock: Clock = clock or SystemClock()
        self.owner_id = owner_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # What the client itself reads: a new saga's first lease and deadline, and how often
        # ``wait`` polls a saga driven elsewhere. The rest configures the worker.
        self.lease_seconds = lease_seconds
        self.saga_deadline = saga_deadline
        self.poll_interval = poll_interval or max(0.05, lease_seconds / 3)
        self.counters = EngineCounters()
        self.observer: SagaObserver = observer or NullObserver()
        self.max_queued = max_queued
        self.worker = Worker(
            store,
            transport,
            clock=self.clock,
            config=RunConfig(
                owner=self.owner_id,
                step_retry=step_retry,
                compensation_retry=compensation_retry,
                default_step_timeout=default_step_timeout,
                compensation_alert_attempts=compensation_alert_attempts,
            ),
            lease_seconds=lease_seconds,
            poll_interval=self.poll_interval,
            claim_batch=claim_batch,
            observer=self.observer,
            counters=self.counters,
            finished_cache=finished_cache,
            max_running=max_running,
        )
        for wf in workflows:
            self.register(wf)

    # -- workflows and sagas -----------------------------------------------------------------

    def register(self, wf: Workflow) -> None:
        """Make ``wf`` resumable by :meth:`recover` (``start`` registers it too)."""
        self.worker.register(wf)

    async def start(
        self, wf: Workflow, input: Any, *, workflow_id: str | None = None
    ) -> SagaHandle:
        """Start ``wf`` with ``input`` (a pydantic model or JSON) unless ``workflow_id`` already
        runs it.

        Idempotent per ``workflow_id``: the same input returns the existing saga
        (``created=False``); another input or workflow raises ``WorkflowAlreadyStarted``. An
        input the workflow's model refuses raises pydantic's ``ValidationError``.
        Returns at once; the saga runs in the background of this engine.
        """
        self.register(wf)
        name = workflow_name(wf)
        model = workflow_input_model(wf)
        if model is not None and not isinstance(input, model):
            input = model.model_validate(input)  # refused here, before anything is written
        data = (
            input.model_dump(mode="json")
            if isinstance(input, BaseModel)
            else json.loads(json.dumps(input))
        )
        workflow_id = workflow_id or str(uuid.uuid4())
        waiting = self.worker.waiting
        if (
            self.max_queued is not None
            and self.worker.full
            and waiting >= self.max_queued
            and await self.store.get(workflow_id) is None
        ):
            raise SagaQueueFull(waiting, retry_after=max(1.0, self.poll_interval))
        now = self.clock.now()
        saga_id = str(uuid.uuid4())
        deadline = (
            None
            if self.saga_deadline is None
            else (now + timedelta(seconds=self.saga_deadline)).isoformat()
        )
        started = Event(
            0,
            ET.WORKFLOW_STARTED,
            payload={"workflow": name, "input": data, "deadline": deadline},
            created_at=now,
            owner=self.owner_id,
            version=1,
        )
        record = SagaRecord(
            saga_id=saga_id,
            workflow_id=workflow_id,
            workflow_name=name,
            status=STARTED,
            input=data,
            owner=self.owner_id,
            version=1,
            lease_expires_at=now + timedelta(seconds=self.lease_seconds),
            created_at=now,
            updated_at=now,
        )
        with self.worker.starting(saga_id):
            stored, created = await self.store.create(record, [started])
        if not created:
            if stored.workflow_name != name or canonical_json(stored.input) != canonical_json(data):
                raise WorkflowAlreadyStarted(
                    f"workflow_id {workflow_id!r} was started with another "
                    f"{'input' if stored.workflow_name == name else 'workflow'}"
                )
            return SagaHandle(stored.saga_id, workflow_id, stored.status, created=False)
        self.counters.sagas_started += 1
        self.observer.saga_started(name)
        self.worker.admit(wf, stored, [started])
        return SagaHandle(saga_id, workflow_id, STARTED, created=True)

    async def cancel(self, workflow_id: str) -> SagaStatus:
        """Ask the saga to stop at its next step boundary and compensate what took effect.

        Raises ``SagaNotFound``, ``SagaAlreadyFinished`` for a COMPLETED/FAILED saga, or
        ``ActionRefused`` once it is past its pivot. The request is durable: whoever owns the
        saga (this process or another) honours it; a parked saga is compensated.
        """
        return await self._act(workflow_id, CANCEL, "cancelled")

    async def retry(self, workflow_id: str, *, reason: str) -> SagaStatus:
        """Attempt the saga's current step or compensation again now, without waiting out its
        backoff (a flagged saga's flag clears once the attempt succeeds). Recorded in the
        history with ``reason``; ``ActionRefused`` unless the saga is running."""
        return await self._act(workflow_id, RETRY, reason)

    async def resume(self, workflow_id: str, *, reason: str) -> SagaStatus:
        """Replay a ``PARKED`` saga with the code registered now: it goes on if its history
        matches and parks again (with the new reason) if not. ``ActionRefused`` unless
        parked."""
        return await self._act(workflow_id, RESUME, reason)

    async def compensate(self, workflow_id: str, *, reason: str) -> SagaStatus:
        """Compensate every step of a parked saga, or of one running before its pivot, that
        took effect (or may have), in reverse order; it ends ``FAILED`` with reason
        ``operator: <reason>``. ``ActionRefused`` past the pivot or when already
        compensating."""
        return await self._act(workflow_id, COMPENSATE, reason)

    async def _act(self, workflow_id: str, action: str, reason: str) -> SagaStatus:
        record = await self.store.request_action(
            workflow_id, action, reason=reason, now=self.clock.now()
        )
        await self.worker.act(record)
        return await self.status(workflow_id)

    async def status(self, workflow_id: str) -> SagaStatus:
        """The saga's projection and a per-step summary built from its history."""
        known = self.worker.finished(workflow_id)
        if known is not None:
            return saga_status(*known)
        record = await self.store.get(workflow_id)
        if record is None:
            raise SagaNotFound(workflow_id)
        record, events = await self.store.load(record.saga_id)
        return saga_status(record, events)

    async def wait(self, workflow_id: str, *, timeout: float) -> SagaStatus:
        """The saga's status once it is finished, or as it is after ``timeout`` seconds.

        A saga this process drives is awaited directly and, once it finished, answered from what
        its run committed (no read); one driven elsewhere is polled.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        task = self.worker.task_of(workflow_id=workflow_id)
        if task is not None:
            await asyncio.wait([task], timeout=timeout)
        known = self.worker.finished(workflow_id)
        if known is not None:
            return saga_status(*known)
        record = await self.store.get(workflow_id)
        if record is None:
            raise SagaNotFound(workflow_id)
        events: builtins.list[Event] | None = None
        while record.status not in TERMINAL_STATUSES:
            left = deadline - loop.time()
            if left <= 0:
                break
            task = self.worker.task_of(saga_id=record.saga_id)
            if task is None:  # waiting for a slot here, or driven elsewhere
                await self.worker.until_driven(
                    record.saga_id, timeout=min(left, self.poll_interval)
                )
                task = self.worker.task_of(saga_id=record.saga_id)
            if task is not None:
                await asyncio.wait([task], timeout=max(0.0, deadline - loop.time()))
                known = self.worker.finished(workflow_id)
                if known is not None:
                    return saga_status(*known)
            record, events = await self.store.load(record.saga_id)
        if events is None:
            record, events = await self.store.load(record.saga_id)
        return saga_status(record, events)

    async def history(self, workflow_id: str) -> list[Event]:
        """The saga's events in seq order."""
        record = await self.store.get(workflow_id)
        if record is None:
            raise SagaNotFound(workflow_id)
        return (await self.store.load(record.saga_id))[1]

    async def list(
        self, where: SagaFilter = SagaFilter(), *, cursor: str | None = None, limit: int = 100
    ) -> SagaPage:
        """A page of the sagas ``where`` selects, newest first (without steps).

        ``cursor`` is a previous page's ``next_cursor`` (``ValueError`` when it is not one);
        following them lists every matching saga once, in order (:mod:`engine.listing`).
        """
        after = None if cursor is None else decode_cursor(cursor)
        records = await self.store.list(where, after=after, limit=limit + 1)
        more = len(records) > limit
        records = records[:limit]
        next_cursor = None
        if more:
            last = records[-1]
            next_cursor = encode_cursor(SagaPosition(last.created_at or datetime.min, last.saga_id))
        return SagaPage(tuple(saga_status(r, None) for r in records), next_cursor)

    async def counts(self) -> SagaCounts:
        """How many sagas have each status, and how many are flagged for an operator."""
        return await self.store.counts()

    # -- the worker's ----------------------------------------------------------------------

    async def recover(self) -> int:
        """Claim unfinished sagas (no owner, expired lease, or ours but not running) and resume
        them from history. Returns how many were claimed."""
        return await self.worker.recover()

    @property
    def running(self) -> int:
        """Sagas this engine is driving right now."""
        return self.worker.running

    @property
    def waiting(self) -> int:
        """Sagas started here that wait for a slot (``max_running``)."""
        return self.worker.waiting

    def drive_tasks(self) -> builtins.list[asyncio.Task[None]]:
        """The tasks of the sagas this engine is driving (for the test driver)."""
        return self.worker.drive_tasks()

    def start_background(self) -> None:
        """Start the loop that renews leases and claims expired or unowned sagas."""
        self.worker.start_background()

    async def stop(self) -> None:
        """Stop the background loop and every run; release their leases."""
        await self.worker.stop()

    async def __aenter__(self) -> Engine:
        self.start_background()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
