"""The inventory service's REST API on MariaDB: reserve, release, read stock; hostile input."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from domain_data import ledger_violations, order, stock
from rest_support import (
    GENERIC_HOSTILE,
    HOSTILE_ORDER_IDS,
    assert_error,
    refused_without_writes,
    rest_fixtures,
    snapshot,
    variant,
)

from activities import Database, create_order

pytestmark = pytest.mark.mysql

RESERVE: dict[str, Any] = {
    "order_id": "o-1",
    "items": [{"book_id": 1, "quantity": 3}, {"book_id": 2, "quantity": 2}],
}


async def _seed(database: Database) -> None:
    await create_order(database, order("o-1", (1, 3), (2, 2)))


url, db, client = rest_fixtures("inventory", seed=_seed)


async def test_reserve_moves_every_item_from_available_to_reserved(
    client: httpx.AsyncClient, db: Database
) -> None:
    response = await client.post("/inventory/reserve", json=RESERVE)

    assert response.status_code == 200
    assert response.json() == {"order_id": "o-1", "items": RESERVE["items"]}
    assert await stock(db, 1) == (7, 3)
    assert await stock(db, 2) == (3, 2)


async def test_reserve_twice_reserves_once(client: httpx.AsyncClient, db: Database) -> None:
    first = await client.post("/inventory/reserve", json=RESERVE)
    again = await client.post("/inventory/reserve", json=RESERVE)

    assert first.json() == again.json()
    assert await stock(db, 1) == (7, 3)


async def test_short_stock_is_409_and_nothing_stays_reserved(
    client: httpx.AsyncClient, db: Database
) -> None:
    body = {
        "order_id": "o-1",
        "items": [{"book_id": 1, "quantity": 1}, {"book_id": 2, "quantity": 6}],
    }

    response = await client.post("/inventory/reserve", json=body)

    error = assert_error(response, 409)
    assert error["error"] == "StockUnavailable"
    assert error["details"]["book_id"] == 2
    assert await stock(db, 1) == (10, 0)
    assert await stock(db, 2) == (5, 0)


async def test_reserve_for_unknown_order_is_404(client: httpx.AsyncClient, db: Database) -> None:
    before = await snapshot(db)

    response = await client.post("/inventory/reserve", json={**RESERVE, "order_id": "ghost"})

    assert assert_error(response, 404)["error"] == "OrderNotFound"
    assert await snapshot(db) == before


async def test_reserve_unknown_book_is_404(client: httpx.AsyncClient, db: Database) -> None:
    body = {
        "order_id": "o-1",
        "items": [{"book_id": 1, "quantity": 1}, {"book_id": 9, "quantity": 1}],
    }

    response = await client.post("/inventory/reserve", json=body)

    assert assert_error(response, 404)["error"] == "BookNotFound"
    assert await stock(db, 1) == (10, 0)


async def test_release_puts_reserved_units_back_once(
    client: httpx.AsyncClient, db: Database
) -> None:
    await client.post("/inventory/reserve", json=RESERVE)

    first = await client.post("/inventory/release", json={"order_id": "o-1"})
    again = await client.post("/inventory/release", json={"order_id": "o-1"})

    assert first.status_code == 200 and first.json()["undone"] is True
    assert first.json()["items"] == RESERVE["items"]
    assert again.status_code == 200 and again.json()["undone"] is True  # the recorded outcome
    assert await stock(db, 1) == (10, 0)
    assert await stock(db, 2) == (5, 0)


async def test_release_before_reserve_blocks_the_late_reserve_with_409(
    client: httpx.AsyncClient, db: Database
) -> None:
    released = await client.post("/inventory/release", json={"order_id": "o-1"})
    late = await client.post("/inventory/reserve", json=RESERVE)

    assert released.status_code == 200 and released.json()["undone"] is False
    assert assert_error(late, 409)["error"] == "AlreadyCompensated"
    assert await stock(db, 1) == (10, 0)


async def test_get_stock_shows_available_and_reserved(client: httpx.AsyncClient) -> None:
    await client.post("/inventory/reserve", json=RESERVE)

    response = await client.get("/inventory/1")

    assert response.status_code == 200
    assert response.json() == {
        "book_id": 1,
        "title": "Release It!",
        "price": "1000.00",
        "available": 7,
        "reserved": 3,
    }


async def test_get_unknown_book_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/inventory/4242")

    assert assert_error(response, 404)["error"] == "BookNotFound"


@pytest.mark.parametrize(
    "book_id",
    ["0", "-1", str(2**31), str(2**63), str(10**30), "abc", "1.5", "1e3", "%00"],
)
async def test_bad_book_id_in_path_is_422_never_a_database_error(
    client: httpx.AsyncClient, book_id: str
) -> None:
    response = await client.get(f"/inventory/{book_id}")

    assert assert_error(response, 422)["error"] == "validation_error"


RESERVE_HOSTILE: list[tuple[str, bytes]] = [
    *GENERIC_HOSTILE,
    *((case, variant(RESERVE, "order_id", value)) for case, value in HOSTILE_ORDER_IDS),
    ("quantity_zero", variant(RESERVE, "items.0.quantity", 0)),
    ("quantity_negative", variant(RESERVE, "items.0.quantity", -1)),
    ("quantity_int32_overflow", variant(RESERVE, "items.0.quantity", 2**31)),
    ("quantity_string", variant(RESERVE, "items.0.quantity", "3")),
    ("quantity_fraction", variant(RESERVE, "items.0.quantity", 3.5)),
    ("quantity_null", variant(RESERVE, "items.0.quantity", None)),
    ("book_id_overflow", variant(RESERVE, "items.0.book_id", 2**31)),
    ("items_empty", variant(RESERVE, "items", [])),
    (
        "items_10000",
        variant(RESERVE, "items", [{"book_id": i, "quantity": 1} for i in range(1, 10_001)]),
    ),
    ("items_duplicate_book", variant(RESERVE, "items", [{"book_id": 1, "quantity": 1}] * 2)),
    ("unknown_field", variant(RESERVE, "force", True)),
    ("order_id_missing", variant(RESERVE, "order_id")),
]
RELEASE_HOSTILE: list[tuple[str, bytes]] = [
    *GENERIC_HOSTILE,
    *((case, variant({"order_id": "o-1"}, "order_id", value)) for case, value in HOSTILE_ORDER_IDS),
    ("unknown_field", variant({"order_id": "o-1"}, "all", True)),
    ("reason_nul", variant({"order_id": "o-1"}, "reason", "a\x00b")),
    ("reason_too_long", variant({"order_id": "o-1"}, "reason", "r" * 501)),
    ("order_id_missing", b"{}"),
]
CASES = [("/inventory/reserve", case, raw) for case, raw in RESERVE_HOSTILE] + [
    ("/inventory/release", case, raw) for case, raw in RELEASE_HOSTILE
]


@pytest.mark.parametrize(
    ("path", "case", "raw"), CASES, ids=[f"{path.split('/')[-1]}-{case}" for path, case, _ in CASES]
)
async def test_hostile_inventory_body_is_a_4xx_json_error_and_writes_nothing(
    client: httpx.AsyncClient, db: Database, path: str, case: str, raw: bytes
) -> None:
    await refused_without_writes(client, db, path, raw)


async def test_ten_megabyte_reserve_body_is_413(client: httpx.AsyncClient, db: Database) -> None:
    raw = variant(RESERVE, "order_id", "o" * 10_000_000)

    body = await refused_without_writes(client, db, "/inventory/reserve", raw, 413)

    assert body["error"] == "payload_too_large"


async def test_restock_adds_available_units_and_the_ledger_agrees(
    client: httpx.AsyncClient, db: Database
) -> None:
    response = await client.post("/inventory/2/restock", json={"quantity": 7})

    assert response.status_code == 200
    body = response.json()
    assert (body["book_id"], body["quantity"], body["available"], body["reserved"]) == (2, 7, 12, 0)
    assert body["request_id"].startswith("restock-")
    assert await stock(db, 2) == (12, 0)
    assert await ledger_violations(db) == []


async def test_restock_with_one_idempotency_key_takes_effect_once(
    client: httpx.AsyncClient, db: Database
) -> None:
    key = {"Idempotency-Key": "restock-a"}
    first = await client.post("/inventory/2/restock", json={"quantity": 7}, headers=key)
    again = await client.post("/inventory/2/restock", json={"quantity": 7}, headers=key)
    other = await client.post("/inventory/2/restock", json={"quantity": 8}, headers=key)
    unkeyed = await client.post("/inventory/2/restock", json={"quantity": 1})

    assert again.status_code == 200 and again.json() == first.json()
    assert_error(other, 422)
    assert unkeyed.status_code == 200
    assert await stock(db, 2) == (13, 0)
    assert await ledger_violations(db) == []


async def test_restock_of_an_unknown_book_is_404(client: httpx.AsyncClient, db: Database) -> None:
    assert_error(await client.post("/inventory/999/restock", json={"quantity": 1}), 404)


@pytest.mark.parametrize("body", [{"quantity": 0}, {"quantity": 10_001}, {"quantity": "3"}, {}])
async def test_restock_out_of_range_is_422_and_changes_nothing(
    client: httpx.AsyncClient, db: Database, body: dict[str, Any]
) -> None:
    assert_error(await client.post("/inventory/2/restock", json=body), 422)
    assert await stock(db, 2) == (5, 0)
