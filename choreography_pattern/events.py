"""The choreographed saga's events: names, who produces them, their envelope and wire form.

Every event is a fact about one order. Its ``event_id`` is ``uuid5(order_id:type)``: an order
has at most one event of each type (each is the outcome of an operation that runs at most
once per order), so a re-published or re-delivered event always carries the same id and
consumers can drop repeats. ``sequence`` is the event's position in its *producer's* life
cycle for the order (payment: 1 = charged or refused, 2 = cancelled or refunded; order: 1 =
created, 2 = cancel requested, 3 = completed or cancelled), a fixed
ordinal per type: it needs no counter and orders one producer's events; nothing relies on
the order of events *across* producers (handlers are guarded by state instead).

Events carry the order's data forward (event-carried state transfer: ``customer_id``,
``items``, ``shipping_address``, ``total_amount``), so shipping can arrange delivery from
``StockReserved``/``PaymentCompleted`` without asking the order service.

On the wire (a Redis stream entry) an event is a flat map of strings, see :meth:`Event.to_fields`;
:func:`Event.from_fields` raises :class:`MalformedEvent` for anything else.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

ORDER_CREATED = "OrderCreated"
STOCK_RESERVED = "StockReserved"
STOCK_UNAVAILABLE = "StockUnavailable"
STOCK_RELEASED = "StockReleased"
PAYMENT_COMPLETED = "PaymentCompleted"
PAYMENT_FAILED = "PaymentFailed"
PAYMENT_CANCELLED = "PaymentCancelled"
PAYMENT_REFUNDED = "PaymentRefunded"
SHIPPING_ARRANGED = "ShippingArranged"
SHIPPING_FAILED = "ShippingFailed"
SHIPPING_CANCELLED = "ShippingCancelled"
ORDER_CANCEL_REQUESTED = "OrderCancelRequested"
ORDER_COMPLETED = "OrderCompleted"
ORDER_CANCELLED = "OrderCancelled"

# (service, operation) → (event on success, event on business refusal or None), sequence.
_OUTCOMES: dict[tuple[str, str], tuple[str, str | None, int]] = {
    ("order", "create_order"): (ORDER_CREATED, None, 1),
    ("order", "request_cancel"): (ORDER_CANCEL_REQUESTED, None, 2),
    ("order", "complete_order"): (ORDER_COMPLETED, None, 3),
    ("order", "cancel_order"): (ORDER_CANCELLED, None, 3),
    ("inventory", "reserve_stock"): (STOCK_RESERVED, STOCK_UNAVAILABLE, 1),
    ("inventory", "release_stock"): (STOCK_RELEASED, None, 2),
    ("payment", "process_payment"): (PAYMENT_COMPLETED, PAYMENT_FAILED, 1),
    ("payment", "cancel_payment"): (PAYMENT_CANCELLED, None, 2),
    ("payment", "refund_payment"): (PAYMENT_REFUNDED, None, 2),
    ("shipping", "arrange_shipping"): (SHIPPING_ARRANGED, SHIPPING_FAILED, 1),
    ("shipping", "cancel_shipping"): (SHIPPING_CANCELLED, None, 2),
}

PRODUCER: dict[str, str] = {}
SEQUENCE: dict[str, int] = {}
for (_service, _op), (_ok, _failed, _seq) in _OUTCOMES.items():
    for _type in (_ok, _failed):
        if _type is not None:
            PRODUCER[_type] = _service
            SEQUENCE[_type] = _seq
EVENT_TYPES: frozenset[str] = frozenset(PRODUCER)

# A failure event (or a customer's cancel request), and the compensation events that must
# all be seen before the order is CANCELLED (the order service's rule; see
# choreography_pattern.handlers). A cancel request undoes whatever may have happened, in
# reverse: the shipment first, then the stock (released once the shipment is cancelled), and
# the payment.
COMPENSATIONS_NEEDED: dict[str, frozenset[str]] = {
    STOCK_UNAVAILABLE: frozenset({PAYMENT_CANCELLED}),
    PAYMENT_FAILED: frozenset({STOCK_RELEASED}),
    SHIPPING_FAILED: frozenset({PAYMENT_REFUNDED, STOCK_RELEASED}),
    ORDER_CANCEL_REQUESTED: frozenset({SHIPPING_CANCELLED, STOCK_RELEASED, PAYMENT_REFUNDED}),
}

# The order's data carried from event to event.
CONTEXT_FIELDS = ("customer_id", "items", "shipping_address", "total_amount")

_EVENT_NAMESPACE = uuid.UUID("2b0f4a7e-8c59-4f0e-b1d4-6a9e3c2f7d10")


class MalformedEvent(ValueError):
    """A stream entry that is not an event this system understands (dead-lettered at once)."""


def event_id(order_id: str, event_type: str) -> str:
    """The stable id of ``order_id``'s event ``event_type``: the same however often it is sent."""
    return str(uuid.uuid5(_EVENT_NAMESPACE, f"{order_id}:{event_type}"))


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class Event:
    """One fact about one order."""

    type: str
    order_id: str
    payload: dict[str, Any] = field(default_factory=dict)
    occurred_at: datetime = field(default_factory=_now)

    @property
    def event_id(self) -> str:
        return event_id(self.order_id, self.type)

    @property
    def producer(self) -> str:
        return PRODUCER[self.type]

    @property
    def sequence(self) -> int:
        return SEQUENCE[self.type]

    @property
    def context(self) -> dict[str, Any]:
        """The order data this event carries, to pass on to the events it causes."""
        return {k: self.payload[k] for k in CONTEXT_FIELDS if k in self.payload}

    def to_fields(self) -> dict[str, str]:
        return {
            "event_id": self.event_id,
            "type": self.type,
            "order_id": self.order_id,
            "producer": self.producer,
            "sequence": str(self.sequence),
            "occurred_at": self.occurred_at.isoformat(),
            "payload": json.dumps(self.payload, default=str, separators=(",", ":")),
        }

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> Event:
        """Decode a stream entry; MalformedEvent when it is not a well-formed known event."""
        try:
            event_type = fields["type"]
            order_id = fields["order_id"]
            payload = json.loads(fields.get("payload", "{}"))
            occurred_at = datetime.fromisoformat(fields["occurred_at"])
        except (KeyError, ValueError, TypeError) as exc:
            raise MalformedEvent(f"cannot decode event: {exc!r}") from exc
        if event_type not in EVENT_TYPES:
            raise MalformedEvent(f"unknown event type {event_type!r}")
        if not isinstance(payload, dict) or not order_id:
            raise MalformedEvent("payload must be an object and order_id non-empty")
        event = cls(type=event_type, order_id=order_id, payload=payload, occurred_at=occurred_at)
        if fields.get("event_id", event.event_id) != event.event_id:
            raise MalformedEvent("event_id does not match the order and type")
        return event


def event_for(
    service: str, operation: str, order_id: str, outcome: dict[str, Any], context: dict[str, Any]
) -> Event | None:
    """The event an operation's recorded outcome causes, or None (e.g. a tombstone).

    ``outcome`` is what :data:`activities.Emit` receives: ``{"result": ...}`` or
    ``{"error": {"type", ...}}``. A success becomes the success event; a business refusal
    (StockUnavailable, PaymentFailed, ShippingFailed) its failure event.
    """
    mapping = _OUTCOMES.get((service, operation))
    if mapping is None:
        return None
    ok, failed, _ = mapping
    if "result" in outcome:
        return Event(ok, order_id, {**context, "result": outcome["result"]})
    error = outcome.get("error") or {}
    if failed is not None and error.get("type") == failed:
        return Event(failed, order_id, {**context, "error": error})
    return None
