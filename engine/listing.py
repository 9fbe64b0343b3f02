"""Listing and counting sagas: the filter, the keyset position, the cursor and the counts.

Sagas are listed newest first, in the order ``(created_at, saga_id)`` descending. A page ends
at a :class:`SagaPosition`, the key of its last saga; the next page is every saga after that
key in the same order. Keyset paging never repeats or skips a saga, however many share a
``created_at`` and however many are created between pages (a new saga sorts before every
position already handed out).

A position travels as an opaque cursor: :func:`encode_cursor` / :func:`decode_cursor`. Its
spelling is lowercase hex of the time (8 bytes, microseconds since 0001-01-01) followed by the
saga id's UTF-8 bytes, so that every string matching :data:`CURSOR_PATTERN` is a position —
the pattern alone says which cursors are valid.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from datetime import datetime, timedelta

from engine.views import SagaStatus

__all__ = [
    "CURSOR_PATTERN",
    "SagaCounts",
    "SagaFilter",
    "SagaPage",
    "SagaPosition",
    "decode_cursor",
    "encode_cursor",
    "order_id_prefix_bounds",
]

# 8 bytes of time, then the saga id (saga_instances.saga_id is 36 characters, 144 bytes).
CURSOR_PATTERN = r"^(?:[0-9a-f]{2}){8,152}$"
_CURSOR = re.compile(CURSOR_PATTERN)
_EPOCH = datetime.min
_TIME_BYTES = 8


@dataclasses.dataclass(frozen=True, slots=True)
class SagaFilter:
    """Which sagas to list; every field that is set must hold (an empty filter lists all).

    ``statuses``: any of these. ``needs_operator``: the operator flag equals it.
    ``failed_step``: the step whose failure made the saga compensate. ``workflow``: the
    workflow's name. ``created_after`` (inclusive) and ``created_before``
    (exclusive): naive UTC, so consecutive windows cover every saga once. ``order_id_prefix``:
    the order id (the workflow id) starts with it, case-sensitively.
    """

    statuses: tuple[str, ...] = ()
    needs_operator: bool | None = None
    failed_step: str | None = None
    workflow: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    order_id_prefix: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, order=True)
class SagaPosition:
    """The key of a saga in the listing order: a page continues with the sagas below it."""

    created_at: datetime
    saga_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class SagaCounts:
    """How many sagas have each status, and how many are flagged for an operator."""

    by_status: Mapping[str, int]
    needs_operator: int


@dataclasses.dataclass(frozen=True, slots=True)
class SagaPage:
    """A page of the listing (sagas without their steps) and the cursor of the next one,
    ``None`` when this page is the last."""

    sagas: tuple[SagaStatus, ...]
    next_cursor: str | None


def encode_cursor(position: SagaPosition) -> str:
    micros = (position.created_at - _EPOCH) // timedelta(microseconds=1)
    return (micros.to_bytes(_TIME_BYTES, "big") + position.saga_id.encode()).hex()


def decode_cursor(cursor: str) -> SagaPosition:
    """The position ``cursor`` names; ``ValueError`` when it does not match the pattern.

    A time past year 9999 reads as the latest time there is (a position above every saga).
    """
    if _CURSOR.fullmatch(cursor) is None:
        raise ValueError("not a cursor this API issued")
    raw = bytes.fromhex(cursor)
    micros = int.from_bytes(raw[:_TIME_BYTES], "big")
    try:
        created_at = _EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        created_at = datetime.max
    return SagaPosition(created_at, raw[_TIME_BYTES:].decode(errors="replace"))


def order_id_prefix_bounds(prefix: str) -> tuple[str, str]:
    """``[low, high)``: the strings starting with ``prefix`` are exactly those in the range
    (in code-point order, which the SQL store's binary collations follow), so the unique index
    on the order id serves the filter and no ``LIKE`` wildcard needs escaping."""
    if not prefix:
        raise ValueError("an order id prefix is not empty")
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)
