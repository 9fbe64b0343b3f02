"""Inputs are strict: what SPEC §3 calls bad input never reaches an operation."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from activities.errors import PaymentFailed, StockUnavailable, from_wire
from contracts.commands import PlaceOrder, ProcessPayment

ADDRESS = {
    "name": "Hanako",
    "line1": "1-2-3",
    "city": "Tokyo",
    "postal_code": "150-0002",
    "country": "jp",
}


def body(**overrides: object) -> dict[str, object]:
    return {
        "customer_id": 1,
        "items": [{"book_id": 1, "quantity": 2}],
        "shipping_address": ADDRESS,
        **overrides,
    }


def test_valid_order_normalises_country() -> None:
    assert (
        PlaceOrder.model_validate_json(__import__("json").dumps(body())).shipping_address.country
        == "JP"
    )


@pytest.mark.parametrize("quantity", [0, -1, 2**31, "3", 3.5, None, 101, True])
def test_bad_quantities_are_refused(quantity: object) -> None:
    with pytest.raises(ValidationError):
        PlaceOrder.model_validate(body(items=[{"book_id": 1, "quantity": quantity}]))


@pytest.mark.parametrize(
    "overrides",
    [
        {"items": []},
        {"items": [{"book_id": i, "quantity": 1} for i in range(1, 52)]},
        {"items": [{"book_id": 1, "quantity": 1}, {"book_id": 1, "quantity": 2}]},
        {"extra": 1},
        {"shipping_address": {k: v for k, v in ADDRESS.items() if k != "city"}},
        {"shipping_address": {**ADDRESS, "name": "Ha\x00nako"}},
        {"shipping_address": {**ADDRESS, "country": "JPN"}},
        {"customer_id": "1"},
    ],
)
def test_bad_orders_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        PlaceOrder.model_validate(body(**overrides))


def test_text_is_data() -> None:
    odd = "'); DROP TABLE orders;-- \u202e 📚 東京"
    order = PlaceOrder.model_validate(body(shipping_address={**ADDRESS, "line1": odd}))
    assert order.shipping_address.line1 == odd


@pytest.mark.parametrize("amount", ["NaN", "Infinity", "-Infinity", "-1", "1.001", "1e20"])
def test_money_refuses_nan_infinity_negative_and_overprecise(amount: str) -> None:
    with pytest.raises(ValidationError):
        ProcessPayment.model_validate({"order_id": "o1", "customer_id": 1, "amount": amount})


def test_money_accepts_two_decimals() -> None:
    assert ProcessPayment.model_validate(
        {"order_id": "o1", "customer_id": 1, "amount": "12.50"}
    ).amount == Decimal("12.50")


def test_errors_round_trip_the_wire() -> None:
    error = from_wire(StockUnavailable("short", book_id=3).to_wire())
    assert isinstance(error, StockUnavailable) and error.details == {"book_id": 3}
    assert PaymentFailed("x").to_wire()["non_retryable"] is True
    assert type(from_wire({"type": "Unknown", "message": "?"})).__name__ == "DomainError"
