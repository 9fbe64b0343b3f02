"""The shipping service's REST API: arrange and cancel an order's shipment."""

from __future__ import annotations

from fastapi import APIRouter

from activities import arrange_shipping, cancel_shipping, get_shipment
from activities.errors import AlreadyCompensated, NotFound, OrderNotFound, ShippingFailed
from contracts.commands import ArrangeShipping, Compensation, OrderRef, ShipmentView
from services._kit import DatabaseDep, OrderIdPath, SettingsDep, error_responses

router = APIRouter(prefix="/shipping", tags=["shipping"])


@router.post(
    "/arrange",
    response_model=ShipmentView,
    responses=error_responses(OrderNotFound, ShippingFailed, AlreadyCompensated),
    summary="Arrange delivery (422 ShippingFailed outside the served countries)",
)
async def arrange(body: ArrangeShipping, db: DatabaseDep, settings: SettingsDep) -> ShipmentView:
    return await arrange_shipping(db, body, served_countries=settings.served_countries)


@router.post(
    "/cancel",
    response_model=Compensation,
    summary="Cancel an order's shipment; its units go back to reserved (once)",
)
async def cancel(body: OrderRef, db: DatabaseDep) -> Compensation:
    return await cancel_shipping(db, body)


@router.get(
    "/{order_id}",
    response_model=ShipmentView,
    responses=error_responses(NotFound),
    summary="An order's shipment",
)
async def read_shipment(order_id: OrderIdPath, db: DatabaseDep) -> ShipmentView:
    return await get_shipment(db, order_id)
