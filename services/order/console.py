"""The order service's console in the choreography, ``GET /ui`` on 8001 (SPEC §8, "Console").

- ``/ui``: the newest orders (by status, when asked), each linked to its page;
- ``/ui/orders/{order_id}``: the order and the events the order service saw for it, in the
  order it saw them, with the service that emitted each and, for a failure (or a customer's
  cancel request), the compensations it calls for and whether each has been seen yet.

The reads are the order service's own (:mod:`choreography_pattern.saga`); which compensations a
failure calls for is the order service's rule (``events.COMPENSATIONS_NEEDED``). Access and the
shared parts: :mod:`services._kit.console`.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from choreography_pattern.events import COMPENSATIONS_NEEDED
from choreography_pattern.saga import SeenEvent, order_with_events, recent_orders
from services._kit import DatabaseDep, OrderIdPath
from services._kit import console as kit

__all__ = ["EventLine", "event_lines", "router"]

router = APIRouter(prefix=kit.UI_PREFIX, include_in_schema=False)

NAV = ((kit.UI_PREFIX, "Orders"),)
ORDER_STATUSES = ("PENDING", "COMPLETED", "CANCELLED")
SHOWN = 100


@dataclasses.dataclass(frozen=True)
class EventLine:
    """One event as the order's page shows it."""

    event: SeenEvent
    calls_for: tuple[tuple[str, bool], ...]  # (compensation event, seen yet)
    answers: str  # the failure this compensation answers, if it is one


def event_lines(events: list[SeenEvent]) -> list[EventLine]:
    """``events`` in the order seen, each failure with the compensations it calls for."""
    seen = {e.type for e in events}
    failures = [e.type for e in events if e.type in COMPENSATIONS_NEEDED]
    lines = []
    for event in events:
        needed = sorted(COMPENSATIONS_NEEDED.get(event.type, ()))
        answers = next((f for f in failures if event.type in COMPENSATIONS_NEEDED[f]), "")
        lines.append(EventLine(event, tuple((c, c in seen) for c in needed), answers))
    return lines


def _page(request: Request, template: str, **context: Any) -> HTMLResponse:
    return kit.render(
        request,
        template,
        console_name="order service (choreography)",
        nav=NAV,
        current=request.url.path,
        **context,
    )


@router.get("")
async def orders(
    request: Request,
    db: DatabaseDep,
    status: Annotated[Literal["PENDING", "COMPLETED", "CANCELLED"] | None, Query()] = None,
) -> HTMLResponse:
    shown = await recent_orders(db, status=status, limit=SHOWN)
    return _page(request, "orders.html", orders=shown, status=status or "", statuses=ORDER_STATUSES)


@router.get("/orders/{order_id}")
async def order_page(request: Request, order_id: OrderIdPath, db: DatabaseDep) -> HTMLResponse:
    order, events = await order_with_events(db, order_id)
    return _page(
        request,
        "order.html",
        order=order,
        lines=event_lines(events),
        # A PENDING order is still moving: the page follows its events.
        live=order.status == "PENDING",
    )
