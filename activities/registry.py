"""Operations by name, for anything that receives them as messages.

A command consumer (RabbitMQ, the in-process transport, an event handler) knows an operation
by its ``"service.operation"`` name and a JSON payload; :func:`invoke` validates the payload
into the operation's input model, runs it, and returns the result as JSON-ready data.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from activities import inventory, orders, payments, shipping
from activities._inbox import Emit
from activities.commands import ArrangeShipping, CreateOrder, OrderRef, ProcessPayment, ReserveStock
from activities.db import Database
from activities.errors import InvalidCommand


@dataclass(frozen=True)
class Operation:
    run: Callable[..., Awaitable[BaseModel]]
    input: type[BaseModel]
    configured: bool = False  # takes served_countries


OPERATIONS: dict[str, Operation] = {
    "order.create_order": Operation(orders.create_order, CreateOrder),
    "order.cancel_order": Operation(orders.cancel_order, OrderRef),
    "order.complete_order": Operation(orders.complete_order, OrderRef),
    "inventory.reserve_stock": Operation(inventory.reserve_stock, ReserveStock),
    "inventory.release_stock": Operation(inventory.release_stock, OrderRef),
    "payment.process_payment": Operation(payments.process_payment, ProcessPayment),
    "payment.cancel_payment": Operation(payments.cancel_payment, OrderRef),
    "payment.refund_payment": Operation(payments.refund_payment, OrderRef),
    "shipping.arrange_shipping": Operation(
        shipping.arrange_shipping, ArrangeShipping, configured=True
    ),
    "shipping.cancel_shipping": Operation(shipping.cancel_shipping, OrderRef),
}


def operations_of(service: str) -> dict[str, Operation]:
    """The operations one service answers, by operation name (``reserve_stock``...)."""
    prefix = f"{service}."
    return {
        name.removeprefix(prefix): op for name, op in OPERATIONS.items() if name.startswith(prefix)
    }


async def invoke(
    db: Database,
    name: str,
    payload: dict[str, Any],
    *,
    served_countries: Collection[str] = shipping.DEFAULT_SERVED_COUNTRIES,
    emit: Emit | None = None,
) -> dict[str, Any]:
    """Run operation ``name`` on ``payload``; InvalidCommand when either is not valid.

    Fields the operation does not take are ignored (messages may carry more); the rest is
    validated as strictly as a REST body. ``emit`` sees the outcome inside the operation's
    transaction (see :data:`activities._inbox.Emit`).
    """
    operation = OPERATIONS.get(name)
    if operation is None:
        raise InvalidCommand(f"unknown operation {name!r}", operation=name)
    # A saga may send its whole running state (the seed's declarative workflow does): each
    # operation takes the fields it knows and validates them strictly.
    known = {k: v for k, v in payload.items() if k in operation.input.model_fields}
    try:
        command = operation.input.model_validate(known)
    except ValidationError as exc:
        raise InvalidCommand(
            f"invalid {name} command",
            operation=name,
            errors=[{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()],
        ) from exc
    if operation.configured:
        result = await operation.run(db, command, served_countries=served_countries, emit=emit)
    else:
        result = await operation.run(db, command, emit=emit)
    return result.model_dump(mode="json")
