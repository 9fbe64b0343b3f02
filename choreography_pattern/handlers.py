"""What each service does with each event: one small function per (service, event type).

A handler maps an event to a business operation (:mod:`activities`, by name through
:func:`activities.registry.invoke`) and the operation's outcome to the next event, written to
the outbox by the operation's ``emit`` — inside the operation's transaction, only the first
time it runs. No business rule lives here; only who reacts to what::

    inventory  OrderCreated → reserve_stock            (StockReserved | StockUnavailable)
               PaymentFailed, ShippingFailed → release_stock          (StockReleased)
    payment    OrderCreated → process_payment        (PaymentCompleted | PaymentFailed)
               StockUnavailable → cancel_payment                   (PaymentCancelled)
               ShippingFailed → refund_payment                      (PaymentRefunded)
    shipping   StockReserved + PaymentCompleted → arrange_shipping
                                                     (ShippingArranged | ShippingFailed)
    order      every event → logged; ShippingArranged → complete_order (OrderCompleted);
               a failure once its compensations are all seen → cancel_order (OrderCancelled)

Exactly once, per service: :func:`handle` skips an event whose id the service already
processed (``processed_events``). The record is written in the same transaction as the
event's effect: by the operation's ``emit``, or by the handler's own state transaction when no
operation follows; otherwise (the operation had already run) right after. A crash before the
record leaves the event unacknowledged; on redelivery the operations' own inbox makes the
repeat harmless. :func:`handle_together` does the same for several events of different
orders in one transaction (one ``COMMIT``), reading whether they were processed once for all.

Order across producers is not relied on; state guards it: a compensation that arrives first
leaves a tombstone so the late forward operation does nothing (e.g. StockUnavailable before
OrderCreated at payment: nothing is ever charged); shipping keeps which prerequisites it has
seen in ``shipping_prerequisites``; the order service decides under a lock on the order row.

The steps the table names are :mod:`choreography_pattern.steps`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from activities.db import Database
from choreography_pattern import events as ev
from choreography_pattern.events import Event
from choreography_pattern.outbox import (
    mark_processed,
    processed_among,
    was_processed,
)
from choreography_pattern.steps import (
    Deps,
    Step,
    operation_step,
    order_saw,
    reason_payload,
    shipping_prerequisite,
)

log = structlog.get_logger("choreography.handlers")

# the table --------------------------------------------------------------------------------

_release = operation_step("inventory", "release_stock", reason_payload)

HANDLERS: dict[str, dict[str, Step]] = {
    "inventory": {
        ev.ORDER_CREATED: operation_step(
            "inventory", "reserve_stock", lambda e: {"items": e.payload["items"]}
        ),
        ev.PAYMENT_FAILED: _release,
        ev.SHIPPING_FAILED: _release,
        ev.SHIPPING_CANCELLED: _release,
    },
    "payment": {
        ev.ORDER_CREATED: operation_step(
            "payment",
            "process_payment",
            lambda e: {
                "customer_id": e.payload["customer_id"],
                "amount": e.payload["total_amount"],
            },
        ),
        ev.STOCK_UNAVAILABLE: operation_step("payment", "cancel_payment", reason_payload),
        ev.SHIPPING_FAILED: operation_step("payment", "refund_payment", reason_payload),
        ev.ORDER_CANCEL_REQUESTED: operation_step("payment", "refund_payment", reason_payload),
    },
    "shipping": {
        ev.STOCK_RESERVED: shipping_prerequisite,
        ev.PAYMENT_COMPLETED: shipping_prerequisite,
        ev.ORDER_CANCEL_REQUESTED: operation_step("shipping", "cancel_shipping", reason_payload),
    },
    "order": {event_type: order_saw for event_type in sorted(ev.EVENT_TYPES)},
}


_CHECK_THEMSELVES: frozenset[Step] = frozenset({order_saw, shipping_prerequisite})


def types_of(service: str) -> frozenset[str]:
    """The event types ``service``'s consumer group handles."""
    return frozenset(HANDLERS[service])


async def handle(deps: Deps, service: str, event: Event) -> bool:
    """Let ``service`` react to ``event``; False when it was a duplicate and was skipped."""
    step = HANDLERS[service].get(event.type)
    if step is None:
        return True
    if step not in _CHECK_THEMSELVES:
        async with deps.db.engine.connect() as conn:
            if await was_processed(conn, service, event.event_id):
                return _skipped(deps, service, event)
    new = await _apply(deps, service, event, step)
    if not new:
        return _skipped(deps, service, event)
    deps.stats_of(service).handled += 1
    return True


async def handle_together(deps: Deps, service: str, events: Sequence[Event]) -> list[bool]:
    """Let ``service`` react to ``events`` (of different orders) in one transaction, with one
    ``COMMIT``: each as :func:`handle` would, its effect, inbox row, outbox rows and processed
    mark in that transaction; for each, False when it was a duplicate and was skipped.

    Whether each was processed before is read once for all of them. Any error rolls every
    one of them back and is raised as :class:`~activities.db.SharedTransactionFailed`: the
    caller then handles each on its own (:func:`handle`), where a failing one fails alone.
    """
    written = 0

    async def work(shared: Database) -> list[bool]:
        nonlocal written
        joined = replace(deps, db=shared, events_written=0)
        ids = [event.event_id for event in events]
        done = await shared.transaction(lambda conn: processed_among(conn, service, ids))
        new = []
        for event in events:
            step = HANDLERS[service].get(event.type)
            if step is None:
                new.append(True)
            elif event.event_id in done:
                new.append(False)
            else:
                new.append(await _apply(joined, service, event, step))
        written = joined.events_written
        return new

    new = await deps.db.together(work)
    deps.events_written += written
    for event, fresh in zip(events, new, strict=True):
        if fresh:
            deps.stats_of(service).handled += 1
        else:
            _skipped(deps, service, event)
    return new


def _skipped(deps: Deps, service: str, event: Event) -> bool:
    deps.stats_of(service).duplicates += 1
    log.info(
        "event.duplicate_skipped", service=service, event_type=event.type, order_id=event.order_id
    )
    return False


async def _apply(deps: Deps, service: str, event: Event, step: Step) -> bool:
    """Run ``step`` and record ``event`` processed; False when the step found it processed.

    Every line logged meanwhile names the event (as the consumer's own lines do), also when
    it is one of several handled together.
    """
    with structlog.contextvars.bound_contextvars(
        order_id=event.order_id, event_type=event.type, event_id=event.event_id
    ):
        marked = await step(deps, event)
        if marked is None:
            return False
        if not marked:

            async def record(conn: AsyncConnection) -> None:
                await mark_processed(conn, service, event)

            await deps.db.transaction(record)
    return True


def handler_for(deps: Deps, service: str) -> Callable[[Event], Awaitable[None]]:
    """The bus handler of ``service``'s consumer group."""

    async def on_event(event: Event) -> None:
        await handle(deps, service, event)

    return on_event
