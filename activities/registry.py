"""Operations by name, for anything that receives them as messages.

Every operation of :data:`contracts.catalogue.CATALOGUE`, bound to the function that runs it.

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
from activities.db import Database
from activities.errors import InvalidCommand
from contracts import catalogue as ops
from contracts.catalogue import CATALOGUE


@dataclass(frozen=True)
class Bound:
    """A catalogue operation bound to the function that runs it."""

    spec: ops.Operation[Any, Any]
    run: Callable[..., Awaitable[BaseModel]]
    configured: bool = False  # takes served_countries
    read_only: bool = False  # changes nothing, so it has no outcome to emit


_RUNS: dict[str, Callable[..., Awaitable[BaseModel]]] = {
    ops.CREATE_ORDER.name: orders.create_order,
    ops.CANCEL_ORDER.name: orders.cancel_order,
    ops.COMPLETE_ORDER.name: orders.complete_order,
    ops.RESERVE_STOCK.name: inventory.reserve_stock,
    ops.RELEASE_STOCK.name: inventory.release_stock,
    ops.SCREEN_ORDER.name: payments.screen_order,
    ops.PROCESS_PAYMENT.name: payments.process_payment,
    ops.CANCEL_PAYMENT.name: payments.cancel_payment,
    ops.REFUND_PAYMENT.name: payments.refund_payment,
    ops.ARRANGE_SHIPPING.name: shipping.arrange_shipping,
    ops.CANCEL_SHIPPING.name: shipping.cancel_shipping,
}
OPERATIONS: dict[str, Bound] = {
    spec.name: Bound(
        spec,
        _RUNS[spec.name],
        configured=spec is ops.ARRANGE_SHIPPING,
        read_only=spec is ops.SCREEN_ORDER,
    )
    for spec in CATALOGUE
}


def operations_of(service: str) -> dict[str, Bound]:
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
    model = operation.spec.input
    known = {k: v for k, v in payload.items() if k in model.model_fields}
    try:
        command = model.model_validate(known)
    except ValidationError as exc:
        raise InvalidCommand(
            f"invalid {name} command",
            operation=name,
            errors=[{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()],
        ) from exc
    if operation.read_only:
        result = await operation.run(db, command)
    elif operation.configured:
        result = await operation.run(db, command, served_countries=served_countries, emit=emit)
    else:
        result = await operation.run(db, command, emit=emit)
    return result.model_dump(mode="json")
