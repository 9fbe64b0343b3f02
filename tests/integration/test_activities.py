"""Each business operation: happy path, business failure, idempotent repeat, compensation first."""

from __future__ import annotations

from decimal import Decimal

import pytest
import sqlalchemy as sa
from domain_data import JP, balance, order, scalar, stock

from activities import (
    arrange_shipping,
    cancel_order,
    cancel_payment,
    cancel_shipping,
    complete_order,
    create_order,
    get_order,
    get_payment,
    get_shipment,
    get_stock,
    process_payment,
    refund_payment,
    release_stock,
    reserve_stock,
    screen_order,
)
from activities.errors import (
    AlreadyCompensated,
    BookNotFound,
    CustomerNotFound,
    FraudSuspected,
    InvalidOrderState,
    NotFound,
    OrderNotFound,
    PaymentFailed,
    ReservationShipped,
    ShippingFailed,
    StockUnavailable,
)
from activities.tables import inbox, orders, payments, shipments, stock_reservations
from contracts.commands import (
    Address,
    ArrangeShipping,
    OrderItem,
    OrderRef,
    ProcessPayment,
    ReserveStock,
    ScreenOrder,
)

US = Address(name="Emma", line1="1 Main St", city="Springfield", postal_code="12345", country="US")


def ref(order_id: str) -> OrderRef:
    return OrderRef(order_id=order_id)


async def count(db, table: sa.Table, order_id: str) -> int:  # type: ignore[no-untyped-def]
    return int(
        await scalar(
            db, sa.select(sa.func.count()).select_from(table).where(table.c.order_id == order_id)
        )
    )


# create_order / cancel_order / complete_order --------------------------------------------


async def test_create_order_computes_total_and_is_pending(db) -> None:  # type: ignore[no-untyped-def]
    view = await create_order(db, order("o1", (1, 2), (2, 1)))
    assert view.status == "PENDING"
    assert view.total_amount == Decimal("4500.50")
    stored = await get_order(db, "o1")
    assert stored == view


async def test_create_order_repeat_returns_first_result_and_writes_nothing(db) -> None:  # type: ignore[no-untyped-def]
    first = await create_order(db, order("o1", (1, 2)))
    again = await create_order(db, order("o1", (1, 2)))
    assert again == first
    assert await count(db, orders, "o1") == 1


async def test_create_order_unknown_customer_or_book_is_not_found(db) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CustomerNotFound):
        await create_order(db, order("o1", (1, 1), customer_id=99))
    with pytest.raises(BookNotFound):
        await create_order(db, order("o2", (1, 1), (404, 1)))
    assert await count(db, orders, "o1") + await count(db, orders, "o2") == 0


async def test_cancel_order_cancels_pending_once(db) -> None:  # type: ignore[no-untyped-def]
    await create_order(db, order("o1", (1, 1)))
    first = await cancel_order(db, ref("o1"))
    again = await cancel_order(db, ref("o1"))
    assert first.undone and again == first
    assert (await get_order(db, "o1")).status == "CANCELLED"


async def test_cancel_before_create_leaves_tombstone(db) -> None:  # type: ignore[no-untyped-def]
    result = await cancel_order(db, ref("o1"))
    assert not result.undone
    with pytest.raises(AlreadyCompensated):
        await create_order(db, order("o1", (1, 1)))
    assert await count(db, orders, "o1") == 0


async def test_complete_order_after_a_cancel_is_refused_as_compensated(db) -> None:  # type: ignore[no-untyped-def]
    from activities.orders import request_cancel

    await create_order(db, order("o1", (1, 1)))
    await request_cancel(db, ref("o1"))  # leaves a tombstone in complete_order's slot
    await cancel_order(db, ref("o1"))
    # Run blind, completing a CANCELLED order is a state conflict; the tombstone is the answer.
    with pytest.raises(AlreadyCompensated):
        await complete_order(db, ref("o1"))
    assert (await get_order(db, "o1")).status == "CANCELLED"


async def test_complete_order_then_cancel_is_refused(db) -> None:  # type: ignore[no-untyped-def]
    await create_order(db, order("o1", (1, 1)))
    assert (await complete_order(db, ref("o1"))).status == "COMPLETED"
    with pytest.raises(InvalidOrderState):
        await cancel_order(db, ref("o1"))
    with pytest.raises(OrderNotFound):
        await complete_order(db, ref("missing"))
    with pytest.raises(OrderNotFound):
        await get_order(db, "missing")


