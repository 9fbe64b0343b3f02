"""Path parameters and headers shared by the services, validated before any query is built,
and what a route that takes an ``Idempotency-Key`` to bring stock or money in declares."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Header, Path

from activities.errors import DomainError, IdempotencyKeyReused, InvalidCommand
from contracts.commands import INT32_MAX
from services._kit.errors import error_responses

OrderIdPath = Annotated[
    str,
    Path(
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        max_length=64,
        description="The order's id (up to 64 of A-Z a-z 0-9 _ -).",
        examples=["0b6f9c3e-2a54-4d0e-9d1f-7f5f8c1d2e3a"],
    ),
]
BookIdPath = Annotated[
    int, Path(ge=1, le=INT32_MAX, description="A book's id (a positive 32-bit integer).")
]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description=(
            "Retry-safe request: the same key and body give the same result, taking effect once "
            "(a start: the same order and saga; a restock or top-up: applied once)."
        ),
    ),
]


def ledger_operation(brings: str, not_found: type[DomainError]) -> dict[str, Any]:
    """What a route that brings ``brings`` in (a restock: stock; a top-up: money) declares: the
    errors it answers with and what its ``Idempotency-Key`` does. Spread into the route's
    decorator: ``@router.post(..., **ledger_operation("stock", BookNotFound))``."""
    return {
        "responses": error_responses(not_found, IdempotencyKeyReused, InvalidCommand),
        "description": (
            f"The operation that brings {brings} in: recorded in the ledger, so `cloudmart check` "
            "accepts it. With an `Idempotency-Key`, a retry with the same body takes effect once "
            "and answers as the first did; the same key with another body is a 422."
        ),
    }
