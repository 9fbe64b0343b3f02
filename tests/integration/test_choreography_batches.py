"""Events read together, handled together, on real Redis Streams and MariaDB: the events of
different orders that one read brings are handled in one transaction (one ``COMMIT``), each
effect once; a refused or poison event among them does not touch the others; and a batch that
was handled but not acknowledged when its consumer stopped is claimed by another consumer and
changes nothing more."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from conftest import TEST_REDIS_URL, mysql_database_url, until
from domain_data import order, stock
from sqlalchemy.ext.asyncio import AsyncConnection

from activities import Database, create_order
from activities.faults import Backoff, Outages
from activities.tables import inbox, outbox, processed_events, stock_reservations
from choreography_pattern import Choreography, Event
from choreography_pattern import events as ev
from choreography_pattern.redis_bus import RedisEventBus

pytestmark = [pytest.mark.mysql, pytest.mark.redis]

T = TypeVar("T")
ORDERS = 6


@pytest.fixture(scope="module")
def mysql_url() -> str:
    return mysql_database_url("cloudmart_test_choreography_batches")


class Transactions(Database):
    """The database, noting every transaction run on it: the work's name, and for each
    shared one (:meth:`Database.together`) the number of events it handled."""

    def __init__(self, db: Database) -> None:
        super().__init__(db.engine)
        self.alone: list[str] = []
        self.shared: list[int] = []

    async def transaction(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        self.alone.append(work.__qualname__)
        return await super().transaction(work)

    async def together(self, work: Callable[[Database], Awaitable[T]]) -> T:
        try:
            result = await super().together(work)
        except Exception:
            self.shared.append(-1)  # rolled back
            raise
        self.shared.append(len(result) if isinstance(result, list) else 0)
        return result

    def handlers_alone(self) -> list[str]:
        """Transactions of their own that were not the relay's."""
        return [name for name in self.alone if "OutboxRelay" not in name]


