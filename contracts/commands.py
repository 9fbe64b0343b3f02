"""Inputs and results of the business operations: one pydantic model in, one out.

Inputs are strict: unknown fields, strings for numbers, fractions, out-of-range quantities,
control characters in text, NaN or infinite money are all refused by validation, so an
operation only ever sees well-formed data. Everything else in a text field is data: it is
stored and returned verbatim.
"""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)

MAX_ITEMS = 50
MAX_QUANTITY = 100
INT32_MAX = 2**31 - 1


def _no_control_characters(value: str) -> str:
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        raise ValueError("control characters are not allowed")
    return value


NoControlCharacters = AfterValidator(_no_control_characters)
# The same rule told to the JSON schema (Unicode category Cc is exactly these two ranges);
# validation stays the validator's, and so does its message.
SaysNoControlCharacters = Field(json_schema_extra={"pattern": r"^[^\u0000-\u001f\u007f-\u009f]*$"})

Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200),
    NoControlCharacters,
    SaysNoControlCharacters,
]
Line = Annotated[
    str,
    StringConstraints(min_length=1, max_length=300),
    NoControlCharacters,
    SaysNoControlCharacters,
]
PostalCode = Annotated[
    str,
    StringConstraints(min_length=1, max_length=20),
    NoControlCharacters,
    SaysNoControlCharacters,
]
Country = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z]{2}$", to_upper=True),
]
OrderId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Id = Annotated[int, Field(strict=True, ge=1, le=INT32_MAX)]
Quantity = Annotated[int, Field(strict=True, ge=1, le=MAX_QUANTITY)]
# The JSON schema pydantic derives for a Decimal admits any string and any fraction; say
# which amounts pass: at most 10 whole digits and 2 decimals, as a number or as a string.
Money = Annotated[
    Decimal,
    Field(ge=0, max_digits=12, decimal_places=2, allow_inf_nan=False),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": 9_999_999_999.99, "multipleOf": 0.01},
                {"type": "string", "pattern": r"^(0|[1-9][0-9]{0,9})(\.[0-9]{1,2})?$"},
            ],
            "description": 'An amount of at most 10 whole digits and 2 decimals, e.g. "12.50".',
        },
        mode="validation",
    ),
]


def _utc(value: datetime) -> datetime:
    # Stored times are naive UTC; RFC 3339 (OpenAPI's date-time) needs the offset.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


UtcTimestamp = Annotated[datetime, AfterValidator(_utc)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Address(Model):
    name: Name
    line1: Line
    line2: Line | None = None
    city: Name
    postal_code: PostalCode
    country: Country = Field(description="ISO 3166-1 alpha-2 code, e.g. JP.")


class OrderItem(Model):
    book_id: Id
    quantity: Quantity


Items = Annotated[list[OrderItem], Field(min_length=1, max_length=MAX_ITEMS)]


def _distinct_books(items: list[OrderItem]) -> list[OrderItem]:
    seen = {item.book_id for item in items}
    if len(seen) != len(items):
        raise ValueError("each book may appear once per order; add up the quantities instead")
    return items


class PlaceOrder(Model):
    """An order as a customer places it (the body of ``POST /saga/start`` and ``POST /orders``)."""

    customer_id: Id
    items: Annotated[Items, AfterValidator(_distinct_books)]
    shipping_address: Address

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "examples": [
                {
                    "customer_id": 1,
                    "items": [{"book_id": 1, "quantity": 2}, {"book_id": 3, "quantity": 1}],
                    "shipping_address": {
                        "name": "Hanako",
                        "line1": "1-2-3 Shibuya",
                        "city": "Tokyo",
                        "postal_code": "150-0002",
                        "country": "JP",
                    },
                }
            ]
        },
    )


class CreateOrder(PlaceOrder):
    order_id: OrderId


class OrderRef(Model):
    """Names one order: the input of every compensation and of ``complete_order``."""

    order_id: OrderId
    reason: (
        Annotated[
            str, StringConstraints(max_length=500), NoControlCharacters, SaysNoControlCharacters
        ]
        | None
    ) = None


