"""The worker half of the engine: it drives sagas.

A :class:`Worker` runs each saga of its process in a task of its own under a lease
(``engine._runtime`` replays it), claims unfinished sagas whose lease is free or expired
(:meth:`Worker.recover`) — parking those whose workflow it does not know, so that they hold
up nobody — renews the leases of the sagas it drives and gives up those it lost, hands the
operator's requests to the runs they are for (the background loop), and keeps the last sagas
it finished so that the client half (:class:`~engine.api.Engine`) answers ``status`` and
``wait`` for them without a read.

Admission control: with ``max_running`` a worker drives at most that many sagas at once. A
saga started beyond it is written as usual (ours, under its first lease: durable) and waits in
a queue of records, not of tasks (``engine._admission``), until a run ends; then the oldest
waiting one is driven with nothing more to write. Its lease is not renewed while it waits, so
one that waited longer than a lease becomes claimable by any worker with room (the same leases
recovery takes); taking it then costs this worker one write, and a worker that lost it to
another skips it.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import dataclasses
import functools
from collections.abc import Coroutine, Iterator
from datetime import datetime, timedelta
from typing import Any

import structlog

from engine._admission import AdmissionQueue
from engine._runtime import RunConfig, RunDeps, _Run
from engine.errors import StoreUnavailable, WorkflowDefinitionError
from engine.history import Event, SagaRecord
from engine.observer import EngineCounters, SagaObserver
from engine.ports import Clock, HistoryStore, Transport
from engine.workflow import Workflow, workflow_name

__all__ = ["Worker"]

_log = structlog.get_logger("engine")


class Worker:
    """Drives the sagas of one process (see the module docstring).

    ``config`` carries the owner id and the runs' policies; a lease lasts ``lease_seconds``
    and the background loop wakes every ``poll_interval`` seconds to renew leases and claim
    up to ``claim_batch`` sagas; the last ``finished_cache`` finished sagas are kept. At most
    ``max_running`` sagas (None: no bound) are driven at once.
    """

    def __init__(
        self,
        store: HistoryStore,
        transport: Transport,
        *,
        clock: Clock,
        config: RunConfig,
        lease_seconds: float,
        poll_interval: float,
        claim_batch: int,
        observer: SagaObserver,
        counters: EngineCounters,
        finished_cache: int,
        max_running: int | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.config = config
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.claim_batch = claim_batch
        self.observer = observer
        self.counters = counters
        self.finished_cache = finished_cache
        self.max_running = max_running
        self._workflows: dict[str, Workflow] = {}
        self._runs: dict[str, tuple[_Run, asyncio.Task[None]]] = {}
        # Sagas whose row start() is writing: committed before their run is spawned, they are
        # ours and not running for that moment, and recovery must leave them to start().
        self._starting: set[str] = set()
        # workflow_id -> saga_id of the sagas this worker drives right now
        self._local: dict[str, str] = {}
        # workflow_id -> the final row and history of a saga this worker finished (newest last)
        self._finished: collections.OrderedDict[str, tuple[SagaRecord, builtins.list[Event]]] = (
            collections.OrderedDict()
        )
        self._supervisor: asyncio.Task[None] | None = None
        # Admission control: the sagas started here that wait for a slot (engine._admission).
        self._admission = AdmissionQueue(
            take=self._take, room=lambda: self.room, owner=self.config.owner
        )
        self._stopping = False
        # saga_id -> resolved when this worker starts driving it (for Engine.wait)
        self._driven: dict[str, asyncio.Future[None]] = {}
        # What every run of this worker works through: the same for all, built once.
        self._deps = RunDeps(store, transport, clock, observer, counters, self._remember)

    def register(self, wf: Workflow) -> None:
        """Make ``wf`` resumable by :meth:`recover`."""
        name = workflow_name(wf)
        known = self._workflows.setdefault(name, wf)
        if known is not wf:
            raise WorkflowDefinitionError(f"two workflows are named {name!r}")

    @contextlib.contextmanager
    def starting(self, saga_id: str) -> Iterator[None]:
        """While a new saga's first write is in flight: recovery leaves it alone."""
        self._starting.add(saga_id)
        try:
            yield
        finally:
            self._starting.discard(saga_id)

    def finished(self, workflow_id: str) -> tuple[SagaRecord, builtins.list[Event]] | None:
        """The final row and history of a saga this worker finished lately, if it did."""
        return self._finished.get(workflow_id)

    def task_of(
        self, *, workflow_id: str | None = None, saga_id: str | None = None
    ) -> asyncio.Task[None] | None:
        """The task driving a saga here (by workflow or saga id), or ``None``."""
        if saga_id is None and workflow_id is not None:
            saga_id = self._local.get(workflow_id)
        entry = None if saga_id is None else self._runs.get(saga_id)
        return None if entry is None else entry[1]

    async def recover(self) -> int:
        """Claim sagas to drive (unfinished, or parked with an operator's action waiting) with
        no owner, an expired lease, or ours but not running, and resume them from history.
        Those of workflows this worker does not know are parked, in a pass of their own after
        the others. Returns how many were claimed."""
        now = self.clock.now()
        known = list(self._workflows)
        claimed = await self._admission.fill_slots()
        room = self.room
        limit = self.claim_batch if room is None else min(room, self.claim_batch)
        if limit:
            for row in await self.store.list_claimable(
                owner=self.config.owner, now=now, limit=limit, workflows=known
            ):
                claimed += await self.claim(row)
        for row in await self.store.list_claimable(
            owner=self.config.owner, now=now, limit=self.claim_batch, workflows=known, known=False
        ):
            claimed += await self.claim(row)
        return claimed

    async def claim(self, row: SagaRecord) -> bool:
        """Take ``row``'s lease and drive it (or park it, if its workflow is unknown here).
        False when it runs here already, waits here for a slot, or someone else holds it."""
        if (
            row.saga_id in self._runs
            or row.saga_id in self._starting
            or row.saga_id in self._admission
        ):
            return False
        with self.starting(row.saga_id):  # a slot taken while the claim is in flight
            now = self.clock.now()
            version = await self.store.acquire(
                row.saga_id,
                owner=self.config.owner,
                expected_version=row.version,
                now=now,
                until=now + timedelta(seconds=self.lease_seconds),
            )
            if version is None:
                return False
            record, events = await self.store.load(row.saga_id)
            wf = self._workflows.get(row.workflow_name)
            if wf is None:
                run = _Run(self.config, self._deps, None, record, events, version)
                self._track(run, run.park_unknown())
                return True
            self.counters.sagas_recovered += 1
            self.observer.saga_resumed(row.workflow_name)
            _log.info(
                "saga.recovered", saga_id=row.saga_id, workflow_id=row.workflow_id, version=version
            )
            self.spawn(wf, record, events, version)
            return True

    # -- admission control -------------------------------------------------------------------

    @property
    def room(self) -> int | None:
        """How many more sagas this worker may drive now (None: no bound)."""
        if self.max_running is None:
            return None
        return max(0, self.max_running - len(self._runs) - len(self._starting))

    @property
    def waiting(self) -> int:
        """Sagas started here that wait for a slot."""
        return len(self._admission)

    @property
    def full(self) -> bool:
        """Whether a saga started now would wait: no room, or others wait already (first
        come, first run)."""
        return self.room == 0 or bool(self._admission)

    def admit(self, wf: Workflow, record: SagaRecord, events: builtins.list[Event]) -> None:
        """``record`` was just written, ours under its first lease: drive it now, or, when
        :attr:`full`, let it wait its turn here (driven as soon as a slot is free)."""
        if not self.full:
            self.spawn(wf, record, events, record.version)
            return
        self._admission.push(wf, record, events)

    async def until_driven(self, saga_id: str, *, timeout: float) -> None:
        """Return once this worker drives ``saga_id``, or after ``timeout`` seconds."""
        if saga_id in self._runs:
            return
        driven = self._driven.get(saga_id)
        if driven is None:
            driven = self._driven[saga_id] = asyncio.get_running_loop().create_future()
        await asyncio.wait([driven], timeout=timeout)
        if not driven.done() and self._driven.get(saga_id) is driven:
            del self._driven[saga_id]  # driven elsewhere, perhaps: the caller reads the store

    async def _take(self, wf: Workflow, record: SagaRecord, events: builtins.list[Event]) -> bool:
        """Drive a saga that waited here: at once while most of its first lease is left, else
        after taking the lease again (False when another worker took it meanwhile)."""
        if record.saga_id in self._runs or record.saga_id in self._starting:
            return False
        now = self.clock.now()
        left = (record.lease_expires_at or now) - now
        if left > timedelta(seconds=self.lease_seconds / 2):
            self.spawn(wf, record, events, record.version)
            return True
        with self.starting(record.saga_id):
            until = now + timedelta(seconds=self.lease_seconds)
            version = await self.store.acquire(
                record.saga_id,
                owner=self.config.owner,
                expected_version=record.version,
                now=now,
                until=until,
            )
            if version is None:
                return False
            owned = dataclasses.replace(
                record, owner=self.config.owner, version=version, lease_expires_at=until
            )
            self.spawn(wf, owned, events, version)
            return True

    async def act(self, record: SagaRecord) -> None:
        """An operator's action was just written on ``record``'s row: hand it to the run that
        drives the saga here, or claim the parked saga it wakes."""
        entry = self._runs.get(record.saga_id)
        waiting = self._admission.pop(record.saga_id)
        if entry is not None and record.operator_request is not None:
            entry[0].poke(record.operator_request)
        elif waiting is not None:  # an operator's action does not wait for a slot
            wf, _, events = waiting
            await self._take(wf, dataclasses.replace(record, lease_expires_at=None), events)
        elif entry is None and record.claimable:
            await self.claim(record)

    def spawn(
        self, wf: Workflow, record: SagaRecord, events: builtins.list[Event], version: int
    ) -> None:
        run = _Run(self.config, self._deps, wf, record, events, version)
        self._track(run, run.run())

    def _track(self, run: _Run, work: Coroutine[Any, Any, None]) -> None:
        record = run.record
        task = asyncio.get_running_loop().create_task(work, name=f"saga:{record.saga_id}")
        self._runs[record.saga_id] = (run, task)
        self._local[record.workflow_id] = record.saga_id
        task.add_done_callback(functools.partial(self._forget, record.saga_id))
        driven = self._driven.pop(record.saga_id, None)
        if driven is not None and not driven.done():
            driven.set_result(None)

    def _forget(self, saga_id: str, task: asyncio.Task[None]) -> None:
        entry = self._runs.get(saga_id)
        if entry is not None and entry[1] is task:
            del self._runs[saga_id]
            if self._local.get(entry[0].record.workflow_id) == saga_id:
                del self._local[entry[0].record.workflow_id]
        if not task.cancelled() and task.exception() is not None:
            _log.error("saga.crashed", saga_id=saga_id, error=repr(task.exception()))
        if self._admission and not self._stopping:
            self._admission.fill_soon()  # a slot is free: the oldest waiting saga takes it

    def _remember(self, record: SagaRecord, events: builtins.list[Event]) -> None:
        """Keep a saga this worker just finished (COMPLETED or FAILED: final states), so that
        ``wait`` and ``status`` answer it without a read; the oldest is forgotten first."""
        self._finished[record.workflow_id] = (record, events)
        while len(self._finished) > self.finished_cache:
            self._finished.popitem(last=False)

    @property
    def running(self) -> int:
        """Sagas this worker is driving right now."""
        return len(self._runs)

    def drive_tasks(self) -> builtins.list[asyncio.Task[None]]:
        """The tasks of the sagas this worker is driving (for the test driver)."""
        return [task for _, task in self._runs.values()]

    def start_background(self) -> None:
        """Start the loop that renews leases and claims expired or unowned sagas."""
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.get_running_loop().create_task(
                self._supervise(), name=f"engine-supervisor:{self.config.owner}"
            )

    async def stop(self) -> None:
        """Stop the background loop and every run; release their leases."""
        self._stopping = True
        try:
            await self._stop()
        finally:
            self._stopping = False

    async def _stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        await self._admission.stop()
        runs = list(self._runs.values())
        for _, task in runs:
            task.cancel()
        for run, task in runs:
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(Exception):  # best effort: the lease expires anyway
                await self.store.release(
                    run.record.saga_id, owner=self.config.owner, version=run.version
                )

    async def _supervise(self) -> None:
        down_since: datetime | None = None  # the store's outage, logged when it starts and ends
        while True:
            try:
                await self._renew()
                await self._hand_over_requests()
                await self.recover()
            except StoreUnavailable as exc:  # the store may be down for a while: keep trying
                if down_since is None:
                    down_since = self.clock.now()
                    _log.warning("engine.store_unavailable", error=str(exc))
            except Exception:  # a bug: say it each time, it will not heal by itself
                _log.exception("engine.supervisor_failed", owner=self.config.owner)
            else:
                if down_since is not None:
                    gone = (self.clock.now() - down_since).total_seconds()
                    _log.warning("engine.store_available", unavailable_seconds=round(gone, 1))
                    down_since = None
            await self.clock.sleep(self.poll_interval)

    async def _hand_over_requests(self) -> None:
        """Operators' requests written on rows of sagas driven here (through another process's
        API, say) reach their runs."""
        if not self._runs:
            return
        for saga_id, request in (await self.store.operator_requests(list(self._runs))).items():
            entry = self._runs.get(saga_id)
            if entry is not None:
                entry[0].poke(request)

    async def _renew(self) -> None:
        if not self._runs:
            return
        ids = list(self._runs)
        until = self.clock.now() + timedelta(seconds=self.lease_seconds)
        kept = await self.store.renew(owner=self.config.owner, saga_ids=ids, until=until)
        for saga_id in ids:
            entry = self._runs.get(saga_id)
            # A run whose last write is under way released the lease itself with it (and,
            # should another owner hold the row, that write's fence refuses it anyway).
            if (
                saga_id not in kept
                and entry is not None
                and not entry[1].done()
                and not entry[0].projection.finished
            ):
                _log.warning("saga.lease_lost", saga_id=saga_id)
                entry[1].cancel()
