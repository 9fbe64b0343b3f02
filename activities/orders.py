"""Order operations: the order row is the saga's semantic lock (PENDING until the end)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from activities._inbox import Emit, Later, forbid, now, run_compensation, run_once, settled
from activities.db import Database
from activities.errors import BookNotFound, CustomerNotFound, InvalidOrderState, OrderNotFound
from activities.tables import books, customers, order_items, orders
from contracts.commands import (
    Address,
    Compensation,
    CreateOrder,
    OrderItem,
    OrderRef,
    OrderView,
    PlaceOrder,
)
from prepared_sql import Prepared, PreparedIn, Reply, Statement, run_together

# Order ids derived from an Idempotency-Key live in their own UUID namespace.
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1c9a52-3b8e-4c1e-9a57-0c0a5d6e2b11")


# Every order runs one (see prepared_sql): the customer, outer-joined to the
# books asked for, so one round trip tells an unknown customer (no row), unknown books (not
# among the rows) and the prices. One statement per number of books (1..MAX_ITEMS).
_PRICES = PreparedIn(
    "b",
    lambda ids: (
        sa.select(books.c.book_id, books.c.price)
        .select_from(customers.outerjoin(books, books.c.book_id.in_(ids)))
        .where(customers.c.customer_id == sa.bindparam("customer"))
    ),
)

_INSERT_ORDER = Prepared(orders.insert())
_INSERT_ITEMS = Prepared(order_items.insert())
_STATUS = Prepared(sa.select(orders.c.status).where(orders.c.order_id == sa.bindparam("order_id")))
_MOVE_STATUS = Prepared(
    orders.update()
    .where(orders.c.order_id == sa.bindparam("b_order"), orders.c.status == sa.bindparam("old"))
    .values(status=sa.bindparam("new"), updated_at=sa.bindparam("stamp"))
)
_ORDER_WITH_ITEMS = Prepared(  # a row per item; one round trip for the whole order
    sa.select(
        orders.c.customer_id,
        orders.c.status,
        orders.c.total_amount,
        orders.c.shipping_address,
        order_items.c.book_id,
        order_items.c.quantity,
    )
    .select_from(orders.outerjoin(order_items, order_items.c.order_id == orders.c.order_id))
    .where(orders.c.order_id == sa.bindparam("order_id"))
    .order_by(order_items.c.book_id)
)


def order_status(order_id: str) -> Statement:
    """The read of an order's status, for the steps after create_order to send together with
    their first writes (see :func:`require_found`)."""
    return _STATUS, {"order_id": order_id}


def require_found(reply: Reply, order_id: str) -> None:
    """OrderNotFound unless ``reply``, the answer to :func:`order_status`, found the order.
    Raised inside the step's transaction, it rolls back the writes sent with the read."""
    if not reply.rows:
        raise OrderNotFound(f"order {order_id} does not exist", order_id=order_id)


def order_id_for(idempotency_key: str | None) -> str:
    """The id a new order gets: derived from the client's Idempotency-Key, so a retried start
    names the same order and can never create a second one; else a fresh UUID."""
    if idempotency_key:
        return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, idempotency_key))
    return str(uuid.uuid4())


async def create_order(db: Database, cmd: CreateOrder, *, emit: Emit | None = None) -> OrderView:
    """Record a PENDING order with its items and total (Σ quantity × price).

    Raises CustomerNotFound / BookNotFound for unknown ids, AlreadyCompensated when the order
    was cancelled before it was created.
    """

    async def effect(conn: AsyncConnection, later: Later) -> OrderView:
        prices = await _prices(conn, cmd)
        total = _total(cmd, prices)
        stamp = now()
        later.add(
            (
                _INSERT_ORDER,
                {
                    "order_id": cmd.order_id,
                    "customer_id": cmd.customer_id,
                    "status": "PENDING",
                    "total_amount": total,
                    "shipping_address": cmd.shipping_address.model_dump_json(),
                    "created_at": stamp,
                    "updated_at": stamp,
                },
            )
        )
        later.add(
            (
                _INSERT_ITEMS,
                [
                    {
                        "order_id": cmd.order_id,
                        "book_id": i.book_id,
                        "quantity": i.quantity,
                        "unit_price": prices[i.book_id],
                    }
                    for i in cmd.items
                ],
            )
        )
        return OrderView(
            order_id=cmd.order_id,
            customer_id=cmd.customer_id,
            status="PENDING",
            total_amount=total,
            items=list(cmd.items),
            shipping_address=cmd.shipping_address,
        )

    return await run_once(db, cmd.order_id, "create_order", OrderView, effect, emit)


