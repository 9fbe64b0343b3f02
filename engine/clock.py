"""Clocks: the real one and a fake one that tests advance (as ``engine.testing`` does)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import UTC, datetime, timedelta

__all__ = ["FakeClock", "SystemClock", "utcnow"]


def utcnow() -> datetime:
    """Naive UTC now, the engine's timestamp convention."""
    return datetime.now(UTC).replace(tzinfo=None)


class SystemClock:
    """Wall time; ``sleep`` is ``asyncio.sleep``."""

    def now(self) -> datetime:
        return utcnow()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """Time that moves only when told to; sleepers wake in deadline order."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2030, 1, 1)
        self._sleepers: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._counter = itertools.count()

    def now(self) -> datetime:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(
            self._sleepers, (self._now + timedelta(seconds=seconds), next(self._counter), future)
        )
        await future

    @property
    def sleepers(self) -> int:
        """Sleepers still waiting (cancelled ones are dropped)."""
        self._sleepers = [s for s in self._sleepers if not s[2].done()]
        heapq.heapify(self._sleepers)
        return len(self._sleepers)

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper that is due."""
        self._set(self._now + timedelta(seconds=seconds))

    def advance_to_next(self) -> bool:
        """Jump to the earliest sleeper's deadline and wake it; False when nobody sleeps."""
        if not self.sleepers:
            return False
        self._set(max(self._now, self._sleepers[0][0]))
        return True

    def _set(self, when: datetime) -> None:
        self._now = when
        while self._sleepers and self._sleepers[0][0] <= when:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
