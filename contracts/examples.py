"""Replies as the order saga's services give them, for services that only pretend: the engine's
overhead benchmark and the tests' fake services.

The typed order workflow validates each reply into its operation's result model
(:mod:`contracts.catalogue`), so a stand-in must answer as the real service does.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any, Literal

from contracts import catalogue as ops
from contracts.commands import (
    Address,
    OrderItem,
    OrderScreened,
    OrderView,
    PaymentView,
    ShipmentView,
    StockReservation,
)

__all__ = ["ADDRESS", "ORDER_STEPS", "Reply", "order_replies"]

Reply = Callable[[dict[str, Any]], dict[str, Any]]

ADDRESS = Address(name="Hanako", line1="1-2-3", city="Tokyo", postal_code="150-0002", country="JP")
# The order saga's forward steps, each with the compensation that undoes it (None: nothing).
ORDER_STEPS: dict[str, str | None] = {
    op.name: None if op.compensation is None else op.compensation.name
    for op in (
        ops.CREATE_ORDER,
        ops.RESERVE_STOCK,
        ops.PROCESS_PAYMENT,
        ops.ARRANGE_SHIPPING,
        ops.COMPLETE_ORDER,
    )
}
_ITEMS = [OrderItem(book_id=1, quantity=2)]


def order_replies(total: str = "12.50") -> dict[str, Reply]:
    """A reply for each forward step of the order saga, by target (the fraud screening of a
    large order's included); ``total`` is the order's."""
    amount = Decimal(total)

    def order(status: Literal["PENDING", "COMPLETED"]) -> Reply:
        def reply(payload: dict[str, Any]) -> dict[str, Any]:
            view = OrderView(
                order_id=payload.get("order_id", "unknown"),
                customer_id=1,
                status=status,
                total_amount=amount,
                items=_ITEMS,
                shipping_address=ADDRESS,
            )
            return view.model_dump(mode="json")

        return reply

    def stock(payload: dict[str, Any]) -> dict[str, Any]:
        return StockReservation(
            order_id=payload.get("order_id", "unknown"), items=_ITEMS
        ).model_dump(mode="json")

    def screening(payload: dict[str, Any]) -> dict[str, Any]:
        view = OrderScreened(
            order_id=payload.get("order_id", "unknown"),
            customer_id=1,
            amount=amount,
            paid_recently=Decimal(0),
            daily_limit=Decimal("30000.00"),
        )
        return view.model_dump(mode="json")

    def payment(payload: dict[str, Any]) -> dict[str, Any]:
        view = PaymentView(
            order_id=payload.get("order_id", "unknown"),
            customer_id=1,
            amount=amount,
            status="COMPLETED",
        )
        return view.model_dump(mode="json")

    def shipment(payload: dict[str, Any]) -> dict[str, Any]:
        view = ShipmentView(
            order_id=payload.get("order_id", "unknown"),
            status="ARRANGED",
            country="JP",
            tracking_number="T-1",
        )
        return view.model_dump(mode="json")

    return {
        ops.CREATE_ORDER.name: order("PENDING"),
        ops.RESERVE_STOCK.name: stock,
        ops.SCREEN_ORDER.name: screening,
        ops.PROCESS_PAYMENT.name: payment,
        ops.ARRANGE_SHIPPING.name: shipment,
        ops.COMPLETE_ORDER.name: order("COMPLETED"),
    }
