"""The order saga: create order → reserve stock → (screen for fraud) → take payment → arrange
shipping → complete.

Each forward step registers its compensation before it is sent; arranging shipping is the
pivot (from there on the saga only goes forward); the status projection moves
STARTED → ORDER_CREATED → STOCK_RESERVED → PAYMENT_COMPLETED → SHIPPING_ARRANGED → COMPLETED
through the steps' milestones (the engine writes COMPLETED / COMPENSATION_STARTED / FAILED).
An order of :data:`REVIEW_AMOUNT` or more is screened for fraud by the payment service before
it is paid: a change made while sagas of the previous code were in flight, behind the patch
``"fraud-check"`` (see :func:`place_order`).
The seed's declarative ``ORDER_WORKFLOW`` dict runs on the same engine through
:func:`workflow_from_definition`.
"""

from __future__ import annotations

from decimal import Decimal
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
    ScreenOrder,
)
from engine import RetryPolicy, WorkflowContext, workflow

__all__ = [
    "MILESTONES",
    "ORDER_WORKFLOW",
    "REVIEW_AMOUNT",
    "place_order",
    "place_order_declarative",
    "workflow_from_definition",
]

# The saga status each step reaches, from the catalogue (for the declarative definition).
MILESTONES = {op.name: op.milestone for op in CATALOGUE if op.milestone is not None}

# An order whose total reaches this is screened for fraud before its payment. A constant of
# the workflow, not a setting: a saga must take the same branch at every replay, whatever the
# process replaying it was configured with. Changing it is a change of the workflow.
REVIEW_AMOUNT = Decimal("10000.00")


@workflow(name="place_order")
async def place_order(ctx: WorkflowContext, order: CreateOrder) -> OrderPlaced:
    """Create the order, reserve its stock, take the payment, arrange shipping, complete it.

    An order of :data:`REVIEW_AMOUNT` or more is first screened (``payment.screen_order``,
    read-only); a refusal (``FraudSuspected``) compensates the saga as a refused payment does.
    The screening came after sagas were in flight: the amount is judged first, then the patch
    ``"fraud-check"`` is asked for, so only a screened saga records its marker and an ordinary
    order's history stays what it was; a saga recorded before the change (its history holds
    the payment where the marker would go) goes on without a screening.

    Each step's compensation (cancel the order, release the stock, cancel the payment, cancel
    the shipment) is registered before its command leaves. Arranging shipping is the pivot:
    once it is done, completing the order is retried until it is done, however late, and the
    saga can no longer be cancelled. Giving up there would compensate a saga whose last command
    may well have run (an order COMPLETED just before the broker went away, which
    ``order.cancel_order`` then refuses forever). Retries follow the engine's policy.
    """
    created = await ctx.step(ops.CREATE_ORDER, order)
    await ctx.step(ops.RESERVE_STOCK, ReserveStock(order_id=order.order_id, items=order.items))
    if created.total_amount >= REVIEW_AMOUNT and ctx.patched("fraud-check"):
        await ctx.step(
            ops.SCREEN_ORDER,
            ScreenOrder(
                order_id=order.order_id,
                customer_id=order.customer_id,
                amount=created.total_amount,
            ),
        )
    payment = await ctx.step(
        ops.PROCESS_PAYMENT,
        ProcessPayment(
            order_id=order.order_id, customer_id=order.customer_id, amount=created.total_amount
        ),
    )
    shipment = await ctx.step(
        ops.ARRANGE_SHIPPING,
        ArrangeShipping(order_id=order.order_id, address=order.shipping_address),
        pivot=True,
    )
    await ctx.step(ops.COMPLETE_ORDER, OrderRef(order_id=order.order_id))
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
    definition: dict[str, Any], *, name: str, retry: RetryPolicy | None = None
) -> Any:
    """Turn the seed's ``{"steps": [{"service", "command", "compensation"?}]}`` into a workflow.

    Each command gets the saga's running state: the input merged with every earlier reply
    (``amount`` defaults to ``total_amount``, ``address`` to ``shipping_address``); each
    compensation gets ``{"order_id"}``. A step's optional ``"milestone"`` (default: from
    :data:`MILESTONES`) becomes the saga status when it completes. The last step with a
    compensation before one without is the pivot (``ctx.step(..., pivot=True)``): the steps
    after it are retried until done. ``retry`` (default: the engine's) retries the others.
    """
    steps = list(definition["steps"])
    for spec in steps:
        if not {"service", "command"} <= spec.keys():
            raise ValueError(f"a step needs 'service' and 'command': {spec!r}")

    async def run_definition(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
        state = dict(data)
        ref = {"order_id": state["order_id"]}
        for index, spec in enumerate(steps):
            target = f"{spec['service']}.{spec['command']}"
            compensation = spec.get("compensation")
            following = steps[index + 1] if index + 1 < len(steps) else None
            pivot = (
                bool(compensation) and following is not None and not following.get("compensation")
            )
            reply = await ctx.step(
                target,
                state,
                compensate=f"{spec['service']}.{compensation}" if compensation else None,
                compensation_payload=ref,
                retry=retry,
                milestone=spec.get("milestone", MILESTONES.get(target)),
                pivot=pivot,
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
