"""The outbox relay: publishes committed outbox rows to the bus, oldest first.

One relay runs in each service process and publishes the events *that service* produces (its
own outbox, as if each service had its own database). A pass reads the ids of up to ``batch``
unpublished rows ordered by id, locks them by primary key ``FOR UPDATE SKIP LOCKED`` on
MySQL/MariaDB, so several relays of one service split the rows instead of publishing them
twice (SQLite has a single writer and compiles the lock away), publishes them, sets
``published_at`` and commits, all in one transaction.

What can go wrong, and why it is fine:

- the process dies after the business commit, before publishing: the row stays unpublished and
  the next pass (after a restart, or another relay) publishes it;
- the publish happened but the ``published_at`` commit was lost: the row is published again
  with the same ``event_id``; consumers skip it (their inbox of event ids);
- a rolled-back business transaction never wrote a row, so there is nothing to publish.

A pass runs when :meth:`OutboxRelay.notify` is called (the process just wrote an event) and
otherwise every ``poll_interval`` seconds, which also refreshes :attr:`OutboxRelay.lag`. While
the database or the bus is away every pass fails; the outage is logged once when it begins and
once when a pass succeeds again (:class:`activities.faults.Outages`), not once per pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Collection

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from activities._inbox import now
from activities.db import Database
from activities.faults import Outages, dependency_of
from activities.tables import outbox
from choreography_pattern.bus import EventBus
from choreography_pattern.events import PRODUCER, Event
from prepared_sql import PreparedIn

log = structlog.get_logger("choreography.relay")

BeforePublish = Callable[[list[Event]], None]

# A pass's last statement, which carries its COMMIT (see prepared_sql); one
# statement per number of rows a pass marks (1..batch).
_PUBLISHED = PreparedIn(
    "id",
    lambda ids: (
        outbox.update().where(outbox.c.id.in_(ids)).values(published_at=sa.bindparam("stamp"))
    ),
)


class OutboxRelay:
    """Moves outbox rows of ``producers`` (service names; None: all) onto ``bus``."""

    def __init__(
        self,
        db: Database,
        bus: EventBus,
        *,
        producers: Collection[str] | None = None,
        batch: int = 200,
        poll_interval: float = 0.5,
        before_publish: BeforePublish | None = None,
        outages: Outages | None = None,
    ) -> None:
        self.db = db
        self.outages = outages or Outages()
        self.bus = bus
        self.types = sorted(
            t for t, p in PRODUCER.items() if producers is None or p in set(producers)
        )
        self.batch = batch
        self.poll_interval = poll_interval
        self.before_publish = before_publish
        self.published = 0
        self.lag = 0
        self._wake = asyncio.Event()
        # Built once: a pass runs for nearly every event the process writes.
        # Which rows to lock is read first, without locking; they are then locked by primary
        # key. A locking range scan also locks, for an instant, the first index entry past
        # its range: another service's row. That service's relay, finding its own row locked
        # at that instant, skipped it and published it only on its next poll (0.5 s late, in
        # about one saga in a hundred). Locks taken by primary key touch no other row.
        # More candidates than a batch, so that relays of one service running at the same time
        # each find rows the others have not locked. (SQLite has one writer and no row locks:
        # it compiles the lock away.)
        self._candidates = (
            sa.select(outbox.c.id)
            .where(outbox.c.published_at.is_(None), outbox.c.event_type.in_(self.types))
            .order_by(outbox.c.id)
            .limit(self.batch * 4)
        )
        self._lock = (
            sa.select(
                outbox.c.id,
                outbox.c.order_id,
                outbox.c.event_type,
                outbox.c.payload,
                outbox.c.created_at,
                outbox.c.published_at,
            )
            # By primary key alone: a condition on published_at would let the optimizer
            # scan (and lock) the unpublished rows of every type instead.
            .where(outbox.c.id.in_(sa.bindparam("ids", expanding=True)))
            .order_by(outbox.c.id)
            .limit(self.batch)
            .with_for_update(skip_locked=True)
        )

    def notify(self) -> None:
        """Ask for a pass soon (an event was just written)."""
        self._wake.set()

    async def publish_pending(self) -> int:
        """One pass: publish up to ``batch`` rows; how many were published."""

        async def work(conn: AsyncConnection) -> int:
            ids = (await conn.execute(self._candidates)).scalars().all()
            if not ids:
                return 0
            # Rows another relay of this service holds are skipped: it publishes them.
            locked = (await conn.execute(self._lock, {"ids": list(ids)})).all()
            rows = [r for r in locked if r.published_at is None]  # not published meanwhile
            if not rows:
                return 0
            events = [
                Event(r.event_type, r.order_id, json.loads(r.payload), r.created_at) for r in rows
            ]
            if self.before_publish is not None:
                self.before_publish(events)
            await self.bus.publish(events)
            marks = {**_PUBLISHED.params([r.id for r in rows]), "stamp": now()}
            await _PUBLISHED.of(len(rows)).run(conn, marks, commit=True)
            return len(rows)

        count: int = await self.db.transaction(work)
        self.published += count
        return count

    async def unpublished(self) -> int:
        """Rows of this relay's producers not yet published (the outbox lag)."""
        async with self.db.engine.connect() as conn:
            value = await conn.scalar(
                sa.select(sa.func.count())
                .select_from(outbox)
                .where(outbox.c.published_at.is_(None), outbox.c.event_type.in_(self.types))
            )
        return int(value or 0)

    async def run(self) -> None:
        """Publish until cancelled; survive the database or the bus being away for a while."""
        lost: set[str] = set()
        while True:
            woken = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()
                    woken = True
            self._wake.clear()
            try:
                while await self.publish_pending() == self.batch:
                    pass
                if not woken:
                    self.lag = await self.unpublished()
            except Exception as exc:  # retried on the next pass; a fault is logged once
                dependency = dependency_of(exc)
                if dependency is None:
                    log.warning("relay.pass_failed", error_type=type(exc).__name__, error=str(exc))
                else:
                    lost.add(dependency)
                    self.outages.lost(dependency, exc, where="relay")
                    self.outages.retries[dependency] += 1
                await asyncio.sleep(self.poll_interval)
            else:
                self.outages.restore_all(lost)
