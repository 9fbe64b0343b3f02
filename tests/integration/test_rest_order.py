"""The order service's REST API on MariaDB: place, read and cancel orders; hostile input."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from rest_support import (
    GENERIC_HOSTILE,
    VALID_ADDRESS,
    assert_error,
    json_request,
    refused_without_writes,
    rest_fixtures,
    snapshot,
    variant,
)

from activities import Database, complete_order
from activities.tables import orders
from contracts.commands import OrderRef

pytestmark = pytest.mark.mysql

VALID: dict[str, Any] = {
    "customer_id": 1,
    "items": [{"book_id": 1, "quantity": 2}, {"book_id": 3, "quantity": 1}],
    "shipping_address": VALID_ADDRESS,
}


url, db, client = rest_fixtures("order")


async def place(client: httpx.AsyncClient, body: dict[str, Any] = VALID) -> dict[str, Any]:
    response = await client.post("/orders", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


# Happy paths -------------------------------------------------------------------------------


async def test_post_orders_creates_a_pending_order_with_a_server_assigned_id(
    client: httpx.AsyncClient, db: Database
) -> None:
    response = await client.post("/orders", json=VALID)

    assert response.status_code == 201
    body = response.json()
    assert uuid.UUID(body["order_id"]).version == 4
    assert response.headers["location"] == f"/orders/{body['order_id']}"
    assert body["status"] == "PENDING"
    assert body["total_amount"] == "2010.00"  # 2 x 1000.00 + 1 x 10.00
    assert body["items"] == VALID["items"]
    async with db.engine.connect() as conn:
        status = await conn.scalar(
            sa.select(orders.c.status).where(orders.c.order_id == body["order_id"])
        )
    assert status == "PENDING"


async def test_two_identical_posts_create_two_orders(client: httpx.AsyncClient) -> None:
    first, second = await place(client), await place(client)

    assert first["order_id"] != second["order_id"]


async def test_get_order_returns_what_was_placed(client: httpx.AsyncClient) -> None:
    placed = await place(client)

    response = await client.get(f"/orders/{placed['order_id']}")

    assert response.status_code == 200
    assert response.json() == placed


async def test_cancel_moves_a_pending_order_to_cancelled_and_repeating_it_is_harmless(
    client: httpx.AsyncClient,
) -> None:
    placed = await place(client)

    first = await client.put(f"/orders/{placed['order_id']}/cancel")
    again = await client.put(f"/orders/{placed['order_id']}/cancel")

    assert first.status_code == 200 and first.json()["status"] == "CANCELLED"
    assert again.status_code == 200 and again.json()["status"] == "CANCELLED"


# Refusals ----------------------------------------------------------------------------------


async def test_unknown_customer_is_404_and_writes_nothing(
    client: httpx.AsyncClient, db: Database
) -> None:
    before = await snapshot(db)

    response = await client.post("/orders", json={**VALID, "customer_id": 99})

    assert assert_error(response, 404)["error"] == "CustomerNotFound"
    assert await snapshot(db) == before


async def test_unknown_book_is_404_and_writes_nothing(
    client: httpx.AsyncClient, db: Database
) -> None:
    before = await snapshot(db)
    body = {**VALID, "items": [{"book_id": 1, "quantity": 1}, {"book_id": 77, "quantity": 1}]}

    response = await client.post("/orders", json=body)

    error = assert_error(response, 404)
    assert error["error"] == "BookNotFound"
    assert error["details"] == {"book_ids": [77]}
    assert await snapshot(db) == before


async def test_get_unknown_order_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/orders/no-such-order")

    assert assert_error(response, 404)["error"] == "OrderNotFound"


async def test_cancel_unknown_order_is_404_and_writes_nothing(
    client: httpx.AsyncClient, db: Database
) -> None:
    before = await snapshot(db)

    response = await client.put("/orders/no-such-order/cancel")

    assert assert_error(response, 404)["error"] == "OrderNotFound"
    assert await snapshot(db) == before


async def test_cancel_completed_order_is_409_and_it_stays_completed(
    client: httpx.AsyncClient, db: Database
) -> None:
    placed = await place(client)
    await complete_order(db, OrderRef(order_id=placed["order_id"]))

    response = await client.put(f"/orders/{placed['order_id']}/cancel")

    error = assert_error(response, 409)
    assert error["error"] == "InvalidOrderState"
    assert (await client.get(f"/orders/{placed['order_id']}")).json()["status"] == "COMPLETED"


@pytest.mark.parametrize(
    "order_id",
    ["a" * 65, "semi;colon", "quote'x", "sp ace", "%00", "é"],
    ids=["too_long", "semicolon", "quote", "space", "nul", "accent"],
)
async def test_bad_order_id_in_path_is_422(client: httpx.AsyncClient, order_id: str) -> None:
    get = await client.get(f"/orders/{order_id}")
    cancel = await client.put(f"/orders/{order_id}/cancel")

    assert assert_error(get, 422)["error"] == "validation_error"
    assert assert_error(cancel, 422)["error"] == "validation_error"


# Strings are data --------------------------------------------------------------------------

ODD_ADDRESSES = {
    "sql": {**VALID_ADDRESS, "name": "'); DROP TABLE orders;--", "line1": "1' OR '1'='1"},
    "rtl_override": {**VALID_ADDRESS, "name": "abc\u202edcba", "city": "\u202eoykoT"},
    "emoji": {**VALID_ADDRESS, "name": "Hanako 📚🚚", "line1": "🏠 1-2-3"},
    "cjk": {**VALID_ADDRESS, "name": "山田 花子", "line1": "渋谷区1-2-3", "city": "東京都"},
    "line2_and_quotes": {**VALID_ADDRESS, "line2": 'Room "7" \\ backslash', "city": "O'Hare"},
}


@pytest.mark.parametrize("address", ODD_ADDRESSES.values(), ids=ODD_ADDRESSES.keys())
async def test_odd_but_printable_address_is_stored_verbatim_and_read_back_unchanged(
    client: httpx.AsyncClient, db: Database, address: dict[str, Any]
) -> None:
    placed = await place(client, {**VALID, "shipping_address": address})

    read = (await client.get(f"/orders/{placed['order_id']}")).json()

    expected = {"line2": None, **address}
    assert read["shipping_address"] == expected
    async with db.engine.connect() as conn:
        stored = await conn.scalar(
            sa.select(orders.c.shipping_address).where(orders.c.order_id == placed["order_id"])
        )
        table_count = await conn.scalar(sa.select(sa.func.count()).select_from(orders))
    assert json.loads(stored) == expected
    assert table_count == 1


# Hostile bodies ----------------------------------------------------------------------------

HOSTILE: list[tuple[str, bytes]] = [
    *GENERIC_HOSTILE,
    ("quantity_zero", variant(VALID, "items.0.quantity", 0)),
    ("quantity_negative", variant(VALID, "items.0.quantity", -1)),
    ("quantity_int32_overflow", variant(VALID, "items.0.quantity", 2**31)),
    ("quantity_over_100", variant(VALID, "items.0.quantity", 101)),
    ("quantity_string", variant(VALID, "items.0.quantity", "3")),
    ("quantity_fraction", variant(VALID, "items.0.quantity", 3.5)),
    ("quantity_null", variant(VALID, "items.0.quantity", None)),
    ("quantity_bool", variant(VALID, "items.0.quantity", True)),
    ("quantity_nan", variant(VALID, "items.0.quantity", float("nan"))),
    ("book_id_zero", variant(VALID, "items.0.book_id", 0)),
    ("book_id_int64", variant(VALID, "items.0.book_id", 2**63)),
    ("customer_id_negative", variant(VALID, "customer_id", -1)),
    ("customer_id_overflow", variant(VALID, "customer_id", 2**31)),
    ("customer_id_string", variant(VALID, "customer_id", "1")),
    ("customer_id_infinity", variant(VALID, "customer_id", float("inf"))),
    ("items_empty", variant(VALID, "items", [])),
    ("items_51", variant(VALID, "items", [{"book_id": i, "quantity": 1} for i in range(1, 52)])),
    (
        "items_10000",
        variant(VALID, "items", [{"book_id": i, "quantity": 1} for i in range(1, 10_001)]),
    ),
    ("items_duplicate_book", variant(VALID, "items", [{"book_id": 1, "quantity": 1}] * 2)),
    ("items_not_a_list", variant(VALID, "items", {"book_id": 1, "quantity": 1})),
    ("unknown_field", variant(VALID, "coupon", "FREE")),
    ("unknown_item_field", variant(VALID, "items.0.price", 0)),
    ("unknown_address_field", variant(VALID, "shipping_address.phone", "000")),
    ("client_chosen_order_id", variant(VALID, "order_id", "mine")),
    ("address_missing", variant(VALID, "shipping_address")),
    ("address_null", variant(VALID, "shipping_address", None)),
    *(
        (f"address_missing_{field}", variant(VALID, f"shipping_address.{field}"))
        for field in ("name", "line1", "city", "postal_code", "country")
    ),
    ("address_name_empty", variant(VALID, "shipping_address.name", "")),
    ("address_name_nul", variant(VALID, "shipping_address.name", "Hana\x00ko")),
    ("address_line1_bell", variant(VALID, "shipping_address.line1", "ring\x07")),
    ("address_city_newline", variant(VALID, "shipping_address.city", "To\nkyo")),
    ("address_name_too_long", variant(VALID, "shipping_address.name", "x" * 10_000)),
    ("address_name_lone_surrogate", json.dumps(VALID).replace("Hanako", "\\ud800").encode()),
    ("country_three_letters", variant(VALID, "shipping_address.country", "JPN")),
    ("country_number", variant(VALID, "shipping_address.country", 81)),
]


@pytest.mark.parametrize(("case", "raw"), HOSTILE, ids=[case for case, _ in HOSTILE])
async def test_hostile_order_body_is_a_4xx_json_error_and_writes_nothing(
    client: httpx.AsyncClient, db: Database, case: str, raw: bytes
) -> None:
    await refused_without_writes(client, db, "/orders", raw)


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.request(url="/orders", **json_request("POST", b'{"customer_id": 1,'))

    assert assert_error(response, 400)["error"] == "malformed_json"


async def test_validation_error_names_the_field_without_echoing_the_input(
    client: httpx.AsyncClient,
) -> None:
    body = variant(VALID, "shipping_address.name", "secret\x00value")

    response = await client.request(url="/orders", **json_request("POST", body))

    error = assert_error(response, 422)
    assert error["error"] == "validation_error"
    assert error["details"]["errors"][0]["loc"] == ["body", "shipping_address", "name"]
    assert "secret" not in response.text


async def test_ten_thousand_bad_items_give_a_bounded_error_list(
    client: httpx.AsyncClient,
) -> None:
    items = [{"book_id": i, "quantity": 0} for i in range(1, 10_001)]

    response = await client.post("/orders", json={**VALID, "items": items})

    error = assert_error(response, 422)
    assert len(error["details"]["errors"]) <= 20
    assert len(response.content) < 10_000


async def test_ten_megabyte_body_is_413_and_writes_nothing(
    client: httpx.AsyncClient, db: Database
) -> None:
    raw = variant(VALID, "shipping_address.line2", "x" * 10_000_000)

    body = await refused_without_writes(client, db, "/orders", raw, 413)

    assert body["error"] == "payload_too_large"


async def test_chunked_body_over_the_limit_is_413_without_a_content_length(
    client: httpx.AsyncClient, db: Database
) -> None:
    before = await snapshot(db)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"customer_id": 1, "pad": "'
        for _ in range(20):
            yield b"x" * 100_000
        yield b'"}'

    response = await client.post(
        "/orders", content=chunks(), headers={"content-type": "application/json"}
    )

    assert "content-length" not in response.request.headers
    assert assert_error(response, 413)["error"] == "payload_too_large"
    assert await snapshot(db) == before


async def test_cancel_with_a_body_over_the_limit_is_413_and_changes_nothing(
    client: httpx.AsyncClient, db: Database
) -> None:
    placed = await place(client)
    path = f"/orders/{placed['order_id']}/cancel"
    before = await snapshot(db)

    too_large = await client.request(
        url=path, **json_request("PUT", b"[" + b"0," * 600_000 + b"0]")
    )

    assert assert_error(too_large, 413)["error"] == "payload_too_large"
    assert await snapshot(db) == before
    assert (await client.get(f"/orders/{placed['order_id']}")).json()["status"] == "PENDING"
