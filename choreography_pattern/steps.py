"""The steps a service runs for an event (the table of who runs which is
:data:`choreography_pattern.handlers.HANDLERS`): a business operation with the event's payload
(:func:`operation_step`), shipping's prerequisites (both seen: arrange the shipment) and the
order service's decision (:func:`decide`, under a lock on the order row). No business rule lives
here: the operations are :mod:`activities`', called by name.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from activities._inbox import now
from activities.db import Database
from activities.errors import DomainError, InvalidCommand, NotFound
from activities.registry import invoke
from activities.shipping import DEFAULT_SERVED_COUNTRIES
from activities.tables import order_events, orders, shipping_prerequisites
from choreography_pattern import events as ev
from choreography_pattern.events import Event, event_for
from choreography_pattern.outbox import (
    insert_ignoring_duplicates,
    mark_processed,
    outbox_rows,
    processed_check,
    processed_mark,
    was_processed,
)
from prepared_sql import Prepared, Statement, run_together

log = structlog.get_logger("choreography.handlers")

__all__ = [
    "Deps",
    "HandlerStats",
    "Step",
    "decide",
    "operation_step",
    "order_saw",
    "reason_payload",
    "run_operation",
    "shipping_prerequisite",
]

# What a step's transaction answers when it finds its event already processed.
_DUPLICATE = "duplicate"


@dataclass
class HandlerStats:
    handled: int = 0
    duplicates: int = 0


@dataclass
class Deps:
    """What handlers need: the database, shipping's configuration, counters.

    ``events_written`` counts the events the handlers wrote to the outbox (in transactions
    that may still roll back); the runtime wakes the relay only when it grew.
    ``orders_written`` holds (service, order id) of those events until the runtime has woken
    the order's readers.
    """

    db: Database
    served_countries: Collection[str] = DEFAULT_SERVED_COUNTRIES
    stats: dict[str, HandlerStats] = field(default_factory=dict)
    events_written: int = 0
    orders_written: set[tuple[str, str]] = field(default_factory=set)

    def stats_of(self, service: str) -> HandlerStats:
        return self.stats.setdefault(service, HandlerStats())


# A step returns True when it already recorded the event as processed, None when it found the
# event processed before (the steps in _CHECK_THEMSELVES look inside their first transaction,
# which saves the separate read every other step is preceded by).
Step = Callable[[Deps, Event], Awaitable[bool | None]]


async def run_operation(
    deps: Deps, service: str, operation: str, event: Event, payload: dict[str, Any]
) -> bool:
    """Run ``service.operation``; its first run writes the next event and the processed mark."""
    marked = False

    async def emit(conn: AsyncConnection, op: str, outcome: dict[str, Any]) -> None:
        nonlocal marked
        writes: list[Statement] = []
        caused = event_for(service, op, event.order_id, outcome, event.context)
        if caused is not None:
            writes.append(outbox_rows([caused]))
            deps.events_written += 1
            deps.orders_written.add((service, event.order_id))
        # The event and the processed mark, with the COMMIT: one round trip.
        await run_together(conn, [*writes, processed_mark(service, event)], commit=True)
        marked = True

    try:
        await invoke(
            deps.db,
            f"{service}.{operation}",
            {"order_id": event.order_id, **payload},
            served_countries=deps.served_countries,
            emit=emit,
        )
    except (InvalidCommand, NotFound):
        raise  # a payload this service cannot act on: redelivered, then dead-lettered
    except DomainError as exc:
        if not exc.non_retryable:
            raise
        # A business refusal (its event was written by emit), or a tombstone: done.
        log.info(
            "event.operation_refused",
            service=service,
            operation=operation,
            order_id=event.order_id,
            error=exc.code,
        )
    return marked


def operation_step(
    service: str, operation: str, payload: Callable[[Event], dict[str, Any]]
) -> Step:
    async def step(deps: Deps, event: Event) -> bool:
        return await run_operation(deps, service, operation, event, payload(event))

    step.__name__ = f"{service}_{operation}"
    return step


def reason_payload(event: Event) -> dict[str, Any]:
    return {"reason": f"{event.type} for order {event.order_id}"}


# shipping ---------------------------------------------------------------------------------


_PREREQUISITES = Prepared(
    sa.select(
        shipping_prerequisites.c.stock_reserved,
        shipping_prerequisites.c.payment_completed,
        shipping_prerequisites.c.shipping_address,
    ).where(shipping_prerequisites.c.order_id == sa.bindparam("order_id"))
)


def _note_prerequisite(dialect: str, flag: str) -> Prepared:
    """Upsert ``flag`` (and the address, if none yet) into the order's prerequisites row."""
    values: dict[str, Any] = {
        "order_id": sa.bindparam("order_id"),
        "stock_reserved": sa.bindparam("stock_reserved"),
        "payment_completed": sa.bindparam("payment_completed"),
        "shipping_address": sa.bindparam("address"),
        "updated_at": sa.bindparam("stamp"),
    }
    update = {
        flag: sa.true(),
        "shipping_address": sa.func.coalesce(
            shipping_prerequisites.c.shipping_address, sa.bindparam("address")
        ),
        "updated_at": sa.bindparam("stamp"),
    }
    if dialect == "sqlite":
        return Prepared(
            sqlite.insert(shipping_prerequisites)
            .values(values)
            .on_conflict_do_update(index_elements=["order_id"], set_=update)
        )
    return Prepared(
        mysql.insert(shipping_prerequisites).values(values).on_duplicate_key_update(update)
    )