# reserve_stock / release_stock ------------------------------------------------------------


async def test_reserve_stock_moves_available_to_reserved(db) -> None:  # type: ignore[no-untyped-def]
    await create_order(db, order("o1", (1, 3), (2, 5)))
    result = await reserve_stock(
        db,
        ReserveStock(
            order_id="o1",
            items=[OrderItem(book_id=2, quantity=5), OrderItem(book_id=1, quantity=3)],
        ),
    )
    assert [i.book_id for i in result.items] == [1, 2]
    assert await stock(db, 1) == (7, 3)
    assert await stock(db, 2) == (0, 5)
    view = await get_stock(db, 2)
    assert (view.available, view.reserved) == (0, 5)


async def test_reserve_stock_shortage_reserves_nothing_and_repeats_the_refusal(db) -> None:  # type: ignore[no-untyped-def]
    await create_order(db, order("o1", (1, 3), (2, 6)))
    cmd = ReserveStock(
        order_id="o1", items=[OrderItem(book_id=1, quantity=3), OrderItem(book_id=2, quantity=6)]
    )
    with pytest.raises(StockUnavailable) as refused:
        await reserve_stock(db, cmd)
    assert refused.value.details["book_id"] == 2
    assert await stock(db, 1) == (10, 0)
    assert await stock(db, 2) == (5, 0)
    with pytest.raises(StockUnavailable):
        await reserve_stock(db, cmd)
    assert await count(db, stock_reservations, "o1") == 0


async def test_reserve_stock_repeat_changes_nothing(db) -> None:  # type: ignore[no-untyped-def]
    await create_order(db, order("o1", (1, 2)))
    cmd = ReserveStock(order_id="o1", items=[OrderItem(book_id=1, quantity=2)])
    assert await reserve_stock(db, cmd) == await reserve_stock(db, cmd)
    assert await stock(db, 1) == (8, 2)


async def test_reserve_stock_unknown_order_or_book(db) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OrderNotFound):
        await reserve_stock(
            db, ReserveStock(order_id="nope", items=[OrderItem(book_id=1, quantity=1)])
        )
    await create_order(db, order("o1", (1, 1)))
    with pytest.raises(BookNotFound):
        await reserve_stock(
            db, ReserveStock(order_id="o1", items=[OrderItem(book_id=77, quantity=1)])
        )
    with pytest.raises(BookNotFound):
        await get_stock(db, 77)


async def test_release_stock_returns_units_once(db) -> None:  # type: ignore[no-untyped-def]
    await create_order(db, order("o1", (1, 4)))
    await reserve_stock(db, ReserveStock(order_id="o1", items=[OrderItem(book_id=1, quantity=4)]))
    first = await release_stock(db, ref("o1"))
    again = await release_stock(db, ref("o1"))
    assert first.undone and first.items == [OrderItem(book_id=1, quantity=4)]
    assert again == first
    assert await stock(db, 1) == (10, 0)


async def test_release_after_failed_reservation_undoes_nothing(db) -> None:  # type: ignore[no-untyped-def]
    await create_order(db, order("o1", (2, 9)))
    with pytest.raises(StockUnavailable):
        await reserve_stock(
            db, ReserveStock(order_id="o1", items=[OrderItem(book_id=2, quantity=9)])
        )
    result = await release_stock(db, ref("o1"))
    assert not result.undone
    assert await stock(db, 2) == (5, 0)


async def test_release_before_reserve_makes_the_late_reservation_a_no_op(db) -> None:  # type: ignore[no-untyped-def]
    await create_order(db, order("o1", (1, 2)))
    assert not (await release_stock(db, ref("o1"))).undone
    with pytest.raises(AlreadyCompensated):
        await reserve_stock(
            db, ReserveStock(order_id="o1", items=[OrderItem(book_id=1, quantity=2)])
        )
    assert await stock(db, 1) == (10, 0)


# process_payment / cancel_payment / refund_payment ---------------------------------------


async def test_process_payment_debits_balance(db) -> None:  # type: ignore[no-untyped-def]
    await create_order(db, order("o1", (1, 1)))
    view = await process_payment(
        db, ProcessPayment(order_id="o1", customer_id=1, amount=Decimal("1000.00"))
    )
    assert view.status == "COMPLETED"
    assert await balance(db, 1) == Decimal("9000.00")
    assert (await get_payment(db, "o1")).amount == Decimal("1000.00")


