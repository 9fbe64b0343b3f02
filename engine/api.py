"""The :class:`Engine`: start, cancel, status, wait, history and list sagas; recover and drive
them under leases (its views are in :mod:`engine.views`)."""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import functools
import json
import os
import socket
import uuid
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import structlog
from pydantic import BaseModel

from engine._runtime import RunConfig, RunDeps, _Run, canonical_json
from engine.clock import SystemClock
from engine.errors import SagaNotFound, WorkflowAlreadyStarted, WorkflowDefinitionError
from engine.history import STARTED, TERMINAL_STATUSES, Event, EventType, SagaRecord
from engine.observer import EngineCounters, NullObserver, SagaObserver
from engine.ports import Clock, HistoryStore, Transport
from engine.views import SagaHandle, SagaStatus, saga_status
from engine.workflow import RetryPolicy, Workflow, workflow_name

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
    ) -> None:
        self.store = store
        self.transport = transport
        self.clock: Clock = clock or SystemClock()
        self.owner_id = owner_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_seconds = lease_seconds
        self.compensation_alert_attempts = compensation_alert_attempts
        self.default_step_timeout = default_step_timeout
        self.saga_deadline = saga_deadline
        self.step_retry = step_retry
        self.compensation_retry = compensation_retry
        self.poll_interval = poll_interval or max(0.05, lease_seconds / 3)
        self.claim_batch = claim_batch
        self.counters = EngineCounters()
        self.observer: SagaObserver = observer or NullObserver()
        self._workflows: dict[str, Workflow] = {}
        self._runs: dict[str, tuple[_Run, asyncio.Task[None]]] = {}
        # Sagas whose row start() is writing: committed before their run is spawned, they are
        # ours and not running for that moment, and recovery must leave them to start().
        self._starting: set[str] = set()
        # workflow_id -> saga_id of the sagas this engine drives right now
        self._local: dict[str, str] = {}
        # workflow_id -> the final row and history of a saga this engine finished (newest last)
        self._finished: collections.OrderedDict[str, tuple[SagaRecord, builtins.list[Event]]] = (
            collections.OrderedDict()
        )
        self.finished_cache = finished_cache
        self._supervisor: asyncio.Task[None] | None = None
        for wf in workflows:
            self.register(wf)

    # -- workflows and sagas -----------------------------------------------------------------

    def register(self, wf: Workflow) -> None:
        """Make ``wf`` resumable by :meth:`recover` (``start`` registers it too)."""
        name = workflow_name(wf)
        known = self._workflows.setdefault(name, wf)
        if known is not wf:
            raise WorkflowDefinitionError(f"two workflows are named {name!r}")

    async def start(
        self, wf: Workflow, input: Any, *, workflow_id: str | None = None
    ) -> SagaHandle:
        """Start ``wf`` with ``input`` (a pydantic model or JSON) unless ``workflow_id`` already
        runs it.

        Idempotent per ``workflow_id``: the same input returns the existing saga
        (``created=False``); another input or workflow raises ``WorkflowAlreadyStarted``.
        Returns at once; the saga runs in the background of this engine.
        """
        self.register(wf)
        name = workflow_name(wf)
        data = (
            input.model_dump(mode="json")
            if isinstance(input, BaseModel)
            else json.loads(json.dumps(input))
        )
        workflow_id = workflow_id or str(uuid.uuid4())
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
        self._starting.add(saga_id)
        try:
            stored, created = await self.store.create(record, [started])
        finally:
            self._starting.discard(saga_id)
        if not created:
            if stored.workflow_name != name or canonical_json(stored.input) != canonical_json(data):
                raise WorkflowAlreadyStarted(
                    f"workflow_id {workflow_id!r} was started with another "
                    f"{'input' if stored.workflow_name == name else 'workflow'}"
                )
            return SagaHandle(stored.saga_id, workflow_id, stored.status, created=False)
        self.counters.sagas_started += 1
        self.observer.saga_started(name)
        self._spawn(wf, stored, [started], 1)
        return SagaHandle(saga_id, workflow_id, STARTED, created=True)

    async def cancel(self, workflow_id: str) -> SagaStatus:
        """Ask the saga to stop at its next step boundary and compensate what took effect.

        Raises ``SagaNotFound``, or ``SagaAlreadyFinished`` for a COMPLETED/FAILED saga. The
        request is durable: whoever owns the saga (this process or another) honours it.
        """
        await self.store.request_cancel(workflow_id)
        return await self.status(workflow_id)

    async def status(self, workflow_id: str) -> SagaStatus:
        """The saga's projection and a per-step summary built from its history."""
        known = self._finished.get(workflow_id)
        if known is not None:
            return saga_status(*known)
        record = await self.store.get(workflow_id)
        if record is None:
            raise SagaNotFound(workflow_id)
        record, events = await self.store.load(record.saga_id)
        return saga_status(record, events)

    async def wait(self, workflow_id: str, *, timeout: float) -> SagaStatus:
        """The saga's status once it is finished, or as it is after ``timeout`` seconds.

        A saga this engine drives is awaited directly and, once it finished, answered from what
        its run committed (no read); one driven elsewhere is polled.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        saga_id = self._local.get(workflow_id)
        entry = None if saga_id is None else self._runs.get(saga_id)
        if entry is not None:
            await asyncio.wait([entry[1]], timeout=timeout)
        known = self._finished.get(workflow_id)
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
            entry = self._runs.get(record.saga_id)
            if entry is not None:
                await asyncio.wait([entry[1]], timeout=left)
            else:
                await asyncio.sleep(min(left, self.poll_interval))
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
        self, *, status: str | None = None, limit: int = 100
    ) -> builtins.list[SagaStatus]:
        """Sagas newest first (without steps), optionally with one status."""
        return [saga_status(r, None) for r in await self.store.list(status=status, limit=limit)]

    # -- running ------------------------------------------------------------------------------

    async def recover(self) -> int:
        """Claim unfinished sagas (no owner, expired lease, or ours but not running) and resume
        them from history. Returns how many were claimed."""
        now = self.clock.now()
        rows = await self.store.list_claimable(owner=self.owner_id, now=now, limit=self.claim_batch)
        claimed = 0
        for row in rows:
            wf = self._workflows.get(row.workflow_name)
            if row.saga_id in self._runs or row.saga_id in self._starting or wf is None:
                continue
            version = await self.store.acquire(
                row.saga_id,
                owner=self.owner_id,
                expected_version=row.version,
                now=now,
                until=now + timedelta(seconds=self.lease_seconds),
            )
            if version is None:
                continue
            record, events = await self.store.load(row.saga_id)
            self.counters.sagas_recovered += 1
            self.observer.saga_resumed(row.workflow_name)
            _log.info(
                "saga.recovered", saga_id=row.saga_id, workflow_id=row.workflow_id, version=version
            )
            self._spawn(wf, record, events, version)
            claimed += 1
        return claimed

    def _spawn(
        self, wf: Workflow, record: SagaRecord, events: builtins.list[Event], version: int
    ) -> None:
        config = RunConfig(
            owner=self.owner_id,
            step_retry=self.step_retry,
            compensation_retry=self.compensation_retry,
            default_step_timeout=self.default_step_timeout,
            compensation_alert_attempts=self.compensation_alert_attempts,
        )
        deps = RunDeps(
            self.store, self.transport, self.clock, self.observer, self.counters, self._remember
        )
        run = _Run(config, deps, wf, record, events, version)
        task = asyncio.get_running_loop().create_task(run.run(), name=f"saga:{record.saga_id}")
        self._runs[record.saga_id] = (run, task)
        self._local[record.workflow_id] = record.saga_id
        task.add_done_callback(functools.partial(self._forget, record.saga_id))

    def _forget(self, saga_id: str, task: asyncio.Task[None]) -> None:
        entry = self._runs.get(saga_id)
        if entry is not None and entry[1] is task:
            del self._runs[saga_id]
            if self._local.get(entry[0].record.workflow_id) == saga_id:
                del self._local[entry[0].record.workflow_id]
        if not task.cancelled() and task.exception() is not None:
            _log.error("saga.crashed", saga_id=saga_id, error=repr(task.exception()))

    def _remember(self, record: SagaRecord, events: builtins.list[Event]) -> None:
        """Keep a saga this engine just finished (COMPLETED or FAILED: final states), so that
        ``wait`` and ``status`` answer it without a read; the oldest is forgotten first."""
        self._finished[record.workflow_id] = (record, events)
        while len(self._finished) > self.finished_cache:
            self._finished.popitem(last=False)

    @property
    def running(self) -> int:
        """Sagas this engine is driving right now."""
        return len(self._runs)

    def drive_tasks(self) -> builtins.list[asyncio.Task[None]]:
        """The tasks of the sagas this engine is driving (for the test driver)."""
        return [task for _, task in self._runs.values()]

    def start_background(self) -> None:
        """Start the loop that renews leases and claims expired or unowned sagas."""
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.get_running_loop().create_task(
                self._supervise(), name=f"engine-supervisor:{self.owner_id}"
            )

    async def stop(self) -> None:
        """Stop the background loop and every run; release their leases."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        runs = list(self._runs.values())
        for _, task in runs:
            task.cancel()
        for run, task in runs:
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(Exception):  # best effort: the lease expires anyway
                await self.store.release(
                    run.record.saga_id, owner=self.owner_id, version=run.version
                )

    async def __aenter__(self) -> Engine:
        self.start_background()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _supervise(self) -> None:
        while True:
            try:
                await self._renew()
                await self.recover()
            except Exception:  # the store may be down for a while: keep trying
                _log.exception("engine.supervisor_failed", owner=self.owner_id)
            await self.clock.sleep(self.poll_interval)

    async def _renew(self) -> None:
        if not self._runs:
            return
        ids = list(self._runs)
        until = self.clock.now() + timedelta(seconds=self.lease_seconds)
        kept = await self.store.renew(owner=self.owner_id, saga_ids=ids, until=until)
        for saga_id in ids:
            entry = self._runs.get(saga_id)
            if saga_id not in kept and entry is not None and not entry[1].done():
                _log.warning("saga.lease_lost", saga_id=saga_id)
                entry[1].cancel()
