"""The query parameters of ``GET /saga``: RFC 3339 times, the cursor, the filters' spellings.

Each one says in the OpenAPI document exactly which values it takes, and refuses any other
with a ``422`` naming the parameter and what is wrong with it. Every string the cursor's
pattern admits is a position (:mod:`engine.listing`), so the pattern is the whole check.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Query
from pydantic import PlainValidator, WithJsonSchema

from engine.listing import CURSOR_PATTERN

__all__ = [
    "NAME_PATTERN",
    "ORDER_ID_PREFIX_PATTERN",
    "CreatedAfterQuery",
    "CreatedBeforeQuery",
    "CursorQuery",
    "FailedStepQuery",
    "LimitQuery",
    "NeedsOperatorQuery",
    "OrderIdPrefixQuery",
    "WorkflowQuery",
    "parse_rfc3339",
]

MAX_LIMIT = 500
# A step or workflow name, and an order id prefix, as the filters take them.
NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,100}$"
ORDER_ID_PREFIX_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})"
)
_RFC3339_HINT = "an RFC 3339 timestamp with its offset, e.g. 2026-12-03T10:00:00Z"


def parse_rfc3339(value: object) -> datetime:
    """An RFC 3339 ``date-time`` as naive UTC (what the store holds), to the microsecond.

    A leap second reads as the last microsecond of its minute; a time whose UTC value falls
    outside years 1-9999 reads as the earliest or latest time there is.
    """
    if not isinstance(value, str) or (match := _RFC3339.fullmatch(value)) is None:
        raise ValueError(f"expected {_RFC3339_HINT}")
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    fraction, offset = match.group(7) or "", match.group(8)
    micro = int(fraction[:6].ljust(6, "0"))
    if second == 60:
        second, micro = 59, 999_999
    shift = timedelta(0)
    if offset not in ("Z", "z"):
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        if hours > 23 or minutes > 59:
            raise ValueError(f"the offset {offset} is out of range: expected {_RFC3339_HINT}")
        shift = timedelta(hours=hours, minutes=minutes) * (1 if offset[0] == "+" else -1)
    try:
        local = datetime(year, month, day, hour, minute, second, micro)
    except ValueError as exc:
        raise ValueError(f"{exc}: expected {_RFC3339_HINT}") from None
    try:
        return (local - shift).replace(tzinfo=None)
    except OverflowError:
        return datetime.min if shift > timedelta(0) else datetime.max


_Rfc3339 = Annotated[
    datetime,
    PlainValidator(parse_rfc3339),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]

CreatedAfterQuery = Annotated[
    _Rfc3339 | None,
    Query(
        description=(
            "Only sagas created at or after this time (RFC 3339, with its offset). With "
            "`created_before` it makes a half-open window: consecutive windows list each saga once."
        ),
        examples=["2026-12-03T00:00:00Z"],
    ),
]
CreatedBeforeQuery = Annotated[
    _Rfc3339 | None,
    Query(
        description="Only sagas created before this time (RFC 3339, with its offset).",
        examples=["2026-12-04T00:00:00+09:00"],
    ),
]
NeedsOperatorQuery = Annotated[
    bool | None,
    Query(description="Only sagas flagged for an operator (`true`) or only those not (`false`)."),
]
FailedStepQuery = Annotated[
    str | None,
    Query(
        pattern=NAME_PATTERN,
        description=(
            "Only sagas that compensated because this step failed (`service.method`), e.g. "
            "`shipping.arrange_shipping`."
        ),
        examples=["shipping.arrange_shipping"],
    ),
]
WorkflowQuery = Annotated[
    str | None,
    Query(
        pattern=NAME_PATTERN,
        description="Only sagas of this workflow, e.g. `place_order`.",
        examples=["place_order"],
    ),
]
OrderIdPrefixQuery = Annotated[
    str | None,
    Query(
        pattern=ORDER_ID_PREFIX_PATTERN,
        description=(
            "Only sagas whose order id (the saga's workflow id) starts with this, "
            "case-sensitively; a whole order id lists that one saga."
        ),
        examples=["0b6f9c3e"],
    ),
]
LimitQuery = Annotated[
    int, Query(ge=1, le=MAX_LIMIT, description=f"Sagas per page, at most {MAX_LIMIT}.")
]
CursorQuery = Annotated[
    str | None,
    Query(
        pattern=CURSOR_PATTERN,
        description=(
            "Continue after the previous page: its `next_cursor`, as it was (opaque). The same "
            "filters give the next page; following every cursor lists each matching saga "
            "exactly once, also while sagas are being created."
        ),
    ),
]