async def test_process_payment_short_balance_fails_and_records_failed_row(db) -> None:  # type: ignore[no-untyped-def]
    await create_order(db, order("o1", (1, 1), customer_id=2))
    cmd = ProcessPayment(order_id="o1", customer_id=2, amount=Decimal("1000.00"))
    with pytest.raises(PaymentFailed):
        await process_payment(db, cmd)
    with pytest.raises(PaymentFailed):
        await process_payment(db, cmd)
    assert await balance(db, 2) == Decimal("500.00")
    assert (await get_payment(db, "o1")).status == "FAILED"
    assert not (await cancel_payment(db, ref("o1"))).undone
    assert await balance(db, 2) == Decimal("500.00")


async def test_process_payment_repeat_debits_once(db) -> None:  # type: ignore[no-untyped-def]
    await create_order(db, order("o1", (1, 1)))
    cmd = ProcessPayment(order_id="o1", customer_id=1, amount=Decimal("250.25"))
    assert await process_payment(db, cmd) == await process_payment(db, cmd)
    assert await balance(db, 1) == Decimal("9749.75")


async def test_process_payment_unknown_customer_or_order(db) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OrderNotFound):
        await process_payment(db, ProcessPayment(order_id="x", customer_id=1, amount=Decimal(1)))
    await create_order(db, order("o1", (1, 1)))
    with pytest.raises(CustomerNotFound):
        await process_payment(db, ProcessPayment(order_id="o1", customer_id=42, amount=Decimal(1)))
    with pytest.raises(NotFound):
        await get_payment(db, "o1")


# screen_order ------------------------------------------------------------------------------


async def test_screen_order_lets_through_what_stays_within_the_daily_limit(db) -> None:  # type: ignore[no-untyped-def]
    from activities.payments import DAILY_LIMIT

    await create_order(db, order("o1", (2, 2)))
    await process_payment(
        db, ProcessPayment(order_id="o1", customer_id=1, amount=Decimal("5001.00"))
    )
    await create_order(db, order("o2", (1, 1)))
    room = DAILY_LIMIT - Decimal("5001.00")
    screened = await screen_order(db, ScreenOrder(order_id="o2", customer_id=1, amount=room))
    assert (screened.paid_recently, screened.daily_limit) == (Decimal("5001.00"), DAILY_LIMIT)
    assert await balance(db, 1) == Decimal("4999.00")  # read-only: nothing moved
    assert await count(db, payments, "o2") == 0
    assert await count(db, inbox, "o2") == 1  # only create_order's


async def test_screen_order_refuses_what_passes_the_daily_limit_and_repeats_the_refusal(db) -> None:  # type: ignore[no-untyped-def]
    from activities.payments import DAILY_LIMIT

    await create_order(db, order("o1", (2, 2)))
    await process_payment(
        db, ProcessPayment(order_id="o1", customer_id=1, amount=Decimal("5001.00"))
    )
    await create_order(db, order("o2", (1, 1)))
    cmd = ScreenOrder(order_id="o2", customer_id=1, amount=DAILY_LIMIT - Decimal("5000.99"))
    for _ in range(2):
        with pytest.raises(FraudSuspected) as refused:
            await screen_order(db, cmd)
        assert refused.value.details["paid_recently"] == "5001.00"
    assert "daily limit" in refused.value.message
    assert await count(db, payments, "o2") == 0


async def test_screen_order_counts_only_payments_taken_in_the_last_24_hours(db) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from activities._inbox import now
    from activities.payments import DAILY_LIMIT

    for oid in ("old", "refunded", "o1"):
        await create_order(db, order(oid, (1, 1)))
    for oid in ("old", "refunded"):
        await process_payment(db, ProcessPayment(order_id=oid, customer_id=1, amount=Decimal(1000)))
    await refund_payment(db, ref("refunded"))
    async with db.engine.begin() as conn:
        await conn.execute(
            payments.update()
            .where(payments.c.order_id == "old")
            .values(created_at=now() - timedelta(hours=25))
        )
    screened = await screen_order(db, ScreenOrder(order_id="o1", customer_id=1, amount=DAILY_LIMIT))
    assert screened.paid_recently == Decimal(0)


