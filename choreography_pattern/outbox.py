"""Writing events: into the outbox, inside the transaction of the change that caused them.

:func:`outbox_rows` is the insert of outbox rows into the transaction of their cause, so an
event exists exactly when its cause committed (a rolled-back change leaves no event); the relay
(:mod:`choreography_pattern.relay`) publishes them afterwards. :func:`processed_mark` (and
:func:`mark_processed`) records that a service handled an event (its inbox of event ids),
idempotently.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from activities._inbox import now
from activities.tables import outbox, processed_events
from choreography_pattern.events import Event
from prepared_sql import Prepared, PreparedIn, Statement, run_together

TOPIC = "events"


def insert_ignoring_duplicates(table: sa.Table) -> sa.Insert:
    """INSERT that silently skips a row whose key exists (MySQL/MariaDB and SQLite)."""
    return (
        table.insert()
        .prefix_with("IGNORE", dialect="mysql")
        .prefix_with("OR IGNORE", dialect="sqlite")
    )


# Every event runs these (see prepared_sql).
_INSERT_OUTBOX = Prepared(outbox.insert())
_MARK_PROCESSED = Prepared(insert_ignoring_duplicates(processed_events))
_PROCESSED = Prepared(
    sa.select(processed_events.c.event_id).where(
        processed_events.c.service == sa.bindparam("service"),
        processed_events.c.event_id == sa.bindparam("event_id"),
    )
)


def outbox_rows(events: Sequence[Event]) -> Statement:
    """The insert of ``events`` into the outbox, to run in the transaction that caused them."""
    stamp = now()
    return (
        _INSERT_OUTBOX,
        [
            {
                "event_id": e.event_id,
                "order_id": e.order_id,
                "sequence": e.sequence,
                "topic": TOPIC,
                "event_type": e.type,
                "payload": json.dumps(e.payload, default=str, separators=(",", ":")),
                "created_at": stamp,
                "published_at": None,
            }
            for e in events
        ],
    )


def processed_mark(service: str, event: Event) -> Statement:
    """The record that ``service`` handled ``event`` (a repeat of the record changes nothing)."""
    return (
        _MARK_PROCESSED,
        {
            "service": service,
            "event_id": event.event_id,
            "order_id": event.order_id,
            "event_type": event.type,
            "processed_at": now(),
        },
    )


async def mark_processed(conn: AsyncConnection, service: str, event: Event) -> None:
    """Record that ``service`` handled ``event`` (see :func:`processed_mark`).

    It is the last statement of the handler's transaction wherever it is called, so it carries
    the transaction's ``COMMIT`` (see :mod:`prepared_sql`): nothing may follow it.
    """
    await run_together(conn, [processed_mark(service, event)], commit=True)


def processed_check(service: str, event_id: str) -> Statement:
    """The read of ``service``'s record of ``event_id`` (a row when it was processed)."""
    return _PROCESSED, {"service": service, "event_id": event_id}


_PROCESSED_AMONG = PreparedIn(
    "event_id",
    lambda ids: sa.select(processed_events.c.event_id).where(
        processed_events.c.service == sa.bindparam("service"),
        processed_events.c.event_id.in_(ids),
    ),
)


async def processed_among(
    conn: AsyncConnection, service: str, event_ids: Sequence[str]
) -> set[str]:
    """Which of ``event_ids`` ``service`` processed already: one read for a batch."""
    if not event_ids:
        return set()
    params = {**_PROCESSED_AMONG.params(list(event_ids)), "service": service}
    rows = await _PROCESSED_AMONG.of(len(event_ids)).rows(conn, params)
    return {event_id for (event_id,) in rows}


async def was_processed(conn: AsyncConnection, service: str, event_id: str) -> bool:
    return await _PROCESSED.scalar(conn, {"service": service, "event_id": event_id}) is not None