async def _prices(conn: AsyncConnection, order: PlaceOrder) -> dict[int, Decimal]:
    """The price of every book of the order; CustomerNotFound / BookNotFound otherwise."""
    wanted = [item.book_id for item in order.items]
    params = {**_PRICES.params(wanted), "customer": order.customer_id}
    rows = await _PRICES.of(len(wanted)).rows(conn, params)
    if not rows:
        raise CustomerNotFound(
            f"customer {order.customer_id} does not exist", customer_id=order.customer_id
        )
    prices = {book_id: Decimal(price) for book_id, price in rows if book_id is not None}
    missing = sorted(set(wanted) - set(prices))
    if missing:
        raise BookNotFound(f"unknown book ids: {missing}", book_ids=missing)
    return prices


async def check_order(db: Database, order: PlaceOrder) -> Decimal:
    """Refuse an order naming an unknown customer or book before a saga starts; its total."""
    async with db.engine.connect() as conn:
        prices = await _prices(conn, order)
    return _total(order, prices)


def _total(order: PlaceOrder, prices: dict[int, Decimal]) -> Decimal:
    return sum((prices[i.book_id] * i.quantity for i in order.items), Decimal("0"))


async def _set_status(
    conn: AsyncConnection, order_id: str, new: str, allowed_from: str
) -> str | None:
    """Move the order to ``new`` if it is ``allowed_from``; return the status it had.

    The conditional update goes first: it is the common case, and when it matches nothing
    the status read afterwards says why (no order, already ``new``, or another status).
    """
    if await _MOVE_STATUS.run(conn, _move(order_id, new, allowed_from)):
        return allowed_from
    return await _not_moved(conn, order_id, new)


def _move(order_id: str, new: str, allowed_from: str) -> dict[str, Any]:
    return {"b_order": order_id, "old": allowed_from, "new": new, "stamp": now()}


async def _not_moved(conn: AsyncConnection, order_id: str, new: str) -> str | None:
    """Why a move to ``new`` matched nothing: no order (None), or it is ``new`` already;
    InvalidOrderState for any other status."""
    current: str | None = await _STATUS.scalar(conn, {"order_id": order_id})
    if current is None or current == new:
        return current
    raise InvalidOrderState(
        f"order {order_id} is {current}; it cannot become {new}",
        order_id=order_id,
        status=current,
    )


async def cancel_order(db: Database, cmd: OrderRef, *, emit: Emit | None = None) -> Compensation:
    """Compensate create_order: a PENDING order becomes CANCELLED; a COMPLETED one is refused."""

    async def effect(conn: AsyncConnection, took_effect: bool) -> Compensation:
        previous = (
            await _set_status(conn, cmd.order_id, "CANCELLED", "PENDING") if took_effect else None
        )
        return Compensation(
            order_id=cmd.order_id, operation="cancel_order", undone=previous == "PENDING"
        )

    return await run_compensation(db, cmd.order_id, "cancel_order", "create_order", effect, emit)