@pytest.mark.parametrize(
    ("compensate", "status"), [(cancel_payment, "CANCELLED"), (refund_payment, "REFUNDED")]
)
async def test_payment_compensation_credits_back_exactly_once(db, compensate, status) -> None:  # type: ignore[no-untyped-def]
    await create_order(db, order("o1", (1, 1)))
    await process_payment(
        db, ProcessPayment(order_id="o1", customer_id=1, amount=Decimal("1000.00"))
    )
    first = await compensate(db, ref("o1"))
    assert first.undone and first.amount == Decimal("1000.00")
    assert await compensate(db, ref("o1")) == first
    other = refund_payment if compensate is cancel_payment else cancel_payment
    assert not (await other(db, ref("o1"))).undone
    assert await balance(db, 1) == Decimal("10000.00")
    assert (await get_payment(db, "o1")).status == status


async def test_cancel_payment_before_process_blocks_the_late_charge(db) -> None:  # type: ignore[no-untyped-def]
    await create_order(db, order("o1", (1, 1)))
    assert not (await cancel_payment(db, ref("o1"))).undone
    with pytest.raises(AlreadyCompensated):
        await process_payment(
            db, ProcessPayment(order_id="o1", customer_id=1, amount=Decimal("1000.00"))
        )
    assert await balance(db, 1) == Decimal("10000.00")
    assert await count(db, payments, "o1") == 0


# arrange_shipping / cancel_shipping ------------------------------------------------------