@asynccontextmanager
async def redis_bus(**options: Any) -> AsyncIterator[RedisEventBus]:
    namespace = f"test-batches-{uuid.uuid4().hex[:8]}"
    bus = RedisEventBus.from_url(
        TEST_REDIS_URL,
        namespace,
        block=0.1,
        outages=Outages(backoff=Backoff(initial=0.01, maximum=0.05)),
        **options,
    )
    try:
        yield bus
    finally:
        client = aioredis.Redis.from_url(TEST_REDIS_URL)
        keys = [k async for k in client.scan_iter(match=f"{namespace}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        await bus.aclose()


def created(order_id: str, quantity: int = 1) -> Event:
    return Event(
        ev.ORDER_CREATED,
        order_id,
        {"customer_id": 1, "items": [{"book_id": 3, "quantity": quantity}]},
    )


async def placed(db: Database, count: int, quantity: int = 1) -> list[Event]:
    """``count`` orders of book 3 written, and their OrderCreated events (not published)."""
    events = []
    for _ in range(count):
        order_id = str(uuid.uuid4())
        await create_order(db, order(order_id, (3, quantity)))
        events.append(created(order_id, quantity))
    return events


async def count(db: Database, statement: sa.Select[Any]) -> int:
    async with db.engine.connect() as conn:
        return int(await conn.scalar(statement) or 0)


def of_orders(table: sa.Table, events: list[Event]) -> sa.ColumnElement[bool]:
    return table.c.order_id.in_([e.order_id for e in events])


async def reserved_once_each(db: Database, events: list[Event]) -> None:
    """Every order of ``events`` reserved exactly once: one reservation, one inbox outcome,
    one StockReserved in the outbox."""
    for table in (stock_reservations, outbox):
        rows = await count(
            db, sa.select(sa.func.count()).select_from(table).where(of_orders(table, events))
        )
        assert rows == len(events), table.name
    outcomes = await count(
        db,
        sa.select(sa.func.count())
        .select_from(inbox)
        .where(of_orders(inbox, events), inbox.c.operation == "reserve_stock"),
    )
    assert outcomes == len(events)


async def all_processed(db: Database, events: list[Event]) -> bool:
    """Whether the inventory recorded every one of ``events`` processed."""
    return len(events) == await count(
        db,
        sa.select(sa.func.count())
        .select_from(processed_events)
        .where(processed_events.c.service == "inventory", of_orders(processed_events, events)),
    )


async def test_events_of_different_orders_read_together_are_handled_in_one_transaction(
    mysql_db: Database,
) -> None:
    events = await placed(mysql_db, ORDERS)
    before = await stock(mysql_db, 3)
    db = Transactions(mysql_db)
    async with redis_bus() as bus:
        await bus.publish(events)  # before the consumer starts: its first read takes them all
        async with Choreography(db, bus, ["inventory"]) as running:
            await until(lambda: running.consumers["inventory"].handled == ORDERS)
    assert db.shared == [ORDERS]  # one transaction, committed once, for the six
    assert db.handlers_alone() == []  # and none of their own
    await reserved_once_each(mysql_db, events)
    assert await stock(mysql_db, 3) == (before[0] - ORDERS, before[1] + ORDERS)


async def test_a_refused_and_a_poison_event_in_a_batch_leave_the_others_alone(
    mysql_db: Database,
) -> None:
    good = await placed(mysql_db, ORDERS)
    (refused,) = await placed(mysql_db, 1, quantity=100)  # more than book 3 has: refused
    poison = Event(ev.ORDER_CREATED, str(uuid.uuid4()), {"items": "not a list"})
    before = await stock(mysql_db, 3)
    db = Transactions(mysql_db)
    async with redis_bus(claim_idle=0.2, max_deliveries=2) as bus:
        await bus.publish([*good[:3], refused, poison, *good[3:]])
        async with Choreography(db, bus, ["inventory"]):
            await until(lambda: all_processed(mysql_db, [*good, refused]))
            dead = await until(lambda: bus.dead_letters("inventory"))
        assert [letter["event_id"] for letter in dead] == [poison.event_id]
    assert db.shared == [-1]  # the batch was tried together, failed, and rolled back whole
    await reserved_once_each(mysql_db, good)
    assert await stock(mysql_db, 3) == (before[0] - ORDERS, before[1] + ORDERS)
    unavailable = await count(
        mysql_db,
        sa.select(sa.func.count())
        .select_from(outbox)
        .where(outbox.c.order_id == refused.order_id, outbox.c.event_type == ev.STOCK_UNAVAILABLE),
    )
    assert unavailable == 1
    assert (
        await count(
            mysql_db,
            sa.select(sa.func.count())
            .select_from(stock_reservations)
            .where(of_orders(stock_reservations, [refused, poison])),
        )
        == 0
    )


class Stopped(Exception):
    """The consumer stops between the commit and the XACK (as a crash would)."""


async def test_a_batch_claimed_by_another_consumer_after_a_crash_changes_nothing_more(
    mysql_db: Database,
) -> None:
    events = await placed(mysql_db, ORDERS)
    before = await stock(mysql_db, 3)
    committed: list[str] = []

    def crash(event: Event) -> None:
        committed.append(event.event_id)
        raise Stopped

    async with redis_bus(claim_idle=30) as first_bus:
        await first_bus.publish(events)
        db = Transactions(mysql_db)
        async with Choreography(db, first_bus, ["inventory"], before_ack={"inventory": crash}):
            await until(lambda: len(committed) >= 1)
        assert db.shared == [ORDERS]
        assert (await first_bus.backlog("inventory")).pending == ORDERS  # none acknowledged
        second_bus = RedisEventBus.from_url(
            TEST_REDIS_URL, first_bus.namespace, claim_idle=0.2, block=0.1
        )
        try:
            async with Choreography(mysql_db, second_bus, ["inventory"]) as second:

                async def acknowledged() -> bool:
                    return (await second_bus.backlog("inventory")).pending == 0

                await until(acknowledged)
                stats = second.deps.stats_of("inventory")
                assert (stats.handled, stats.duplicates) == (0, ORDERS)
                assert second.consumers["inventory"].claimed == ORDERS
        finally:
            await second_bus.aclose()
    await reserved_once_each(mysql_db, events)
    assert await stock(mysql_db, 3) == (before[0] - ORDERS, before[1] + ORDERS)
