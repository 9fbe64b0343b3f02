"""Inputs are strict: what SPEC §3 calls bad input never reaches an operation."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from activities.errors import PaymentFailed, StockUnavailable, from_wire
from contracts.commands import Address, PlaceOrder, ProcessPayment

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


# What the JSON schema says is what validation does: a client reading the OpenAPI document
# can tell a good request from a refused one.


def _accepted(model: type[BaseModel], data: object) -> bool:
    try:
        model.model_validate(data)
    except ValidationError:
        return False
    return True


def test_the_schema_refuses_exactly_the_control_characters_validation_refuses() -> None:
    properties = Address.model_json_schema()["properties"]
    for name in ("name", "line1", "city", "postal_code"):
        pattern = properties[name]["pattern"]
        for code in range(0x3000):  # C0, DEL, C1 and well beyond
            value = f"a{chr(code)}"
            valid = _accepted(Address, {**ADDRESS, name: value})
            assert (re.fullmatch(pattern, value) is not None) is valid, (name, hex(code))


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_every_amount_the_schema_allows_is_accepted(data: st.DataObject) -> None:
    number, text = ProcessPayment.model_json_schema()["properties"]["amount"]["anyOf"]
    amount = data.draw(
        st.one_of(
            st.from_regex(text["pattern"], fullmatch=True),
            st.integers(0, 999_999_999_999).map(lambda cents: cents / 100),
        )
    )
    if isinstance(amount, float):
        assert number["minimum"] <= amount <= number["maximum"]
    assert _accepted(ProcessPayment, {"order_id": "o1", "customer_id": 1, "amount": amount})


def test_errors_round_trip_the_wire() -> None:
    error = from_wire(StockUnavailable("short", book_id=3).to_wire())
    assert isinstance(error, StockUnavailable) and error.details == {"book_id": 3}
    assert PaymentFailed("x").to_wire()["non_retryable"] is True
    assert type(from_wire({"type": "Unknown", "message": "?"})).__name__ == "DomainError"
