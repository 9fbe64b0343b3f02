"""The bookstore's business operations, shared by REST routes, command consumers and event handlers.

Each operation is an async function ``op(db, command) -> result`` that runs in one database
transaction, at most once per (order id, operation), and is safe against its compensation
arriving first. See :mod:`activities._inbox` for how, and :mod:`activities.errors` for the
refusals they raise.
"""

from __future__ import annotations

from activities._inbox import Emit, request_id_for
from activities.db import Database, create_engine
from activities.inventory import (
    Reservation,
    get_reservations,
    get_stock,
    release_stock,
    reserve_stock,
    restock,
)
from activities.orders import (
    cancel_order,
    check_order,
    complete_order,
    create_order,
    get_order,
    order_id_for,
    request_cancel,
)
from activities.payments import (
    cancel_payment,
    get_payment,
    process_payment,
    refund_payment,
    screen_order,
    top_up,
)
from activities.shipping import arrange_shipping, cancel_shipping, get_shipment

__all__ = [
    "Database",
    "Emit",
    "Reservation",
    "arrange_shipping",
    "cancel_order",
    "cancel_payment",
    "cancel_shipping",
    "check_order",
    "complete_order",
    "create_engine",
    "create_order",
    "get_order",
    "get_payment",
    "get_reservations",
    "get_shipment",
    "get_stock",
    "order_id_for",
    "process_payment",
    "refund_payment",
    "release_stock",
    "request_cancel",
    "request_id_for",
    "reserve_stock",
    "restock",
    "screen_order",
    "top_up",
]
