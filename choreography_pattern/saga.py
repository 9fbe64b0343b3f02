"""Starting a choreographed saga, and reading one back.

:func:`start_order` is ``POST /orders`` in the choreography: ``create_order`` whose ``emit``
writes ``OrderCreated`` to the outbox in the same transaction as the order row. From there the
services carry the saga on by themselves. :func:`order_events` is the log of events the order
service saw for an order (``GET /orders/{id}``); :func:`recent_orders` lists the newest orders
(the order service's console).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Protocol

import sqlalchemy as sa
import structlog
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncConnection

from activities.db import Database
from activities.errors import IdempotencyKeyReused, OrderNotFound, SagaBacklogFull
from activities.orders import (
    count_pending,
    create_order,
    get_order,
    order_from,
    order_id_for,
    order_read,
    request_cancel,
)
from activities.tables import order_events as order_events_table
from activities.tables import orders as orders_table
from choreography_pattern.events import CONTEXT_FIELDS, event_for
from choreography_pattern.outbox import outbox_rows
from contracts.commands import CreateOrder, OrderRef, OrderView, PlaceOrder, UtcTimestamp
from prepared_sql import Prepared, Statement, run_together


class SeenEvent(BaseModel):
    event_id: str
    type: str
    producer: str
    sequence: int
    occurred_at: UtcTimestamp
    received_at: UtcTimestamp


def _same_order(view: OrderView, order: PlaceOrder) -> bool:
    def items(values: Any) -> list[tuple[int, int]]:
        return sorted((i.book_id, i.quantity) for i in values)

    return (
        view.customer_id == order.customer_id
        and items(view.items) == items(order.items)
        and view.shipping_address == order.shipping_address
    )


class Intake:
    """The choreography's bound on sagas in flight: while ``max_pending`` orders are PENDING, a
    new order is refused with :class:`~activities.errors.SagaBacklogFull` (503, nothing
    written) and a repeat of an accepted one is still answered. The count is read from the
    database at most once every ``fresh_for`` seconds, plus the orders accepted here since.

    The services work through what is pending at their own pace (the outbox and the stream
    are the queue); this only keeps that queue from growing without end.
    """

    def __init__(self, max_pending: int, *, fresh_for: float = 1.0) -> None:
        self.max_pending = max_pending
        self.fresh_for = fresh_for
        self._pending = 0
        self._read_at: float | None = None

    async def admit(self, db: Database, order_id: str) -> None:
        """Return when ``order_id`` may be written (or exists); raise SagaBacklogFull if not."""
        now = asyncio.get_running_loop().time()
        if self._read_at is None or now - self._read_at >= self.fresh_for:
            self._pending, self._read_at = await count_pending(db), now
        if self._pending < self.max_pending:
            return
        try:
            await get_order(db, order_id)  # a repeat of a keyed start is answered as before
        except OrderNotFound:
            raise SagaBacklogFull(
                f"{self._pending} orders are in flight; try again shortly",
                retry_after=max(1, round(self.fresh_for)),
                pending=self._pending,
            ) from None

    def accepted(self) -> None:
        """A new order was written: one more pending until the next count."""
        self._pending += 1


async def start_order(
    db: Database,
    order: PlaceOrder,
    *,
    idempotency_key: str | None = None,
    intake: Intake | None = None,
) -> tuple[OrderView, bool]:
    """Create the order and its ``OrderCreated`` event; the order and whether it is new.

    Unknown customers and books are refused (404) before anything is written:
    ``create_order`` looks them up inside its transaction and writes nothing, outbox included,
    when one is missing. With an Idempotency-Key, a repeat with the same body returns the same
    order (not new); another body is refused with :class:`IdempotencyKeyReused`. ``intake``,
    when given, refuses a new order while too many are in flight (:class:`Intake`).
    """
    command = CreateOrder(order_id=order_id_for(idempotency_key), **order.model_dump())
    structlog.contextvars.bind_contextvars(order_id=command.order_id)  # the correlation id
    if intake is not None:
        await intake.admit(db, command.order_id)
    created = False

    async def emit(conn: AsyncConnection, operation: str, outcome: dict[str, Any]) -> None:
        nonlocal created
        created = True
        await run_together(conn, _caused(command.order_id, operation, outcome), commit=True)

    view = await create_order(db, command, emit=emit)
    if created and intake is not None:
        intake.accepted()
    if not created and not _same_order(view, order):
        raise IdempotencyKeyReused(
            "this Idempotency-Key was used with a different order", order_id=view.order_id
        )
    return view, created


async def cancel_choreographed_order(db: Database, order_id: str) -> OrderView:
    """A customer's cancel: ``OrderCancelRequested`` goes out with the request, in its
    transaction; the services undo their steps (shipment, then stock, and payment) and the
    order service cancels the order once it has seen all three. The order (PENDING until
    then) is returned; a COMPLETED one is refused."""

    async def emit(conn: AsyncConnection, operation: str, outcome: dict[str, Any]) -> None:
        await run_together(conn, _caused(order_id, operation, outcome), commit=True)

    return await request_cancel(db, OrderRef(order_id=order_id, reason="cancelled"), emit=emit)


def _caused(order_id: str, operation: str, outcome: dict[str, Any]) -> list[Statement]:
    """The outbox row of the event the order service's ``operation`` causes, if any."""
    result = outcome.get("result") or {}
    context = {k: result[k] for k in CONTEXT_FIELDS if k in result}
    event = event_for("order", operation, order_id, outcome, context)
    return [] if event is None else [outbox_rows([event])]


