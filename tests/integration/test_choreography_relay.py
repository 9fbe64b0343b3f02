"""The outbox relay on MariaDB: several relays publish every row once (SKIP LOCKED), in id
order; a rolled-back change leaves no event; a lost ``published_at`` re-publishes the same id."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from conftest import mysql_database_url

from activities import Database
from activities.tables import outbox
from choreography_pattern import Event, InMemoryEventBus, OutboxRelay
from choreography_pattern import events as ev
from choreography_pattern.outbox import outbox_rows
from cloudmart.schema import create_schema
from prepared_sql import run_together

pytestmark = [pytest.mark.mysql]


@pytest.fixture
async def db() -> AsyncIterator[Database]:
    database = Database.from_url(
        mysql_database_url("cloudmart_test_choreography_relay"), pool_size=10, max_overflow=10
    )
    await create_schema(database.engine)
    yield database
    await database.dispose()


async def add(db: Database, count: int) -> list[Event]:
    events = [Event(ev.ORDER_CREATED, f"order-{i}", {"n": i}) for i in range(count)]

    async def work(conn: sa.ext.asyncio.AsyncConnection) -> None:
        await run_together(conn, [outbox_rows(events)])

    await db.transaction(work)
    return events


class SlowBus(InMemoryEventBus):
    """Publishing takes a while, so concurrent relay passes overlap."""

    async def publish(self, events: list[Event]) -> None:  # type: ignore[override]
        await asyncio.sleep(0.01)
        await super().publish(events)


async def test_two_relays_publish_every_row_exactly_once_in_id_order(db: Database) -> None:
    events = await add(db, 300)
    bus = SlowBus()
    relays = [OutboxRelay(db, bus, batch=20) for _ in range(2)]

    async def drain(relay: OutboxRelay) -> None:
        while await relay.publish_pending():
            pass

    await asyncio.gather(*(drain(r) for r in relays for _ in range(2)))
    ids = [fields["event_id"] for fields in bus.published]
    assert sorted(ids) == sorted(e.event_id for e in events)
    assert len(ids) == len(set(ids))
    assert all(r.published > 0 for r in relays)
    assert await relays[0].unpublished() == 0


async def test_a_rolled_back_change_leaves_no_event(db: Database) -> None:
    class Abort(Exception):
        pass

    async def work(conn: sa.ext.asyncio.AsyncConnection) -> None:
        await run_together(conn, [outbox_rows([Event(ev.ORDER_CREATED, "rolled-back", {})])])
        raise Abort

    with pytest.raises(Abort):
        await db.transaction(work)
    bus = InMemoryEventBus()
    assert await OutboxRelay(db, bus).publish_pending() == 0
    assert bus.published == []


async def test_a_lost_published_mark_republishes_the_same_event_id(db: Database) -> None:
    (event,) = await add(db, 1)
    bus = InMemoryEventBus()
    relay = OutboxRelay(db, bus)
    assert await relay.publish_pending() == 1
    async with db.engine.begin() as conn:  # as if the commit of published_at was lost
        await conn.execute(outbox.update().values(published_at=None))
    assert await relay.publish_pending() == 1
    assert [f["event_id"] for f in bus.published] == [event.event_id, event.event_id]


async def test_a_relay_publishes_only_the_events_of_its_producers(db: Database) -> None:
    async def work(conn: sa.ext.asyncio.AsyncConnection) -> None:
        await run_together(
            conn,
            [outbox_rows([Event(ev.ORDER_CREATED, "o", {}), Event(ev.STOCK_RESERVED, "o", {})])],
        )

    await db.transaction(work)
    bus = InMemoryEventBus()
    assert await OutboxRelay(db, bus, producers=["inventory"]).publish_pending() == 1
    assert [f["type"] for f in bus.published] == [ev.STOCK_RESERVED]
