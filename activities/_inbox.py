"""Exactly-once effects: the inbox of processed operations, and tombstones.

Every operation has a key, ``"<order id>:<operation>"``. Its outcome (result or business
error) is inserted into ``inbox`` in the same transaction as its effect, so a repeat of the
same command reads the first outcome back and changes nothing. Two concurrent deliveries race
on the inbox primary key: the loser's transaction fails on the duplicate key, is rolled back
whole (its effect with it) and, run again, reads the winner's outcome.

A forward operation's first attempt does not look its key up first: almost every command is
new, and a repeat is caught all the same when its outcome is inserted — the insert fails on
the key (or the effect's own insert does), the transaction rolls back with the effect in it,
and the next attempt reads the recorded outcome first. A refusal the effect raises is not
trusted on that first attempt either: the operation may have run before with another
outcome, or been compensated (a tombstone), so the next attempt looks first. That saves a
round trip on every new command, at the price of a rolled-back effect on a repeat.

A compensation first looks up its forward operation's row. If there is none, the forward
operation never ran: the compensation inserts a *tombstone* in its place, and the forward
command, should it arrive late, finds the tombstone and raises :class:`AlreadyCompensated`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from activities.db import Database
from activities.errors import AlreadyCompensated, DomainError, from_wire
from activities.tables import inbox
from contracts.commands import Compensation
from prepared_sql import Prepared, Statement, run_together

R = TypeVar("R", bound=BaseModel)
T = TypeVar("T")
Emit = Callable[[AsyncConnection, str, dict[str, Any]], Awaitable[None]]
"""``emit(conn, operation, outcome)``: called inside the operation's transaction, the first
time it runs, once its outcome is recorded (``{"result": ...}`` or ``{"error": ...}``); the
choreography writes the events the outcome causes to its outbox here, so an event exists
exactly when its cause committed. Its writes are the transaction's last: they may carry the
``COMMIT`` (see prepared_sql)."""
_RACE_RETRIES = 5


def now() -> datetime:
    """The timestamp the activities write (UTC, naive: both dialects store it alike)."""
    return datetime.now(UTC).replace(tzinfo=None)


def operation_key(order_id: str, operation: str) -> str:
    return f"{order_id}:{operation}"


# Ids of requests that are not an order's (a restock, a top-up), derived from an Idempotency-Key.
_REQUEST_NAMESPACE = uuid.UUID("0d3f6b8e-57a1-4c29-8f0e-6a4b2d9c1e73")


def request_id_for(kind: str, idempotency_key: str | None) -> str:
    """The id an operation that belongs to no order (``kind``: ``restock``, ``top-up``) is
    recorded under, once: derived from the client's Idempotency-Key, so a retried request
    names the same operation and takes effect once; else a fresh one."""
    if idempotency_key:
        return f"{kind}-{uuid.uuid5(_REQUEST_NAMESPACE, idempotency_key)}"
    return f"{kind}-{uuid.uuid4()}"


class _Raced(Exception):
    """Another transaction recorded the same operation first; run again to read its outcome."""


class _LookFirst(Exception):
    """A first attempt that did not read the inbox was refused: run again, reading it first."""


# Every command runs both (see prepared_sql).
_SELECT_OUTCOME = Prepared(
    sa.select(inbox.c.outcome).where(inbox.c.message_key == sa.bindparam("key"))
)
_INSERT_OUTCOME = Prepared(inbox.insert())


async def _recorded(conn: AsyncConnection, key: str) -> dict[str, Any] | None:
    row = await _SELECT_OUTCOME.scalar(conn, {"key": key})
    return None if row is None else dict(json.loads(row))


class Later:
    """Writes an operation's effect makes but never reads back. They go to the server with
    the operation's outcome (and its ``COMMIT``) in one packet: a duplicate key among them
    still fails the transaction before anything commits."""

    def __init__(self) -> None:
        self.writes: list[Statement] = []

    def add(self, statement: Statement) -> None:
        self.writes.append(statement)


async def _record(
    conn: AsyncConnection,
    order_id: str,
    operation: str,
    outcome: dict[str, Any],
    *,
    last: bool = False,
    later: Later | None = None,
) -> None:
    """Insert the outcome, after the effect's ``later`` writes and in the same packet;
    ``last``: nothing follows in the transaction, so the packet carries the ``COMMIT`` too
    (see prepared_sql)."""
    row = {
        "message_key": operation_key(order_id, operation),
        "order_id": order_id,
        "operation": operation,
        "outcome": json.dumps(outcome, default=str),
        "created_at": now(),
    }
    try:
        await run_together(
            conn, [*(later.writes if later else ()), (_INSERT_OUTCOME, row)], commit=last
        )
    except IntegrityError as exc:
        raise _Raced from exc


def _encode(outcome: BaseModel | DomainError) -> dict[str, Any]:
    if isinstance(outcome, DomainError):
        return {"error": outcome.to_wire()}
    return {"result": outcome.model_dump(mode="json")}


def _decode(outcome: dict[str, Any], result_type: type[R], operation: str) -> R:
    if "result" in outcome:
        return result_type.model_validate(outcome["result"])
    if "tombstone" in outcome:
        raise AlreadyCompensated(
            f"{operation} was compensated by {outcome['tombstone']} before it ran; nothing done",
            compensated_by=outcome["tombstone"],
        )
    raise from_wire(outcome["error"])


async def _until_settled(db: Database, work: Callable[[AsyncConnection], Awaitable[Any]]) -> Any:
    """Run ``work`` until no concurrent delivery of the same operation gets in its way.

    A concurrent duplicate shows up as a duplicate key: on the inbox, or on a row the
    operation inserts (the payment of an order, its shipment...), whichever the two
    transactions reach first. Either way the loser is rolled back whole and runs again, and
    then reads the winner's outcome from the inbox. A duplicate key that persists is a bug,
    not a race, and is raised.
    """
    for attempt in range(1, _RACE_RETRIES + 1):
        try:
            return await db.transaction(work)
        except (_Raced, _LookFirst):
            continue
        except IntegrityError:
            if attempt == _RACE_RETRIES:
                raise
    raise RuntimeError("inbox race did not settle")  # pragma: no cover - needs 5 lost races


async def forbid(conn: AsyncConnection, order_id: str, operation: str, by: str) -> bool:
    """Leave a tombstone in ``operation``'s slot unless it already ran (or was forbidden), so
    it never will; True when this call left it. A concurrent run of ``operation`` shows up as
    a race that :func:`settled` resolves."""
    if await _recorded(conn, operation_key(order_id, operation)) is not None:
        return False
    await _record(conn, order_id, operation, {"tombstone": by})
    return True


async def settled(db: Database, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    """Run ``work`` in a transaction, again after losing an inbox race (see ``_until_settled``)."""
    result: T = await _until_settled(db, work)
    return result


async def run_once(
    db: Database,
    order_id: str,
    operation: str,
    result_type: type[R],
    effect: Callable[[AsyncConnection, Later], Awaitable[R | DomainError]],
    emit: Emit | None = None,
) -> R:
    """Run a forward operation at most once per (order id, operation).

    ``effect(conn, later)`` may hold back the writes it never reads from (:class:`Later`);
    they go with the outcome. It returns the result, or a :class:`DomainError` describing a
    business refusal whose writes (e.g. a FAILED payment row) are committed with it. It may
    raise a ``DomainError`` instead when nothing should be written; that refusal is not
    recorded, so a later repeat is judged afresh (used for unknown ids).
    """
    key = operation_key(order_id, operation)
    repeated = False
    look_first = False  # see the module docstring: not on the first attempt

    async def work(conn: AsyncConnection) -> dict[str, Any]:
        nonlocal repeated, look_first
        if look_first:
            seen = await _recorded(conn, key)
            repeated = seen is not None
            if seen is not None:
                return seen
        looked, look_first = look_first, True
        later = Later()
        try:
            done = await effect(conn, later)
        except DomainError as exc:
            if looked:
                raise
            raise _LookFirst from exc
        outcome = _encode(done)
        await _record(conn, order_id, operation, outcome, last=emit is None, later=later)
        if emit is not None:
            await emit(conn, operation, outcome)
        return outcome

    outcome: dict[str, Any] = await _until_settled(db, work)
    if repeated:
        db.inbox_repeats[operation] += 1
    return _decode(outcome, result_type, operation)


async def run_compensation(
    db: Database,
    order_id: str,
    operation: str,
    forward: str,
    effect: Callable[[AsyncConnection, bool], Awaitable[Compensation]],
    emit: Emit | None = None,
) -> Compensation:
    """Run compensation ``operation`` of ``forward`` at most once per order.

    ``effect(conn, forward_took_effect)`` undoes what the forward operation did. When the
    forward operation never ran, a tombstone is left in its place so it never will.
    """
    key = operation_key(order_id, operation)
    forward_key = operation_key(order_id, forward)
    repeated = False

    async def work(conn: AsyncConnection) -> dict[str, Any]:
        nonlocal repeated
        seen = await _recorded(conn, key)
        repeated = seen is not None
        if seen is not None:
            return seen
        forward_outcome = await _recorded(conn, forward_key)
        if forward_outcome is None:
            await _record(conn, order_id, forward, {"tombstone": operation})
        took_effect = forward_outcome is not None and "result" in forward_outcome
        outcome = _encode(await effect(conn, took_effect))
        await _record(conn, order_id, operation, outcome, last=emit is None)
        if emit is not None:
            await emit(conn, operation, outcome)
        return outcome

    outcome: dict[str, Any] = await _until_settled(db, work)
    if repeated:
        db.inbox_repeats[operation] += 1
    return Compensation.model_validate(outcome["result"])