_NOTE_PREREQUISITE = {
    (dialect, flag): _note_prerequisite(dialect, flag)
    for dialect in ("sqlite", "mysql")
    for flag in ("stock_reserved", "payment_completed")
}


async def shipping_prerequisite(deps: Deps, event: Event) -> bool | None:
    """Note a prerequisite; when both are seen, arrange the shipment."""
    flag = "stock_reserved" if event.type == ev.STOCK_RESERVED else "payment_completed"
    address = event.payload.get("shipping_address")
    address_text = json.dumps(address) if address is not None else None

    async def work(conn: AsyncConnection) -> str | None:
        # One round trip: whether the event was processed, the upsert and the row after it.
        # The upsert locks the row until commit, so of two concurrent prerequisites the
        # second waits and then sees the first: one of them always finds both. On a
        # duplicate the upsert sets a flag that is set already, and the transaction ends.
        dialect = "sqlite" if conn.dialect.name == "sqlite" else "mysql"
        processed, _, prerequisites = await run_together(
            conn,
            [
                processed_check("shipping", event.event_id),
                (
                    _NOTE_PREREQUISITE[(dialect, flag)],
                    {
                        "order_id": event.order_id,
                        "stock_reserved": flag == "stock_reserved",
                        "payment_completed": flag == "payment_completed",
                        "address": address_text,
                        "stamp": now(),
                    },
                ),
                (_PREREQUISITES, {"order_id": event.order_id}),
            ],
        )
        if processed.rows:
            return _DUPLICATE
        stock_reserved, payment_completed, address_seen = prerequisites.rows[0]
        if stock_reserved and payment_completed and address_seen:
            return str(address_seen)
        await mark_processed(conn, "shipping", event)
        return None

    ready = await deps.db.transaction(work)
    if ready is None:
        return True
    if ready is _DUPLICATE:
        return None
    return await run_operation(
        deps, "shipping", "arrange_shipping", event, {"address": json.loads(ready)}
    )


# order ------------------------------------------------------------------------------------


def decide(seen: Collection[str]) -> str | None:
    """The order's next operation given the event types seen for it, or None (wait).

    A failure or a cancel request rules out completing: the order is cancelled once every
    compensation they call for has been seen. Only a cancel request can come with
    ``ShippingArranged`` (the shipment is then cancelled first).
    """
    failures = [f for f in ev.COMPENSATIONS_NEEDED if f in seen]
    if failures:
        done = all(ev.COMPENSATIONS_NEEDED[f] <= set(seen) for f in failures)
        return "cancel_order" if done else None
    if ev.SHIPPING_ARRANGED in seen:
        return "complete_order"
    return None


# Every event the order service sees runs these (see prepared_sql).
_LOG_EVENT = Prepared(insert_ignoring_duplicates(order_events))
# The order row is the lock that serialises decisions about one order; the event types seen
# for it come with it (no row at all: no order yet). Locking the order's event rows as well
# costs nothing: in READ COMMITTED a locked row blocks no insert of another event.
_LOCK_ORDER_WITH_SEEN = Prepared(
    sa.select(orders.c.status, order_events.c.event_type)
    .select_from(orders.outerjoin(order_events, order_events.c.order_id == orders.c.order_id))
    .where(orders.c.order_id == sa.bindparam("order_id"))
    .with_for_update()
)


async def order_saw(deps: Deps, event: Event) -> bool | None:
    """Log the event for the order; complete or cancel it when the events seen say so."""

    async def work(conn: AsyncConnection) -> str | None:
        # One round trip: the event logged, then the order locked with the types seen.
        logged, locked = await run_together(
            conn,
            [
                (
                    _LOG_EVENT,
                    {
                        "event_id": event.event_id,
                        "order_id": event.order_id,
                        "event_type": event.type,
                        "producer": event.producer,
                        "sequence": event.sequence,
                        "occurred_at": event.occurred_at,
                        "received_at": now(),
                    },
                ),
                (_LOCK_ORDER_WITH_SEEN, {"order_id": event.order_id}),
            ],
        )
        # An event is logged no later than it is marked processed: one that was not logged
        # yet is new. One logged before may still await its decision (a crash in between).
        if not logged.matched and await was_processed(conn, "order", event.event_id):
            return _DUPLICATE
        rows = locked.rows
        decision = None
        if rows and rows[0][0] == "PENDING":
            decision = decide([event_type for _, event_type in rows if event_type is not None])
        # No order row yet (an event overtook OrderCreated): OrderCreated decides later.
        if decision is None:
            await mark_processed(conn, "order", event)
        return decision

    decision = await deps.db.transaction(work)
    if decision is None:
        return True
    if decision is _DUPLICATE:
        return None
    return await run_operation(deps, "order", decision, event, reason_payload(event))
