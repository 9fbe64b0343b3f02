"""Admission control's queue: the sagas started here that wait for a slot (private).

A :class:`~engine.worker.Worker` with ``max_running`` writes a saga started beyond it as usual
(ours, under its first lease: durable) and queues its record here, not a task. When a run ends
the worker calls :meth:`AdmissionQueue.fill_soon`: one task drives the waiting sagas, oldest
first, while the worker has room, through the worker's ``take`` (which spawns the run, taking
the lease again first when most of the first one is gone). A store outage or a bug stops the
filling; the background loop's next round (``fill_slots``, from recovery) or the next run's
end tries again.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from engine.errors import StoreUnavailable
from engine.history import Event, SagaRecord
from engine.workflow import Workflow

__all__ = ["AdmissionQueue", "Waiting"]

_log = structlog.get_logger("engine")

# What a waiting saga needs to be driven with nothing more to read.
Waiting = tuple[Workflow, SagaRecord, builtins.list[Event]]


class AdmissionQueue:
    """The sagas waiting for a slot, oldest first, and the task driving them as slots free up.

    ``take(wf, record, events)`` drives one (False when it could not: another worker took it);
    ``room()`` is how many more sagas the worker may drive now (None: no bound).
    """

    def __init__(
        self,
        *,
        take: Callable[[Workflow, SagaRecord, builtins.list[Event]], Awaitable[bool]],
        room: Callable[[], int | None],
        owner: str,
    ) -> None:
        self._take = take
        self._room = room
        self._owner = owner
        self._queued: collections.OrderedDict[str, Waiting] = collections.OrderedDict()
        # The task driving them as slots free up, and whether it should look once more.
        self._filling: asyncio.Task[None] | None = None
        self._fill_again = False

    def __len__(self) -> int:
        return len(self._queued)

    def __contains__(self, saga_id: object) -> bool:
        return saga_id in self._queued

    def push(self, wf: Workflow, record: SagaRecord, events: builtins.list[Event]) -> None:
        """``record`` waits its turn, behind those waiting already."""
        self._queued[record.saga_id] = (wf, record, events)
        self.fill_soon()

    def pop(self, saga_id: str) -> Waiting | None:
        """``saga_id`` waits no longer (an operator's action does not wait for a slot)."""
        return self._queued.pop(saga_id, None)

    def fill_soon(self) -> None:
        if self._filling is not None and not self._filling.done():
            self._fill_again = True  # it looks once more before it ends
            return
        self._filling = asyncio.get_running_loop().create_task(
            self._fill(), name=f"engine-admission:{self._owner}"
        )

    async def stop(self) -> None:
        """Cancel the filling task, if one runs."""
        if self._filling is not None:
            self._filling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._filling
            self._filling = None

    async def _fill(self) -> None:
        again = True
        while again:
            self._fill_again = False
            try:
                await self.fill_slots()
            except StoreUnavailable as exc:  # the background loop's next round tries again
                _log.debug("engine.admission_deferred", error=str(exc))
                return
            except Exception:  # a bug: say it; the saga waits on, the next run's end retries
                _log.exception("engine.admission_failed", owner=self._owner)
                return
            again = self._fill_again

    async def fill_slots(self) -> int:
        """Drive the sagas waiting here, oldest first, while there is room; returns how many
        it took."""
        taken = 0
        while self._queued and self._room() != 0:
            saga_id, entry = self._queued.popitem(last=False)
            try:
                taken += await self._take(*entry)
            except BaseException:
                self._queued[saga_id] = entry  # still its turn next
                self._queued.move_to_end(saga_id, last=False)
                raise
        return taken