class ReserveStock(Model):
    order_id: OrderId
    items: Annotated[Items, AfterValidator(_distinct_books)]


class ProcessPayment(Model):
    order_id: OrderId
    customer_id: Id
    amount: Money


class ArrangeShipping(Model):
    order_id: OrderId
    address: Address


class ScreenOrder(Model):
    """An order to screen for fraud before its payment is taken: its customer and amount."""

    order_id: OrderId
    customer_id: Id
    amount: Money


MAX_RESTOCK = 10_000
MAX_TOP_UP = Decimal("1000000.00")
RequestId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
TopUpAmount = Annotated[
    Decimal,
    Field(gt=0, le=MAX_TOP_UP, max_digits=9, decimal_places=2, allow_inf_nan=False),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0, "maximum": 1_000_000, "multipleOf": 0.01},
                {
                    "type": "string",
                    "pattern": (
                        r"^(0\.(0[1-9]|[1-9][0-9]?)|[1-9][0-9]{0,5}(\.[0-9]{1,2})?"
                        r"|1000000(\.00?)?)$"
                    ),
                },
            ],
            "description": 'A positive amount of at most 1000000 and 2 decimals, e.g. "12.50".',
        },
        mode="validation",
    ),
]


class RestockBody(Model):
    """The body of ``POST /inventory/{book_id}/restock``."""

    quantity: Annotated[int, Field(strict=True, ge=1, le=MAX_RESTOCK)]


class Restock(RestockBody):
    """Units that enter a book's stock (into ``available``); ``request_id`` keys it once."""

    request_id: RequestId
    book_id: Id


class TopUpBody(Model):
    """The body of ``POST /payments/top-up``."""

    customer_id: Id
    amount: TopUpAmount

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={"examples": [{"customer_id": 1, "amount": "12.50"}]},
    )


class TopUp(TopUpBody):
    """Money added to a customer's balance; ``request_id`` keys it once."""

    request_id: RequestId


# Results ---------------------------------------------------------------------------------


class OrderView(Model):
    order_id: str
    customer_id: int
    status: Literal["PENDING", "COMPLETED", "CANCELLED"]
    total_amount: Decimal
    items: list[OrderItem]
    shipping_address: Address


class StockReservation(Model):
    order_id: str
    items: list[OrderItem]


class StockView(Model):
    book_id: int
    title: str
    price: Decimal
    available: int
    reserved: int


class PaymentView(Model):
    order_id: str
    customer_id: int
    amount: Decimal
    status: Literal["COMPLETED", "FAILED", "CANCELLED", "REFUNDED"]


class OrderScreened(Model):
    """A screening that let the order through: what the customer paid in the 24 hours before
    it (``paid_recently``) plus its ``amount`` stays within ``daily_limit``."""

    order_id: str
    customer_id: int
    amount: Decimal
    paid_recently: Decimal
    daily_limit: Decimal


class ShipmentView(Model):
    order_id: str
    status: Literal["ARRANGED", "CANCELLED", "FAILED"]
    country: str
    tracking_number: str | None
    reason: str | None = None


class OrderPlaced(Model):
    """What the order saga returns when it completed."""

    order_id: str
    total_amount: Decimal
    payment: PaymentView
    shipment: ShipmentView


class Compensation(Model):
    """What a compensation did: ``undone`` is False when there was nothing to undo."""

    order_id: str
    operation: str
    undone: bool
    amount: Decimal | None = None
    items: list[OrderItem] = Field(default_factory=list)


class Restocked(Model):
    """What a restock did, and the book's stock right after it."""

    request_id: str
    book_id: int
    quantity: int
    available: int
    reserved: int


class ToppedUp(Model):
    """What a top-up did, and the customer's balance right after it."""

    request_id: str
    customer_id: int
    amount: Decimal
    balance: Decimal
