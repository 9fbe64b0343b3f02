"""Path parameters and headers shared by the services, validated before any query is built."""

from __future__ import annotations

from typing import Annotated

from fastapi import Header, Path

from contracts.commands import INT32_MAX

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
