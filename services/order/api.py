"""The order service's REST API: place, read and cancel orders."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from activities import cancel_order, create_order, get_order
from activities.commands import CreateOrder, OrderRef, OrderView, PlaceOrder
from activities.errors import (
    AlreadyCompensated,
    BookNotFound,
    CustomerNotFound,
    InvalidOrderState,
    OrderNotFound,
)
from services._kit import DatabaseDep, OrderIdPath, error_responses

router = APIRouter(prefix="/orders", tags=["orders"])


def new_order_id() -> str:
    return str(uuid.uuid4())


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=OrderView,
    responses=error_responses(CustomerNotFound, BookNotFound, AlreadyCompensated),
    summary="Place an order (PENDING); the server assigns its order_id",
)
async def place_order(body: PlaceOrder, db: DatabaseDep, response: Response) -> OrderView:
    cmd = CreateOrder.model_validate({**body.model_dump(), "order_id": new_order_id()})
    order = await create_order(db, cmd)
    response.headers["Location"] = f"/orders/{order.order_id}"
    return order


@router.get(
    "/{order_id}",
    response_model=OrderView,
    responses=error_responses(OrderNotFound),
    summary="An order with its items, total and status",
)
async def read_order(order_id: OrderIdPath, db: DatabaseDep) -> OrderView:
    return await get_order(db, order_id)


@router.put(
    "/{order_id}/cancel",
    response_model=OrderView,
    responses=error_responses(OrderNotFound, InvalidOrderState),
    summary="Cancel a PENDING order (409 once it is COMPLETED); repeating it is harmless",
)
async def cancel(order_id: OrderIdPath, db: DatabaseDep) -> OrderView:
    # Read first: cancelling an id that was never created would leave a tombstone for it.
    await get_order(db, order_id)
    await cancel_order(db, OrderRef(order_id=order_id, reason="cancelled via REST"))
    return await get_order(db, order_id)
