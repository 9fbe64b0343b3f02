"""The order saga: create order → reserve stock → take payment → arrange shipping → complete.

Each forward step registers its compensation before it is sent; the status projection moves
STARTED → ORDER_CREATED → STOCK_RESERVED → PAYMENT_COMPLETED → SHIPPING_ARRANGED → COMPLETED
through the steps' milestones (the engine writes COMPLETED / COMPENSATION_STARTED / FAILED).
The seed's declarative ``ORDER_WORKFLOW`` dict runs on the same engine through
:func:`workflow_from_definition`.
"""

from __future__ import annotations

from typing import Any

from contracts import catalogue as ops
from contracts.catalogue import CATALOGUE
from contracts.commands import (
    ArrangeShipping,
    CreateOrder,
    OrderPlaced,
    OrderRef,
    ProcessPayment,
    ReserveStock,
)
from engine import RetryPolicy, WorkflowContext, workflow

__all__ = [
    "MILESTONES",
    "ORDER_WORKFLOW",
    "SERVICE_RETRY",
    "UNTIL_DONE_RETRY",
    "place_order",
    "place_order_declarative",
    "workflow_from_definition",
]

# One policy for every service command: transport trouble and timeouts only (business errors
# arrive non_retryable and are never retried).
SERVICE_RETRY = RetryPolicy(initial_interval=0.2, backoff=2.0, max_interval=5.0, max_attempts=5)
# Steps after the pivot (shipping arranged) cannot be undone: they are retried until they are
# done. Giving up would compensate a saga whose last command may well have run — e.g. an order
# COMPLETED just before the broker went away, which ``order.cancel_order`` then refuses forever.
UNTIL_DONE_RETRY = RetryPolicy(
    initial_interval=0.2, backoff=2.0, max_interval=5.0, max_attempts=None
)

# The saga status each step reaches, from the catalogue (for the declarative definition).
MILESTONES = {op.name: op.milestone for op in CATALOGUE if op.milestone is not None}


@workflow(name="place_order")
async def place_order(ctx: WorkflowContext, order: CreateOrder) -> OrderPlaced:
    """Create the order, reserve its stock, take the payment, arrange shipping, complete it.

    Each step's compensation (cancel the order, release the stock, cancel the payment, cancel
    the shipment) is registered before its command leaves; completing the order comes after
    the pivot and is retried until it is done.
    """
    created = await ctx.step(ops.CREATE_ORDER, order, retry=SERVICE_RETRY)
    await ctx.step(
        ops.RESERVE_STOCK,
        ReserveStock(order_id=order.order_id, items=order.items),
        retry=SERVICE_RETRY,
    )
    payment = await ctx.step(
        ops.PROCESS_PAYMENT,
        ProcessPayment(
            order_id=order.order_id, customer_id=order.customer_id, amount=created.total_amount
        ),
        retry=SERVICE_RETRY,
    )
    shipment = await ctx.step(
        ops.ARRANGE_SHIPPING,
        ArrangeShipping(order_id=order.order_id, address=order.shipping_address),
        retry=SERVICE_RETRY,
    )
    await ctx.step(ops.COMPLETE_ORDER, OrderRef(order_id=order.order_id), retry=UNTIL_DONE_RETRY)
    return OrderPlaced(
        order_id=order.order_id,
        total_amount=created.total_amount,
        payment=payment,
        shipment=shipment,
    )


ORDER_WORKFLOW: dict[str, Any] = {
    "steps": [
        {"service": "order", "command": "create_order", "compensation": "cancel_order"},
        {"service": "inventory", "command": "reserve_stock", "compensation": "release_stock"},
        {"service": "payment", "command": "process_payment", "compensation": "cancel_payment"},
        {"service": "shipping", "command": "arrange_shipping", "compensation": "cancel_shipping"},
        {"service": "order", "command": "complete_order"},
    ]
}


def workflow_from_definition(
    definition: dict[str, Any], *, name: str, retry: RetryPolicy = SERVICE_RETRY
) -> Any:
    """Turn the seed's ``{"steps": [{"service", "command", "compensation"?}]}`` into a workflow.

    Each command gets the saga's running state: the input merged with every earlier reply
    (``amount`` defaults to ``total_amount``, ``address`` to ``shipping_address``); each
    compensation gets ``{"order_id"}``. A step's optional ``"milestone"`` (default: from
    :data:`MILESTONES`) becomes the saga status when it completes. A step without a
    compensation after one with a compensation comes after the pivot: it is retried until done
    (:data:`UNTIL_DONE_RETRY`) instead of by ``retry``.
    """
    steps = list(definition["steps"])
    for spec in steps:
        if not {"service", "command"} <= spec.keys():
            raise ValueError(f"a step needs 'service' and 'command': {spec!r}")

    async def run_definition(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
        state = dict(data)
        ref = {"order_id": state["order_id"]}
        compensatable_before = False
        for spec in steps:
            target = f"{spec['service']}.{spec['command']}"
            compensation = spec.get("compensation")
            after_pivot = compensatable_before and not compensation
            compensatable_before = compensatable_before or bool(compensation)
            reply = await ctx.step(
                target,
                state,
                compensate=f"{spec['service']}.{compensation}" if compensation else None,
                compensation_payload=ref,
                retry=UNTIL_DONE_RETRY if after_pivot else retry,
                milestone=spec.get("milestone", MILESTONES.get(target)),
            )
            state.update(reply)
            if "total_amount" in reply:
                state.setdefault("amount", reply["total_amount"])
            if "shipping_address" in state:
                state.setdefault("address", state["shipping_address"])
        return {"order_id": state["order_id"]}

    run_definition.__name__ = name
    run_definition.__qualname__ = name
    return workflow(run_definition, name=name)


place_order_declarative = workflow_from_definition(ORDER_WORKFLOW, name="place_order_declarative")
