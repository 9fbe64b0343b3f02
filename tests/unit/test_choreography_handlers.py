"""The choreography's handlers on SQLite and the in-process bus: the seed's flows, duplicates,
and events that overtake the events they compensate. SPEC §6 is checked by SQL after each."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from domain_data import JP, balance, clean, stock

from activities import Database
from activities.errors import AlreadyCompensated, IdempotencyKeyReused, InvalidOrderState
from activities.orders import complete_order
from activities.registry import invoke
from choreography_pattern import Choreography, Event, InMemoryEventBus, start_order
from choreography_pattern import events as ev
from choreography_pattern.saga import cancel_choreographed_order, order_events
from choreography_pattern.steps import decide
from cloudmart.check import Baseline, check_connection
from cloudmart.schema import create_schema
from contracts.commands import OrderItem, OrderRef, PlaceOrder
from services._kit.roster import DOMAIN_SERVICES

STOCK = {1: 10, 2: 5, 3: 50}
BALANCES = {1: Decimal("10000.00"), 2: Decimal("500.00")}
US = JP.model_copy(update={"country": "US"})
SERVICES = DOMAIN_SERVICES


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "choreography.db"


@pytest.fixture
async def db(path: Path) -> AsyncIterator[Database]:
    database = Database.from_url(f"sqlite+aiosqlite:///{path}")
    await create_schema(database.engine)
    await clean(database)
    yield database
    await database.dispose()


@pytest.fixture
def sync(path: Path) -> Iterator[sa.Engine]:
    engine = sa.create_engine(f"sqlite:///{path}")
    yield engine
    engine.dispose()


class Shop:
    def __init__(self, db: Database, bus: InMemoryEventBus, choreo: Choreography) -> None:
        self.db, self.bus, self.choreo = db, bus, choreo

    async def settle(self) -> None:
        """Run until no event is queued, being handled or waiting in the outbox."""
        while True:
            published = len(self.bus.published)
            await self.bus.drain()
            relayed = await self.choreo.relay.publish_pending()
            await self.bus.drain()
            if (
                relayed == 0
                and await self.choreo.relay.unpublished() == 0
                and len(self.bus.published) == published
            ):
                return

    async def place(self, customer: int, *items: tuple[int, int], address: Any = JP) -> str:
        order = PlaceOrder(
            customer_id=customer,
            items=[OrderItem(book_id=b, quantity=q) for b, q in items],
            shipping_address=address,
        )
        view, created = await start_order(self.db, order)
        assert created
        return view.order_id

    async def status(self, order_id: str) -> str:
        async with self.db.engine.connect() as conn:
            return str(
                await conn.scalar(
                    sa.text("SELECT status FROM orders WHERE order_id = :o"), {"o": order_id}
                )
            )


@pytest.fixture
async def shop(db: Database) -> AsyncIterator[Shop]:
    bus = InMemoryEventBus()
    async with Choreography(db, bus, SERVICES, poll_interval=0.05) as choreo:
        yield Shop(db, bus, choreo)


def invariants(sync: sa.Engine, order_ids: list[str]) -> list[str]:
    baseline = Baseline(stock=STOCK, money=BALANCES)
    with sync.connect() as conn:
        report = check_connection(conn, grace_seconds=0.0, baseline=baseline, order_ids=order_ids)
    return [str(v) for v in report.violations]


async def test_one_item_order_completes_with_every_effect(shop: Shop, sync: sa.Engine) -> None:
    oid = await shop.place(1, (1, 2))
    await shop.settle()
    assert await shop.status(oid) == "COMPLETED"
    assert await stock(shop.db, 1) == (8, 0)
    assert await balance(shop.db, 1) == Decimal("8000.00")
    seen = [e.type for e in await order_events(shop.db, oid)]
    assert seen[0] == ev.ORDER_CREATED and seen[-1] == ev.ORDER_COMPLETED
    assert {ev.STOCK_RESERVED, ev.PAYMENT_COMPLETED, ev.SHIPPING_ARRANGED} <= set(seen)
    assert invariants(sync, [oid]) == []


async def test_stock_shortage_cancels_with_no_money_moved(shop: Shop, sync: sa.Engine) -> None:
    oid = await shop.place(1, (2, 6))
    await shop.settle()
    assert await shop.status(oid) == "CANCELLED"
    assert await stock(shop.db, 2) == (5, 0)
    assert await balance(shop.db, 1) == Decimal("10000.00")
    assert invariants(sync, [oid]) == []


async def test_payment_failure_releases_the_stock(shop: Shop, sync: sa.Engine) -> None:
    oid = await shop.place(2, (1, 1))
    await shop.settle()
    assert await shop.status(oid) == "CANCELLED"
    assert await stock(shop.db, 1) == (10, 0)
    assert ev.STOCK_RELEASED in {e.type for e in await order_events(shop.db, oid)}
    assert invariants(sync, [oid]) == []


async def test_stock_and_payment_both_failing_cancels_after_both_compensations(
    shop: Shop, sync: sa.Engine
) -> None:
    oid = await shop.place(2, (2, 6))
    await shop.settle()
    assert await shop.status(oid) == "CANCELLED"
    seen = {e.type for e in await order_events(shop.db, oid)}
    assert {ev.PAYMENT_CANCELLED, ev.STOCK_RELEASED} <= seen
    assert invariants(sync, [oid]) == []


async def test_shipping_failure_refunds_and_releases(shop: Shop, sync: sa.Engine) -> None:
    oid = await shop.place(1, (1, 3), address=US)
    await shop.settle()
    assert await shop.status(oid) == "CANCELLED"
    assert await stock(shop.db, 1) == (10, 0)
    assert await balance(shop.db, 1) == Decimal("10000.00")
    seen = {e.type for e in await order_events(shop.db, oid)}
    assert {ev.SHIPPING_FAILED, ev.PAYMENT_REFUNDED, ev.STOCK_RELEASED} <= seen
    assert invariants(sync, [oid]) == []


async def test_every_event_delivered_three_more_times_changes_nothing(
    shop: Shop, sync: sa.Engine
) -> None:
    ok, failed = await shop.place(1, (1, 1)), await shop.place(1, (3, 2), address=US)
    await shop.settle()
    before = (await stock(shop.db, 1), await stock(shop.db, 3), await balance(shop.db, 1))
    for _ in range(3):
        for fields in list(shop.bus.published):
            await shop.bus.publish_fields(fields)
    await shop.settle()
    assert (await stock(shop.db, 1), await stock(shop.db, 3), await balance(shop.db, 1)) == before
    assert [await shop.status(ok), await shop.status(failed)] == ["COMPLETED", "CANCELLED"]
    stats = shop.choreo.deps.stats_of
    assert stats("payment").duplicates >= 3 * 2
    # The order service and shipping's prerequisites find duplicates inside their transaction.
    assert stats("order").duplicates >= 3 * 10  # each order has at least five events
    assert stats("shipping").duplicates >= 3 * 4  # StockReserved and PaymentCompleted, twice
    assert invariants(sync, [ok, failed]) == []


async def test_stock_unavailable_before_order_created_means_no_charge_ever(
    db: Database, sync: sa.Engine
) -> None:
    # Payment's consumer runs alone first and sees the compensation before the order exists.
    bus = InMemoryEventBus()
    async with Choreography(db, bus, ["payment"]):
        order = PlaceOrder(
            customer_id=1,
            items=[OrderItem(book_id=2, quantity=6)],
            shipping_address=JP,
        )
        from activities.orders import order_id_for

        oid = order_id_for("early-compensation")
        await bus.publish([Event(ev.STOCK_UNAVAILABLE, oid, {})])
        await bus.drain()
    async with Choreography(db, bus, SERVICES) as choreo:
        shop = Shop(db, bus, choreo)
        view, _ = await start_order(db, order, idempotency_key="early-compensation")
        assert view.order_id == oid
        await shop.settle()
        assert await shop.status(oid) == "CANCELLED"
    assert await balance(db, 1) == Decimal("10000.00")
    async with db.engine.connect() as conn:
        assert (
            await conn.scalar(
                sa.text("SELECT COUNT(*) FROM payments WHERE order_id = :o"), {"o": oid}
            )
            == 0
        )
    assert invariants(sync, [oid]) == []


async def test_a_start_with_the_same_key_returns_the_order_and_another_body_is_refused(
    db: Database,
) -> None:
    body = PlaceOrder(customer_id=1, items=[OrderItem(book_id=1, quantity=1)], shipping_address=JP)
    first, created = await start_order(db, body, idempotency_key="k1")
    again, created_again = await start_order(db, body, idempotency_key="k1")
    assert created and not created_again and again.order_id == first.order_id
    other = body.model_copy(update={"items": [OrderItem(book_id=1, quantity=2)]})
    with pytest.raises(IdempotencyKeyReused):
        await start_order(db, other, idempotency_key="k1")
    async with db.engine.connect() as conn:
        assert await conn.scalar(sa.text("SELECT COUNT(*) FROM outbox")) == 1


def test_the_order_is_decided_only_once_every_compensation_is_seen() -> None:
    assert decide([ev.ORDER_CREATED, ev.STOCK_RESERVED]) is None
    assert decide([ev.SHIPPING_ARRANGED]) == "complete_order"
    assert decide([ev.STOCK_UNAVAILABLE]) is None
    assert decide([ev.STOCK_UNAVAILABLE, ev.PAYMENT_CANCELLED]) == "cancel_order"
    assert decide([ev.STOCK_UNAVAILABLE, ev.PAYMENT_FAILED, ev.PAYMENT_CANCELLED]) is None
    assert (
        decide([ev.STOCK_UNAVAILABLE, ev.PAYMENT_FAILED, ev.PAYMENT_CANCELLED, ev.STOCK_RELEASED])
        == "cancel_order"
    )
    assert decide([ev.SHIPPING_FAILED, ev.PAYMENT_REFUNDED]) is None
    assert decide([ev.SHIPPING_FAILED, ev.PAYMENT_REFUNDED, ev.STOCK_RELEASED]) == "cancel_order"


def test_a_cancel_request_rules_out_completing_until_everything_is_undone() -> None:
    arranged = [ev.ORDER_CREATED, ev.STOCK_RESERVED, ev.PAYMENT_COMPLETED, ev.SHIPPING_ARRANGED]
    assert decide([*arranged, ev.ORDER_CANCEL_REQUESTED]) is None
    assert decide([*arranged, ev.ORDER_CANCEL_REQUESTED, ev.SHIPPING_CANCELLED]) is None
    undone = [ev.SHIPPING_CANCELLED, ev.STOCK_RELEASED, ev.PAYMENT_REFUNDED]
    assert decide([*arranged, ev.ORDER_CANCEL_REQUESTED, *undone]) == "cancel_order"


async def test_cancel_requested_before_any_step_ran_cancels_with_nothing_moved(
    shop: Shop, sync: sa.Engine
) -> None:
    oid = await shop.place(1, (1, 2))
    pending = await cancel_choreographed_order(shop.db, oid)
    assert pending.status == "PENDING"  # CANCELLED only once the services have undone
    await shop.settle()
    assert await shop.status(oid) == "CANCELLED"
    assert await stock(shop.db, 1) == (10, 0)
    assert await balance(shop.db, 1) == Decimal("10000.00")
    seen = {e.type for e in await order_events(shop.db, oid)}
    assert ev.ORDER_COMPLETED not in seen
    assert {ev.SHIPPING_CANCELLED, ev.STOCK_RELEASED, ev.PAYMENT_REFUNDED} <= seen
    assert invariants(sync, [oid]) == []


async def test_cancel_after_shipping_was_arranged_undoes_shipment_stock_and_payment(
    shop: Shop, sync: sa.Engine
) -> None:
    oid = await shop.place(1, (1, 2))
    # Every step ran (the bus has not delivered anything yet): units consumed, money taken.
    for name, payload in (
        ("inventory.reserve_stock", {"items": [{"book_id": 1, "quantity": 2}]}),
        ("payment.process_payment", {"customer_id": 1, "amount": "2000.00"}),
        ("shipping.arrange_shipping", {"address": JP.model_dump()}),
    ):
        await invoke(shop.db, name, {"order_id": oid, **payload})
    assert await stock(shop.db, 1) == (8, 0)
    await cancel_choreographed_order(shop.db, oid)
    with pytest.raises(AlreadyCompensated):  # the order can no longer complete
        await complete_order(shop.db, OrderRef(order_id=oid))
    await shop.settle()
    assert await shop.status(oid) == "CANCELLED"
    assert await stock(shop.db, 1) == (10, 0)
    assert await balance(shop.db, 1) == Decimal("10000.00")
    async with shop.db.engine.connect() as conn:
        shipment = await conn.scalar(
            sa.text("SELECT status FROM shipments WHERE order_id = :o"), {"o": oid}
        )
    assert shipment == "CANCELLED"
    assert invariants(sync, [oid]) == []


async def test_cancel_of_a_completed_order_is_refused_and_a_repeat_changes_nothing(
    shop: Shop, sync: sa.Engine
) -> None:
    done = await shop.place(1, (3, 1))
    await shop.settle()
    with pytest.raises(InvalidOrderState):
        await cancel_choreographed_order(shop.db, done)
    assert await shop.status(done) == "COMPLETED"
    other = await shop.place(1, (3, 1))
    await cancel_choreographed_order(shop.db, other)
    await cancel_choreographed_order(shop.db, other)
    await shop.settle()
    await cancel_choreographed_order(shop.db, other)  # CANCELLED already: nothing to do
    async with shop.db.engine.connect() as conn:
        requests = await conn.scalar(
            sa.text("SELECT COUNT(*) FROM outbox WHERE order_id = :o AND event_type = :t"),
            {"o": other, "t": ev.ORDER_CANCEL_REQUESTED},
        )
    assert requests == 1
    assert await shop.status(other) == "CANCELLED"
    assert invariants(sync, [done, other]) == []


async def test_an_event_logged_but_not_decided_is_decided_when_it_comes_again(
    shop: Shop, sync: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The order service logs ShippingArranged and commits, then fails before completing the
    # order (a crash there): the redelivery finds the event logged, not processed, and decides.
    from choreography_pattern import steps

    run, failures = steps.run_operation, []

    async def fails_once(deps: Any, service: str, operation: str, *args: Any) -> bool:
        if service == "order" and operation == "complete_order" and not failures:
            failures.append(operation)
            raise RuntimeError("the order service died before complete_order")
        return await run(deps, service, operation, *args)

    monkeypatch.setattr(steps, "run_operation", fails_once)
    oid = await shop.place(1, (1, 1))
    await shop.settle()
    assert failures == ["complete_order"]
    assert await shop.status(oid) == "COMPLETED"
    types = [e.type for e in await order_events(shop.db, oid)]
    assert types.count(ev.SHIPPING_ARRANGED) == 1  # logged once, though handled twice
    assert invariants(sync, [oid]) == []
