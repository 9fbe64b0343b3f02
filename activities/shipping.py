"""Shipping operations: a shipment consumes the order's reserved stock when it is arranged."""

from __future__ import annotations

import hashlib
from collections.abc import Collection

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from activities._inbox import Emit, Later, now, run_compensation, run_once
from activities.db import Database
from activities.errors import DomainError, NotFound, ShippingFailed
from activities.inventory import move_reservation, reservations
from activities.orders import order_status, require_found
from activities.tables import shipments
from contracts.commands import ArrangeShipping, Compensation, OrderRef, ShipmentView
from prepared_sql import Prepared, run_together

DEFAULT_SERVED_COUNTRIES: tuple[str, ...] = ("JP",)


def tracking_number(order_id: str) -> str:
    """Deterministic per order, so a repeated arrangement names the same parcel."""
    return "CM" + hashlib.sha256(order_id.encode()).hexdigest()[:16].upper()


# The forward path runs them for every order (see prepared_sql).
_INSERT_SHIPMENT = Prepared(shipments.insert())


async def arrange_shipping(
    db: Database,
    cmd: ArrangeShipping,
    *,
    served_countries: Collection[str] = DEFAULT_SERVED_COUNTRIES,
    emit: Emit | None = None,
) -> ShipmentView:
    """Arrange delivery and consume the reserved units; ShippingFailed outside served countries."""

    async def effect(conn: AsyncConnection, later: Later) -> ShipmentView | DomainError:
        # The order's check and the reservations to ship, in one round trip.
        found, reserved = await run_together(
            conn, [order_status(cmd.order_id), reservations(cmd.order_id, ship=True)]
        )
        require_found(found, cmd.order_id)
        country = cmd.address.country
        served = country in served_countries
        reason = None if served else f"we do not ship to {country}"
        stamp = now()
        view = ShipmentView(
            order_id=cmd.order_id,
            status="ARRANGED" if served else "FAILED",
            country=country,
            tracking_number=tracking_number(cmd.order_id) if served else None,
            reason=reason,
        )
        later.add(
            (
                _INSERT_SHIPMENT,
                {
                    **view.model_dump(),
                    "address": cmd.address.model_dump_json(),
                    "created_at": stamp,
                    "updated_at": stamp,
                },
            )
        )
        if not served:
            return ShippingFailed(reason or "", order_id=cmd.order_id, country=country)
        _, moves = move_reservation(cmd.order_id, reserved.rows, ship=True)
        for write in moves:
            later.add(write)
        return view

    return await run_once(db, cmd.order_id, "arrange_shipping", ShipmentView, effect, emit)


async def cancel_shipping(db: Database, cmd: OrderRef, *, emit: Emit | None = None) -> Compensation:
    """Compensate arrange_shipping: the shipment is CANCELLED and its units go back to reserved."""

    async def effect(conn: AsyncConnection, took_effect: bool) -> Compensation:
        if took_effect:
            moved = await conn.execute(
                shipments.update()
                .where(shipments.c.order_id == cmd.order_id, shipments.c.status == "ARRANGED")
                .values(status="CANCELLED", updated_at=now())
            )
            if moved.rowcount == 1:
                (found,) = await run_together(conn, [reservations(cmd.order_id, ship=False)])
                items, writes = move_reservation(cmd.order_id, found.rows, ship=False)
                await run_together(conn, writes)
                return Compensation(
                    order_id=cmd.order_id, operation="cancel_shipping", undone=True, items=items
                )
        return Compensation(order_id=cmd.order_id, operation="cancel_shipping", undone=False)

    return await run_compensation(
        db, cmd.order_id, "cancel_shipping", "arrange_shipping", effect, emit
    )


async def get_shipment(db: Database, order_id: str) -> ShipmentView:
    """The order's shipment; NotFound when none was attempted."""
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(sa.select(shipments).where(shipments.c.order_id == order_id))
        ).one_or_none()
    if row is None:
        raise NotFound(f"no shipment for order {order_id}", order_id=order_id)
    return ShipmentView(
        order_id=row.order_id,
        status=row.status,
        country=row.country,
        tracking_number=row.tracking_number,
        reason=row.reason,
    )
