"""The order service's REST API: place, read and cancel orders.

``POST /orders`` depends on the pattern: in the orchestration the order row is created
directly (201, the orchestrator starts sagas on ``/saga/start``); in the choreography it
starts a choreographed saga (202, :func:`choreography_pattern.saga.start_order`).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from activities import cancel_order, create_order, get_order
from activities.errors import (
    AlreadyCompensated,
    BookNotFound,
    CustomerNotFound,
    IdempotencyKeyReused,
    InvalidOrderState,
    OrderNotFound,
    SagaBacklogFull,
)
from choreography_pattern.saga import (
    SeenEvent,
    cancel_choreographed_order,
    order_with_events,
    settled_order,
    start_order,
)
from contracts.commands import CreateOrder, OrderRef, OrderView, PlaceOrder
from services._kit import (
    DatabaseDep,
    IdempotencyKeyHeader,
    OrderIdPath,
    SettingsDep,
    error_responses,
)

router = APIRouter(prefix="/orders", tags=["orders"])


class OrderAccepted(BaseModel):
    order_id: str
    status: Literal["PENDING", "COMPLETED", "CANCELLED"]


class OrderDetail(OrderView):
    events: list[SeenEvent] = Field(
        default_factory=list,
        description="Choreography: the events the order service saw for this order, in order.",
    )


def new_order_id() -> str:
    return str(uuid.uuid4())


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=OrderView,
    responses={
        202: {"model": OrderAccepted, "description": "Choreography: the saga has started."},
        200: {"model": OrderAccepted, "description": "Choreography: a repeat of a keyed start."},
        **error_responses(
            CustomerNotFound,
            BookNotFound,
            AlreadyCompensated,
            IdempotencyKeyReused,
            SagaBacklogFull,
        ),
    },
    summary="Place an order: orchestration creates it (201), choreography starts its saga (202)",
)
async def place_order(
    body: PlaceOrder,
    db: DatabaseDep,
    settings: SettingsDep,
    request: Request,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JSONResponse:
    if settings.pattern == "choreography":
        order, created = await start_order(
            db,
            body,
            idempotency_key=idempotency_key,
            intake=getattr(request.app.state, "intake", None),
        )
        choreography = getattr(request.app.state, "choreography", None)
        if choreography is not None:
            choreography.notify()
        accepted = OrderAccepted(order_id=order.order_id, status=order.status)
        return JSONResponse(
            accepted.model_dump(mode="json"),
            status_code=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK,
            headers={"Location": f"/orders/{order.order_id}"},
        )
    cmd = CreateOrder.model_validate({**body.model_dump(), "order_id": new_order_id()})
    order = await create_order(db, cmd)
    return JSONResponse(
        order.model_dump(mode="json"),
        status_code=status.HTTP_201_CREATED,
        headers={"Location": f"/orders/{order.order_id}"},
    )


@router.get(
    "/{order_id}",
    response_model=OrderDetail,
    responses=error_responses(OrderNotFound),
    summary="An order with its items, total, status and (choreography) the events seen for it",
)
async def read_order(
    order_id: OrderIdPath,
    db: DatabaseDep,
    settings: SettingsDep,
    request: Request,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=30,
            description="Choreography long-poll: answer once the order is no longer PENDING, "
            "or after this many seconds.",
        ),
    ] = 0,
) -> OrderDetail | JSONResponse:
    if settings.pattern != "choreography":
        order = await get_order(db, order_id)
        return JSONResponse(order.model_dump(mode="json"))  # the orchestration's body, as before
    if wait > 0:
        changes = getattr(request.app.state, "choreography", None)
        order, events = await settled_order(db, order_id, wait=wait, changes=changes)
    else:
        order, events = await order_with_events(db, order_id)
    return OrderDetail(**order.model_dump(), events=events)


@router.put(
    "/{order_id}/cancel",
    response_model=OrderView,
    responses={
        **error_responses(OrderNotFound, InvalidOrderState),
        202: {
            "model": OrderView,
            "description": "Choreography: cancel requested. The services undo what they did "
            "(shipment, stock, payment) and the order, PENDING until then, becomes CANCELLED "
            "(`GET /orders/{order_id}?wait=` tells when).",
        },
    },
    summary="Cancel a PENDING order (409 once it is COMPLETED); repeating it is harmless",
)
async def cancel(
    order_id: OrderIdPath, db: DatabaseDep, settings: SettingsDep
) -> OrderView | JSONResponse:
    # Read first: cancelling an id that was never created would leave a tombstone for it.
    await get_order(db, order_id)
    if settings.pattern == "choreography":
        view = await cancel_choreographed_order(db, order_id)
        return JSONResponse(view.model_dump(mode="json"), status_code=status.HTTP_202_ACCEPTED)
    await cancel_order(db, OrderRef(order_id=order_id, reason="cancelled via REST"))
    return await get_order(db, order_id)