async def _reserved(db, order_id: str, *items: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    await create_order(db, order(order_id, *items))
    await reserve_stock(
        db,
        ReserveStock(order_id=order_id, items=[OrderItem(book_id=b, quantity=q) for b, q in items]),
    )


async def test_arrange_shipping_consumes_reserved_stock(db) -> None:  # type: ignore[no-untyped-def]
    await _reserved(db, "o1", (1, 2))
    view = await arrange_shipping(db, ArrangeShipping(order_id="o1", address=JP))
    assert view.status == "ARRANGED" and view.tracking_number
    assert await stock(db, 1) == (8, 0)
    assert (await get_shipment(db, "o1")).status == "ARRANGED"
    with pytest.raises(ReservationShipped):
        await release_stock(db, ref("o1"))


async def test_arrange_shipping_unserved_country_fails_and_consumes_nothing(db) -> None:  # type: ignore[no-untyped-def]
    await _reserved(db, "o1", (1, 2))
    cmd = ArrangeShipping(order_id="o1", address=US)
    with pytest.raises(ShippingFailed):
        await arrange_shipping(db, cmd)
    with pytest.raises(ShippingFailed):
        await arrange_shipping(db, cmd)
    assert await stock(db, 1) == (8, 2)
    assert (await get_shipment(db, "o1")).status == "FAILED"


async def test_arrange_shipping_served_countries_are_configurable(db) -> None:  # type: ignore[no-untyped-def]
    await _reserved(db, "o1", (1, 1))
    view = await arrange_shipping(
        db, ArrangeShipping(order_id="o1", address=US), served_countries=("JP", "US")
    )
    assert view.status == "ARRANGED"


async def test_arrange_shipping_repeat_ships_once(db) -> None:  # type: ignore[no-untyped-def]
    await _reserved(db, "o1", (1, 2))
    cmd = ArrangeShipping(order_id="o1", address=JP)
    assert await arrange_shipping(db, cmd) == await arrange_shipping(db, cmd)
    assert await stock(db, 1) == (8, 0)
    assert await count(db, shipments, "o1") == 1


async def test_cancel_shipping_returns_units_to_reserve_then_release_frees_them(db) -> None:  # type: ignore[no-untyped-def]
    await _reserved(db, "o1", (1, 2), (3, 1))
    await arrange_shipping(db, ArrangeShipping(order_id="o1", address=JP))
    cancelled = await cancel_shipping(db, ref("o1"))
    assert cancelled.undone and await cancel_shipping(db, ref("o1")) == cancelled
    assert await stock(db, 1) == (8, 2)
    await release_stock(db, ref("o1"))
    assert await stock(db, 1) == (10, 0)
    assert await stock(db, 3) == (50, 0)
    assert (await get_shipment(db, "o1")).status == "CANCELLED"


async def test_cancel_shipping_before_arrange_blocks_the_late_shipment(db) -> None:  # type: ignore[no-untyped-def]
    await _reserved(db, "o1", (1, 1))
    assert not (await cancel_shipping(db, ref("o1"))).undone
    with pytest.raises(AlreadyCompensated):
        await arrange_shipping(db, ArrangeShipping(order_id="o1", address=JP))
    assert await count(db, shipments, "o1") == 0
    with pytest.raises(NotFound):
        await get_shipment(db, "o1")


async def test_every_operation_records_one_inbox_row(db) -> None:  # type: ignore[no-untyped-def]
    await _reserved(db, "o1", (1, 1))
    await process_payment(
        db, ProcessPayment(order_id="o1", customer_id=1, amount=Decimal("1000.00"))
    )
    await arrange_shipping(db, ArrangeShipping(order_id="o1", address=JP))
    await complete_order(db, ref("o1"))
    operations = await scalar(
        db, sa.select(sa.func.count()).select_from(inbox).where(inbox.c.order_id == "o1")
    )
    assert operations == 5


# operations by name (what message consumers call) -----------------------------------------


async def test_invoke_runs_a_whole_order_by_name(db) -> None:  # type: ignore[no-untyped-def]
    from activities.registry import OPERATIONS, invoke, operations_of

    address = JP.model_dump()
    created = await invoke(
        db, "order.create_order", {**order("o1", (1, 2)).model_dump(mode="json")}
    )
    await invoke(
        db, "inventory.reserve_stock", {"order_id": "o1", "items": [{"book_id": 1, "quantity": 2}]}
    )
    screened = await invoke(
        db,
        "payment.screen_order",
        {"order_id": "o1", "customer_id": 1, "amount": created["total_amount"]},
    )
    assert screened["paid_recently"] == "0.00"
    await invoke(
        db,
        "payment.process_payment",
        {"order_id": "o1", "customer_id": 1, "amount": created["total_amount"]},
    )
    shipped = await invoke(
        db,
        "shipping.arrange_shipping",
        {"order_id": "o1", "address": address},
        served_countries=("JP",),
    )
    done = await invoke(db, "order.complete_order", {"order_id": "o1"})
    assert shipped["status"] == "ARRANGED" and done["status"] == "COMPLETED"
    assert await stock(db, 1) == (8, 0)
    assert set(operations_of("payment")) == {
        "screen_order",
        "process_payment",
        "cancel_payment",
        "refund_payment",
    }
    assert len(OPERATIONS) == 11


async def test_invoke_refuses_unknown_operations_and_bad_payloads(db) -> None:  # type: ignore[no-untyped-def]
    from activities.errors import InvalidCommand
    from activities.registry import invoke

    with pytest.raises(InvalidCommand):
        await invoke(db, "inventory.steal_stock", {})
    with pytest.raises(InvalidCommand) as bad:
        await invoke(
            db,
            "inventory.reserve_stock",
            {"order_id": "o1", "items": [{"book_id": 1, "quantity": "many"}]},
        )
    assert bad.value.details["errors"]


# emit: the outcome, once, inside the operation's transaction --------------------------------


async def test_emit_sees_each_outcome_once_and_only_for_the_first_delivery(db) -> None:  # type: ignore[no-untyped-def]
    seen: list[tuple[str, dict]] = []  # type: ignore[type-arg]

    async def emit(conn, operation, outcome) -> None:  # type: ignore[no-untyped-def]
        # inside the transaction: the inbox row of this very operation is visible
        key = await conn.scalar(
            sa.select(inbox.c.message_key).where(inbox.c.message_key == f"o1:{operation}")
        )
        assert key is not None
        seen.append((operation, outcome))

    await create_order(db, order("o1", (2, 9)), emit=emit)
    cmd = ReserveStock(order_id="o1", items=[OrderItem(book_id=2, quantity=9)])
    for _ in range(2):
        with pytest.raises(StockUnavailable):
            await reserve_stock(db, cmd, emit=emit)
    await release_stock(db, ref("o1"), emit=emit)
    await release_stock(db, ref("o1"), emit=emit)
    assert [op for op, _ in seen] == ["create_order", "reserve_stock", "release_stock"]
    assert seen[1][1]["error"]["type"] == "StockUnavailable"
    assert seen[2][1]["result"]["undone"] is False


async def test_a_failing_emit_rolls_the_operation_back(db) -> None:  # type: ignore[no-untyped-def]
    async def broken(conn, operation, outcome) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("outbox unavailable")

    await create_order(db, order("o1", (1, 2)))
    cmd = ReserveStock(order_id="o1", items=[OrderItem(book_id=1, quantity=2)])
    with pytest.raises(RuntimeError):
        await reserve_stock(db, cmd, emit=broken)
    assert await stock(db, 1) == (10, 0)
    await reserve_stock(db, cmd)
    assert await stock(db, 1) == (8, 2)