async def request_cancel(db: Database, cmd: OrderRef, *, emit: Emit | None = None) -> OrderView:
    """Ask a PENDING order's saga to stop and undo what it did (the choreography's cancel).

    From now on the order cannot complete: a tombstone takes ``complete_order``'s place. The
    first request calls ``emit`` (the choreography writes ``OrderCancelRequested``, which the
    services compensate on); the order stays PENDING until they have, then becomes CANCELLED.
    A COMPLETED order is refused (InvalidOrderState); a CANCELLED one, or a repeated request,
    changes nothing.
    """

    async def work(conn: AsyncConnection) -> OrderView:
        # The order row is the lock that serialises decisions about one order.
        status = await conn.scalar(
            sa.select(orders.c.status).where(orders.c.order_id == cmd.order_id).with_for_update()
        )
        if status is None:
            raise OrderNotFound(f"order {cmd.order_id} does not exist", order_id=cmd.order_id)
        if status == "COMPLETED":
            raise InvalidOrderState(
                f"order {cmd.order_id} is COMPLETED; it cannot be cancelled",
                order_id=cmd.order_id,
                status=status,
            )
        view = await _view(conn, cmd.order_id)
        first = status == "PENDING" and await forbid(conn, cmd.order_id, "complete_order", "cancel")
        if first and emit is not None:
            await emit(conn, "request_cancel", {"result": view.model_dump(mode="json")})
        return view

    return await settled(db, work)


async def complete_order(db: Database, cmd: OrderRef, *, emit: Emit | None = None) -> OrderView:
    """Release the semantic lock: PENDING → COMPLETED, once every step has succeeded."""

    async def effect(conn: AsyncConnection, _later: Later) -> OrderView:
        # The move and the read of the order go together; the read sees the move.
        moved, read = await run_together(
            conn,
            [
                (_MOVE_STATUS, _move(cmd.order_id, "COMPLETED", "PENDING")),
                order_read(cmd.order_id),
            ],
        )
        if not moved.matched and await _not_moved(conn, cmd.order_id, "COMPLETED") is None:
            raise OrderNotFound(f"order {cmd.order_id} does not exist", order_id=cmd.order_id)
        return order_from(read, cmd.order_id)

    return await run_once(db, cmd.order_id, "complete_order", OrderView, effect, emit)


def order_read(order_id: str) -> Statement:
    """The read of an order with its items, to send with others (see :func:`order_from`)."""
    return _ORDER_WITH_ITEMS, {"order_id": order_id}


def order_from(reply: Reply, order_id: str) -> OrderView:
    """The order ``reply``, the answer to :func:`order_read`, holds; OrderNotFound if none."""
    return _order_view(order_id, reply.rows)


async def _view(conn: AsyncConnection, order_id: str) -> OrderView:
    return _order_view(order_id, await _ORDER_WITH_ITEMS.rows(conn, {"order_id": order_id}))


def _order_view(order_id: str, rows: Sequence[tuple[Any, ...]]) -> OrderView:
    """The order from the rows of ``_ORDER_WITH_ITEMS``; OrderNotFound when there are none."""
    if not rows:
        raise OrderNotFound(f"order {order_id} does not exist", order_id=order_id)
    customer_id, status, total_amount, shipping_address, _, _ = rows[0]
    return OrderView(
        order_id=order_id,
        customer_id=customer_id,
        status=status,
        total_amount=total_amount,
        items=[OrderItem(book_id=b, quantity=q) for *_, b, q in rows if b is not None],
        shipping_address=Address.model_validate(json.loads(shipping_address)),
    )


async def count_pending(db: Database) -> int:
    """How many orders are PENDING (a choreographed saga in flight, or an orchestrated order
    not yet completed or cancelled); ``ix_orders_status_created`` keeps it an index range."""
    async with db.engine.connect() as conn:
        query = sa.select(sa.func.count()).select_from(orders).where(orders.c.status == "PENDING")
        return int(await conn.scalar(query) or 0)


async def get_order(db: Database, order_id: str) -> OrderView:
    """The order as stored; OrderNotFound for an unknown id."""
    async with db.engine.connect() as conn:
        return await _view(conn, order_id)
