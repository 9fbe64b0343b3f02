"""Stock operations: all-or-nothing reservations through conditional updates.

Rows are touched in ascending ``book_id`` order, so two orders listing the same books in
opposite orders lock them in the same order and cannot deadlock each other. A unit is always
in exactly one of ``available``, ``reserved`` or shipped (a CONSUMED reservation).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from activities._inbox import Emit, Later, now, run_compensation, run_once
from activities._ledger import stock_moved
from activities.db import Database
from activities.errors import (
    BookNotFound,
    DomainError,
    IdempotencyKeyReused,
    InvalidCommand,
    ReservationShipped,
    StockUnavailable,
)
from activities.orders import order_status, require_found
from activities.tables import books, inventory, stock_reservations
from contracts.commands import (
    INT32_MAX,
    Compensation,
    OrderItem,
    OrderRef,
    ReserveStock,
    Restock,
    Restocked,
    StockReservation,
    StockView,
)
from prepared_sql import Prepared, Statement, run_together

# The forward path runs them for every order (see prepared_sql).
_TAKE = Prepared(
    inventory.update()
    .where(
        inventory.c.book_id == sa.bindparam("book"), inventory.c.available >= sa.bindparam("qty")
    )
    .values(
        available=inventory.c.available - sa.bindparam("qty"),
        reserved=inventory.c.reserved + sa.bindparam("qty"),
    )
)
_INSERT_RESERVATIONS = Prepared(stock_reservations.insert())
_RESERVATIONS_IN = Prepared(
    sa.select(stock_reservations.c.book_id, stock_reservations.c.quantity)
    .where(
        stock_reservations.c.order_id == sa.bindparam("order_id"),
        stock_reservations.c.status == sa.bindparam("source"),
    )
    .order_by(stock_reservations.c.book_id)
)
_RELEASE = Prepared(
    inventory.update()
    .where(inventory.c.book_id == sa.bindparam("book"))
    .values(
        available=inventory.c.available + sa.bindparam("qty"),
        reserved=inventory.c.reserved - sa.bindparam("qty"),
    )
)
_MOVE_RESERVED = Prepared(
    inventory.update()
    .where(inventory.c.book_id == sa.bindparam("book"))
    .values(reserved=inventory.c.reserved + sa.bindparam("delta"))
)
_SET_RESERVATION = Prepared(
    stock_reservations.update()
    .where(
        stock_reservations.c.order_id == sa.bindparam("b_order"),
        stock_reservations.c.book_id == sa.bindparam("book"),
    )
    .values(status=sa.bindparam("target"), updated_at=sa.bindparam("stamp"))
)


async def reserve_stock(
    db: Database, cmd: ReserveStock, *, emit: Emit | None = None
) -> StockReservation:
    """Move every item's quantity from available to reserved, or none of them.

    Fails with StockUnavailable (recorded, so a repeat fails alike) when any book is short.
    """
    items = sorted(cmd.items, key=lambda i: i.book_id)

    async def effect(conn: AsyncConnection, later: Later) -> StockReservation | DomainError:
        # The order's check and every book's take, in one round trip.
        found, *takes = await run_together(
            conn,
            [
                order_status(cmd.order_id),
                *[(_TAKE, {"book": i.book_id, "qty": i.quantity}) for i in items],
            ],
        )
        require_found(found, cmd.order_id)
        taken = [take.matched == 1 for take in takes]
        if not all(taken):
            await _put_back(conn, [item for item, ok in zip(items, taken, strict=True) if ok])
            return await _shortage(conn, cmd.order_id, items[taken.index(False)])
        stamp = now()
        later.add(
            (
                _INSERT_RESERVATIONS,
                [
                    {
                        "order_id": cmd.order_id,
                        "book_id": i.book_id,
                        "quantity": i.quantity,
                        "status": "RESERVED",
                        "updated_at": stamp,
                    }
                    for i in items
                ],
            )
        )
        later.add(
            stock_moved(
                [(i.book_id, i.quantity) for i in items],
                source="available",
                target="reserved",
                order_id=cmd.order_id,
                operation="reserve_stock",
            )
        )
        return StockReservation(order_id=cmd.order_id, items=items)

    return await run_once(db, cmd.order_id, "reserve_stock", StockReservation, effect, emit)


async def _put_back(conn: AsyncConnection, taken: list[OrderItem]) -> None:
    for item in taken:
        await conn.execute(
            inventory.update()
            .where(inventory.c.book_id == item.book_id)
            .values(
                available=inventory.c.available + item.quantity,
                reserved=inventory.c.reserved - item.quantity,
            )
        )


async def _shortage(conn: AsyncConnection, order_id: str, item: OrderItem) -> DomainError:
    available = await conn.scalar(
        sa.select(inventory.c.available).where(inventory.c.book_id == item.book_id)
    )
    if available is None:
        raise BookNotFound(f"book {item.book_id} is not stocked", book_id=item.book_id)
    return StockUnavailable(
        f"book {item.book_id}: {item.quantity} wanted, {available} available",
        order_id=order_id,
        book_id=item.book_id,
        wanted=item.quantity,
        available=available,
    )


async def release_stock(db: Database, cmd: OrderRef, *, emit: Emit | None = None) -> Compensation:
    """Compensate reserve_stock: reserved units go back to available, once.

    Refused (ReservationShipped, retry later) while the units are consumed by a live shipment:
    the shipment must be cancelled first, which the reverse order of compensation ensures.
    """

    async def effect(conn: AsyncConnection, took_effect: bool) -> Compensation:
        # Locking read: a concurrent duplicate release waits here for this one to commit, then
        # finds the reservations RELEASED and moves nothing (its inbox insert then loses the
        # race). A plain read would let it move the same units back twice and fail on
        # ck_inventory_reserved instead.
        rows = (
            await conn.execute(
                sa.select(
                    stock_reservations.c.book_id,
                    stock_reservations.c.quantity,
                    stock_reservations.c.status,
                )
                .where(stock_reservations.c.order_id == cmd.order_id)
                .order_by(stock_reservations.c.book_id)
                .with_for_update()
            )
        ).all()
        if any(r.status == "CONSUMED" for r in rows):
            raise ReservationShipped(
                f"order {cmd.order_id}: stock is shipped; cancel the shipment first",
                order_id=cmd.order_id,
            )
        released = [
            OrderItem(book_id=r.book_id, quantity=r.quantity)
            for r in rows
            if r.status == "RESERVED"
        ]
        stamp = now()
        # Every book's move back, its reservation's new status and the ledger's entries, in
        # one round trip.
        writes: list[Statement] = []
        for item in released:
            writes.append((_RELEASE, {"book": item.book_id, "qty": item.quantity}))
            writes.append(
                (
                    _SET_RESERVATION,
                    {
                        "b_order": cmd.order_id,
                        "book": item.book_id,
                        "target": "RELEASED",
                        "stamp": stamp,
                    },
                )
            )
        if released:
            writes.append(
                stock_moved(
                    [(i.book_id, i.quantity) for i in released],
                    source="reserved",
                    target="available",
                    order_id=cmd.order_id,
                    operation="release_stock",
                )
            )
            await run_together(conn, writes)
        return Compensation(
            order_id=cmd.order_id, operation="release_stock", undone=bool(released), items=released
        )

    return await run_compensation(db, cmd.order_id, "release_stock", "reserve_stock", effect, emit)


def reservations(order_id: str, *, ship: bool) -> Statement:
    """The read of the reservations :func:`move_reservation` moves (RESERVED ones to ship,
    CONSUMED ones to put back in reserve)."""
    return _RESERVATIONS_IN, {"order_id": order_id, "source": "RESERVED" if ship else "CONSUMED"}


def move_reservation(
    order_id: str, rows: Sequence[tuple[Any, ...]], *, ship: bool
) -> tuple[list[OrderItem], list[Statement]]:
    """Consume an order's reserved units into a shipment (``ship``) or put them back in reserve:
    the items moved and the writes that move them, given the rows :func:`reservations` read.

    Run inside the shipping operations' transactions, so a unit leaves ``reserved`` exactly
    when a shipment is arranged and comes back exactly when it is cancelled.
    """
    target = "CONSUMED" if ship else "RESERVED"
    sign = -1 if ship else 1
    stamp = now()
    writes: list[Statement] = []
    for book_id, quantity in rows:
        writes.append((_MOVE_RESERVED, {"book": book_id, "delta": sign * quantity}))
        writes.append(
            (
                _SET_RESERVATION,
                {"b_order": order_id, "book": book_id, "target": target, "stamp": stamp},
            )
        )
    moved = [(int(b), int(q)) for b, q in rows]
    if moved:
        writes.append(
            stock_moved(
                moved,
                source="reserved" if ship else "shipped",
                target="shipped" if ship else "reserved",
                order_id=order_id,
                operation="arrange_shipping" if ship else "cancel_shipping",
            )
        )
    return [OrderItem(book_id=b, quantity=q) for b, q in rows], writes


_RESTOCK = Prepared(
    inventory.update()
    .where(
        inventory.c.book_id == sa.bindparam("book"), inventory.c.available <= sa.bindparam("room")
    )
    .values(available=inventory.c.available + sa.bindparam("qty"))
)
_STOCK_OF = Prepared(
    sa.select(inventory.c.available, inventory.c.reserved).where(
        inventory.c.book_id == sa.bindparam("book")
    )
)


async def restock(db: Database, cmd: Restock, *, emit: Emit | None = None) -> Restocked:
    """Add ``quantity`` units to a book's ``available`` stock, once per ``request_id``: the
    operation that brings stock in (the ledger records it; ``cloudmart check`` names stock that
    appears any other way). BookNotFound for a book with no stock row; IdempotencyKeyReused when
    the request id was used for another restock.
    """

    async def effect(conn: AsyncConnection, later: Later) -> Restocked:
        # The addition and the read of the stock it leaves, in one round trip.
        added, stock = await run_together(
            conn,
            [
                (
                    _RESTOCK,
                    {"book": cmd.book_id, "qty": cmd.quantity, "room": INT32_MAX - cmd.quantity},
                ),
                (_STOCK_OF, {"book": cmd.book_id}),
            ],
        )
        if not stock.rows:
            raise BookNotFound(f"book {cmd.book_id} is not stocked", book_id=cmd.book_id)
        available, reserved = stock.rows[0]
        if added.matched != 1:
            raise InvalidCommand(
                f"book {cmd.book_id}: {available} available leaves no room for {cmd.quantity}",
                book_id=cmd.book_id,
            )
        later.add(
            stock_moved(
                [(cmd.book_id, cmd.quantity)],
                source=None,
                target="available",
                order_id=cmd.request_id,
                operation="restock",
            )
        )
        return Restocked(
            request_id=cmd.request_id,
            book_id=cmd.book_id,
            quantity=cmd.quantity,
            available=int(available),
            reserved=int(reserved),
        )

    done = await run_once(db, cmd.request_id, "restock", Restocked, effect, emit)
    if (done.book_id, done.quantity) != (cmd.book_id, cmd.quantity):
        raise IdempotencyKeyReused(
            "this Idempotency-Key was used with a different restock", request_id=cmd.request_id
        )
    return done


async def get_stock(db: Database, book_id: int) -> StockView:
    """A book's stock; BookNotFound when it has none."""
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(
                    books.c.book_id,
                    books.c.title,
                    books.c.price,
                    inventory.c.available,
                    inventory.c.reserved,
                )
                .join(inventory, inventory.c.book_id == books.c.book_id)
                .where(books.c.book_id == book_id)
            )
        ).one_or_none()
    if row is None:
        raise BookNotFound(f"book {book_id} does not exist", book_id=book_id)
    return StockView.model_validate(row._asdict())


@dataclasses.dataclass(frozen=True, slots=True)
class Reservation:
    """What one order holds of one book: ``RESERVED``, ``CONSUMED`` (shipped) or released."""

    book_id: int
    quantity: int
    status: str


async def get_reservations(db: Database, order_id: str) -> list[Reservation]:
    """The order's stock reservations, by book; empty when it holds none."""
    query = (
        sa.select(
            stock_reservations.c.book_id, stock_reservations.c.quantity, stock_reservations.c.status
        )
        .where(stock_reservations.c.order_id == order_id)
        .order_by(stock_reservations.c.book_id)
    )
    async with db.engine.connect() as conn:
        rows = (await conn.execute(query)).all()
    return [Reservation(book_id=b, quantity=q, status=s) for b, q, s in rows]