class _Changes(Protocol):
    def watch(self, order_id: str) -> asyncio.Event: ...


async def settled_order(
    db: Database, order_id: str, *, wait: float, changes: _Changes | None
) -> tuple[OrderView, list[SeenEvent]]:
    """The order once it is no longer PENDING, or as it is after ``wait`` seconds, with the
    events seen for it.

    ``changes`` (the process's :class:`~choreography_pattern.runtime.Choreography`) says when
    this process handled another event for the order, so the order is read again exactly then;
    the order service decides COMPLETED/CANCELLED itself, so that is when the answer can change.
    Another process (a second order service) deciding it is seen within a second.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        change = changes.watch(order_id) if changes is not None else None
        order, events = await order_with_events(db, order_id)
        left = deadline - loop.time()
        if order.status != "PENDING" or change is None or left <= 0:
            return order, events
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(left, 1.0)):
                await change.wait()


_EVENTS_OF_ORDER = Prepared(
    sa.select(
        order_events_table.c.event_id,
        order_events_table.c.event_type,
        order_events_table.c.producer,
        order_events_table.c.sequence,
        order_events_table.c.occurred_at,
        order_events_table.c.received_at,
    )
    .where(order_events_table.c.order_id == sa.bindparam("order_id"))
    .order_by(order_events_table.c.id)
)


async def order_with_events(db: Database, order_id: str) -> tuple[OrderView, list[SeenEvent]]:
    """The order and the events the order service saw for it, read in one round trip;
    OrderNotFound for an unknown id."""
    async with db.engine.connect() as conn:
        order, seen = await run_together(
            conn, [order_read(order_id), (_EVENTS_OF_ORDER, {"order_id": order_id})]
        )
    return order_from(order, order_id), _seen(seen.rows)


async def order_events(db: Database, order_id: str) -> list[SeenEvent]:
    """The events the order service saw for ``order_id``, in the order it saw them."""
    async with db.engine.connect() as conn:
        return _seen(await _EVENTS_OF_ORDER.rows(conn, {"order_id": order_id}))


def _seen(rows: Sequence[tuple[Any, ...]]) -> list[SeenEvent]:
    return [
        SeenEvent(
            event_id=event_id,
            type=event_type,
            producer=producer,
            sequence=sequence,
            occurred_at=occurred_at,
            received_at=received_at,
        )
        for event_id, event_type, producer, sequence, occurred_at, received_at in rows
    ]


class OrderSummary(BaseModel):
    """One line of the choreography's order list: the order row without its items."""

    order_id: str
    customer_id: int
    status: str
    total_amount: Decimal
    created_at: UtcTimestamp
    updated_at: UtcTimestamp


async def recent_orders(
    db: Database, *, status: str | None = None, limit: int = 50
) -> list[OrderSummary]:
    """The newest ``limit`` orders (with ``status`` only, when given), newest first."""
    query = sa.select(
        orders_table.c.order_id,
        orders_table.c.customer_id,
        orders_table.c.status,
        orders_table.c.total_amount,
        orders_table.c.created_at,
        orders_table.c.updated_at,
    )
    if status is not None:
        query = query.where(orders_table.c.status == status)
    query = query.order_by(orders_table.c.created_at.desc(), orders_table.c.order_id.desc())
    async with db.engine.connect() as conn:
        rows = (await conn.execute(query.limit(limit))).mappings().all()
    return [OrderSummary.model_validate(dict(row)) for row in rows]
