"""The bookstore's operations, each once: its name, input, result, compensation and milestone.

An :class:`Operation` is what a workflow step calls (``await ctx.step(RESERVE_STOCK,
ReserveStock(...))``: the engine takes its name, the result model it returns and the
compensation it registers before the command leaves) and what a service runs
(:mod:`activities.registry` binds each name to its function and validates the input with the
same model). The ``milestone`` is the saga status the order saga reaches when the step
completes.

A compensation's input is made of the forward command's fields of the same names: every
compensation here takes an :class:`~contracts.commands.OrderRef`, which is the command's
``order_id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from contracts.commands import (
    ArrangeShipping,
    Compensation,
    CreateOrder,
    OrderRef,
    OrderScreened,
    OrderView,
    PaymentView,
    ProcessPayment,
    ReserveStock,
    ScreenOrder,
    ShipmentView,
    StockReservation,
)

__all__ = [
    "ARRANGE_SHIPPING",
    "CANCEL_ORDER",
    "CANCEL_PAYMENT",
    "CANCEL_SHIPPING",
    "CATALOGUE",
    "COMPLETE_ORDER",
    "CREATE_ORDER",
    "PROCESS_PAYMENT",
    "REFUND_PAYMENT",
    "RELEASE_STOCK",
    "RESERVE_STOCK",
    "SCREEN_ORDER",
    "Operation",
]

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)


@dataclass(frozen=True)
class Operation(Generic[In, Out]):
    """One operation: ``name`` is ``"service.method"``; ``input`` and ``result`` are its models;
    ``compensation`` undoes it; ``milestone`` is the saga status once it completed."""

    name: str
    input: type[In]
    result: type[Out]
    compensation: Operation[Any, Any] | None = None
    milestone: str | None = None

    def compensation_for(self, command: In) -> tuple[str, BaseModel] | None:
        """The compensation's name and input for ``command``, or ``None`` when there is none."""
        undo = self.compensation
        if undo is None:
            return None
        shared = command.model_dump(include=set(undo.input.model_fields))
        return undo.name, undo.input.model_validate(shared)


CANCEL_ORDER = Operation("order.cancel_order", OrderRef, Compensation)
RELEASE_STOCK = Operation("inventory.release_stock", OrderRef, Compensation)
CANCEL_PAYMENT = Operation("payment.cancel_payment", OrderRef, Compensation)
REFUND_PAYMENT = Operation("payment.refund_payment", OrderRef, Compensation)
CANCEL_SHIPPING = Operation("shipping.cancel_shipping", OrderRef, Compensation)

CREATE_ORDER = Operation(
    "order.create_order", CreateOrder, OrderView, CANCEL_ORDER, milestone="ORDER_CREATED"
)
RESERVE_STOCK = Operation(
    "inventory.reserve_stock",
    ReserveStock,
    StockReservation,
    RELEASE_STOCK,
    milestone="STOCK_RESERVED",
)
PROCESS_PAYMENT = Operation(
    "payment.process_payment",
    ProcessPayment,
    PaymentView,
    CANCEL_PAYMENT,
    milestone="PAYMENT_COMPLETED",
)
# Read-only: it changes nothing, so there is nothing to compensate.
SCREEN_ORDER = Operation("payment.screen_order", ScreenOrder, OrderScreened)
ARRANGE_SHIPPING = Operation(
    "shipping.arrange_shipping",
    ArrangeShipping,
    ShipmentView,
    CANCEL_SHIPPING,
    milestone="SHIPPING_ARRANGED",
)
COMPLETE_ORDER = Operation("order.complete_order", OrderRef, OrderView)

CATALOGUE: tuple[Operation[Any, Any], ...] = (
    CREATE_ORDER,
    CANCEL_ORDER,
    COMPLETE_ORDER,
    RESERVE_STOCK,
    RELEASE_STOCK,
    SCREEN_ORDER,
    PROCESS_PAYMENT,
    CANCEL_PAYMENT,
    REFUND_PAYMENT,
    ARRANGE_SHIPPING,
    CANCEL_SHIPPING,
)
