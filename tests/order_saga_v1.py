"""The order saga's v1, as deployed before the fraud screening: for tests that run older code.

An orchestrator started with ``CLOUDMART_WORKFLOWS=order_saga_v1`` (and this directory on its
``PYTHONPATH``) registers :data:`WORKFLOWS` below instead of today's, the way a worker of the
previous release would: sagas it starts and drives record v1 histories, which today's
:func:`workflows.order_saga.place_order` must carry on. Keep :func:`place_order` as it was:
it is what sagas recorded by v1 look like.
"""

from __future__ import annotations

from contracts import catalogue as ops
from contracts.commands import (
    ArrangeShipping,
    CreateOrder,
    OrderPlaced,
    OrderRef,
    ProcessPayment,
    ReserveStock,
)
from engine import WorkflowContext, workflow
from engine.workflow import Workflow
from workflows.order_saga import place_order_declarative


@workflow(name="place_order")
async def place_order(ctx: WorkflowContext, order: CreateOrder) -> OrderPlaced:
    """v1: create the order, reserve its stock, take the payment, arrange shipping, complete."""
    created = await ctx.step(ops.CREATE_ORDER, order)
    await ctx.step(ops.RESERVE_STOCK, ReserveStock(order_id=order.order_id, items=order.items))
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


WORKFLOWS: tuple[Workflow, ...] = (place_order, place_order_declarative)
