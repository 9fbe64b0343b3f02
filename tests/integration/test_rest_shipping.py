"""The shipping service's REST API on MariaDB: arrange, cancel, read; hostile input."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from domain_data import order, stock
from rest_support import (
    GENERIC_HOSTILE,
    HOSTILE_ORDER_IDS,
    VALID_ADDRESS,
    assert_error,
    refused_without_writes,
    rest_fixtures,
    running,
    settings_for,
    snapshot,
    variant,
)

from activities import Database, create_order, reserve_stock
from activities.tables import shipments
from contracts.commands import OrderItem, ReserveStock
from services.registry import build_service_app

pytestmark = pytest.mark.mysql

ARRANGE: dict[str, Any] = {"order_id": "o-1", "address": VALID_ADDRESS}


async def _seed(database: Database) -> None:
    await create_order(database, order("o-1", (1, 2)))
    await reserve_stock(
        database, ReserveStock(order_id="o-1", items=[OrderItem(book_id=1, quantity=2)])
    )


url, db, client = rest_fixtures("shipping", seed=_seed)


async def test_arrange_to_a_served_country_consumes_the_reserved_units(
    client: httpx.AsyncClient, db: Database
) -> None:
    response = await client.post("/shipping/arrange", json=ARRANGE)

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ARRANGED" and body["country"] == "JP"
    assert body["tracking_number"].startswith("CM")
    assert await stock(db, 1) == (8, 0)


async def test_arrange_outside_the_served_countries_is_422_shipping_failed(
    client: httpx.AsyncClient, db: Database
) -> None:
    response = await client.post(
        "/shipping/arrange", json={**ARRANGE, "address": {**VALID_ADDRESS, "country": "US"}}
    )

    error = assert_error(response, 422)
    assert error["error"] == "ShippingFailed"
    assert await stock(db, 1) == (8, 2)
    assert (await client.get("/shipping/o-1")).json()["status"] == "FAILED"


async def test_served_countries_come_from_the_settings(url: str, db: Database) -> None:
    app = build_service_app("shipping", settings_for(url, served_countries=("JP", "US")))
    async with running(app) as client:
        response = await client.post(
            "/shipping/arrange", json={**ARRANGE, "address": {**VALID_ADDRESS, "country": "us"}}
        )

    assert response.status_code == 200
    assert response.json()["status"] == "ARRANGED" and response.json()["country"] == "US"


async def test_arrange_for_unknown_order_is_404(client: httpx.AsyncClient, db: Database) -> None:
    before = await snapshot(db)

    response = await client.post("/shipping/arrange", json={**ARRANGE, "order_id": "ghost"})

    assert assert_error(response, 404)["error"] == "OrderNotFound"
    assert await snapshot(db) == before


async def test_cancel_returns_the_units_to_reserved_once(
    client: httpx.AsyncClient, db: Database
) -> None:
    await client.post("/shipping/arrange", json=ARRANGE)

    first = await client.post("/shipping/cancel", json={"order_id": "o-1"})
    again = await client.post("/shipping/cancel", json={"order_id": "o-1"})

    assert first.status_code == 200 and first.json()["undone"] is True
    assert again.status_code == 200
    assert await stock(db, 1) == (8, 2)
    assert (await client.get("/shipping/o-1")).json()["status"] == "CANCELLED"


async def test_cancel_before_arrange_blocks_the_late_arrangement_with_409(
    client: httpx.AsyncClient, db: Database
) -> None:
    cancelled = await client.post("/shipping/cancel", json={"order_id": "o-1"})
    late = await client.post("/shipping/arrange", json=ARRANGE)

    assert cancelled.json()["undone"] is False
    assert assert_error(late, 409)["error"] == "AlreadyCompensated"
    assert await stock(db, 1) == (8, 2)


async def test_get_shipment_of_an_order_without_one_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/shipping/o-1")

    assert assert_error(response, 404)["error"] == "NotFound"


async def test_bad_order_id_in_path_is_422(client: httpx.AsyncClient) -> None:
    response = await client.get("/shipping/bad;id")

    assert assert_error(response, 422)["error"] == "validation_error"


@pytest.mark.parametrize(
    "address",
    [
        {**VALID_ADDRESS, "name": "'); DROP TABLE shipments;--", "line1": '" OR 1=1 --'},
        {**VALID_ADDRESS, "name": "\u202eevil.exe", "line1": "🚚📦", "city": "大阪市"},
    ],
    ids=["sql", "unicode"],
)
async def test_odd_address_is_stored_verbatim(
    client: httpx.AsyncClient, db: Database, address: dict[str, Any]
) -> None:
    response = await client.post("/shipping/arrange", json={**ARRANGE, "address": address})

    assert response.status_code == 200
    async with db.engine.connect() as conn:
        stored = await conn.scalar(
            sa.select(shipments.c.address).where(shipments.c.order_id == "o-1")
        )
    assert json.loads(stored) == {"line2": None, **address}


ARRANGE_HOSTILE: list[tuple[str, bytes]] = [
    *GENERIC_HOSTILE,
    *((case, variant(ARRANGE, "order_id", value)) for case, value in HOSTILE_ORDER_IDS),
    ("address_missing", variant(ARRANGE, "address")),
    ("address_string", variant(ARRANGE, "address", "1-2-3 Shibuya, Tokyo")),
    *(
        (f"address_missing_{field}", variant(ARRANGE, f"address.{field}"))
        for field in ("name", "line1", "city", "postal_code", "country")
    ),
    ("address_name_nul", variant(ARRANGE, "address.name", "\x00")),
    ("address_postal_code_tab", variant(ARRANGE, "address.postal_code", "150\t0002")),
    ("address_country_empty", variant(ARRANGE, "address.country", "")),
    ("address_country_digits", variant(ARRANGE, "address.country", "12")),
    ("address_unknown_field", variant(ARRANGE, "address.floor", 3)),
    ("unknown_field", variant(ARRANGE, "express", True)),
]
CANCEL_HOSTILE: list[tuple[str, bytes]] = [
    *GENERIC_HOSTILE,
    *((case, variant({"order_id": "o-1"}, "order_id", value)) for case, value in HOSTILE_ORDER_IDS),
    ("unknown_field", variant({"order_id": "o-1"}, "force", True)),
]
CASES = [("/shipping/arrange", case, raw) for case, raw in ARRANGE_HOSTILE] + [
    ("/shipping/cancel", case, raw) for case, raw in CANCEL_HOSTILE
]


@pytest.mark.parametrize(
    ("path", "case", "raw"), CASES, ids=[f"{path.split('/')[-1]}-{case}" for path, case, _ in CASES]
)
async def test_hostile_shipping_body_is_a_4xx_json_error_and_writes_nothing(
    client: httpx.AsyncClient, db: Database, path: str, case: str, raw: bytes
) -> None:
    await client.post("/shipping/arrange", json=ARRANGE)  # something a bad cancel could undo
    await refused_without_writes(client, db, path, raw)
