"""The ledger entries an operation writes beside the movement they record.

Each helper returns one :data:`prepared_sql.Statement` (a multi-row ``INSERT`` into
``ledger_entries``) for the operation to send in a packet it sends anyway — with its
outcome (:class:`activities._inbox.Later`) or with the update that moves the money or the
units — so recording a movement costs no round trip of its own and commits, or rolls back,
with it.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal

from activities._inbox import now
from activities.tables import ledger_entries
from prepared_sql import Prepared, Statement

_INSERT_ENTRIES = Prepared(ledger_entries.insert())


def _entries(
    order_id: str, operation: str, moves: Iterable[tuple[str, int, str, Decimal | int]]
) -> Statement:
    stamp = now()
    return (
        _INSERT_ENTRIES,
        [
            {
                "account": account,
                "account_id": account_id,
                "bucket": bucket,
                "delta": delta,
                "order_id": order_id,
                "operation": operation,
                "created_at": stamp,
            }
            for account, account_id, bucket, delta in moves
        ],
    )


def balance_moved(customer_id: int, delta: Decimal, *, order_id: str, operation: str) -> Statement:
    """A customer's balance moved by ``delta`` (a debit is negative)."""
    return _entries(order_id, operation, [("customer", customer_id, "balance", delta)])


def stock_moved(
    items: Iterable[tuple[int, int]],
    *,
    source: str | None,
    target: str,
    order_id: str,
    operation: str,
) -> Statement:
    """``(book_id, quantity)`` units moved from bucket ``source`` to ``target`` of each book
    (``source`` None: units that enter the stock, a restock)."""
    moves: list[tuple[str, int, str, Decimal | int]] = []
    for book_id, quantity in items:
        if source is not None:
            moves.append(("book", book_id, source, -quantity))
        moves.append(("book", book_id, target, quantity))
    return _entries(order_id, operation, moves)
