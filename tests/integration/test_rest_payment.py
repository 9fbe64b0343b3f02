"""The payment service's REST API on MariaDB: process, cancel, refund, read; hostile input."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest
from domain_data import balance, ledger_violations, order
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

PAY: dict[str, Any] = {"order_id": "o-1", "customer_id": 1, "amount": "2010.00"}


async def _seed(database: Database) -> None:
    await create_order(database, order("o-1", (1, 2), (3, 1)))
    await create_order(database, order("o-2", (1, 1), customer_id=2))


url, db, client = rest_fixtures("payment", seed=_seed)


async def test_process_debits_the_balance_and_records_a_completed_payment(
    client: httpx.AsyncClient, db: Database
) -> None:
    response = await client.post("/payments/process", json=PAY)

    assert response.status_code == 200
    assert response.json() == {**PAY, "status": "COMPLETED"}
    assert await balance(db, 1) == Decimal("7990.00")


async def test_process_accepts_a_json_number_amount(
    client: httpx.AsyncClient, db: Database
) -> None:
    response = await client.post("/payments/process", json={**PAY, "amount": 12.5})

    assert response.status_code == 200
    assert response.json()["amount"] == "12.5"
    assert await balance(db, 1) == Decimal("9987.50")


async def test_short_balance_is_402_and_leaves_the_balance(
    client: httpx.AsyncClient, db: Database
) -> None:
    response = await client.post(
        "/payments/process", json={"order_id": "o-2", "customer_id": 2, "amount": "1000.00"}
    )

    error = assert_error(response, 402)
    assert error["error"] == "PaymentFailed"
    assert await balance(db, 2) == Decimal("500.00")
    assert (await client.get("/payments/o-2")).json()["status"] == "FAILED"


async def test_process_for_unknown_order_is_404(client: httpx.AsyncClient, db: Database) -> None:
    before = await snapshot(db)

    response = await client.post("/payments/process", json={**PAY, "order_id": "ghost"})

    assert assert_error(response, 404)["error"] == "OrderNotFound"
    assert await snapshot(db) == before


async def test_process_for_unknown_customer_is_404(client: httpx.AsyncClient, db: Database) -> None:
    before = await snapshot(db)

    response = await client.post("/payments/process", json={**PAY, "customer_id": 42})

    assert assert_error(response, 404)["error"] == "CustomerNotFound"
    assert await snapshot(db) == before


@pytest.mark.parametrize(("path", "status"), [("cancel", "CANCELLED"), ("refund", "REFUNDED")])
async def test_cancel_and_refund_credit_the_amount_back_exactly_once(
    client: httpx.AsyncClient, db: Database, path: str, status: str
) -> None:
    await client.post("/payments/process", json=PAY)

    first = await client.post(f"/payments/{path}", json={"order_id": "o-1"})
    again = await client.post(f"/payments/{path}", json={"order_id": "o-1"})

    assert first.status_code == 200 and first.json()["undone"] is True
    assert first.json()["amount"] == "2010.00"
    assert again.status_code == 200
    assert await balance(db, 1) == Decimal("10000.00")
    assert (await client.get("/payments/o-1")).json()["status"] == status


async def test_cancel_before_process_blocks_the_late_payment_with_409(
    client: httpx.AsyncClient, db: Database
) -> None:
    cancelled = await client.post("/payments/cancel", json={"order_id": "o-1"})
    late = await client.post("/payments/process", json=PAY)

    assert cancelled.json()["undone"] is False
    assert assert_error(late, 409)["error"] == "AlreadyCompensated"
    assert await balance(db, 1) == Decimal("10000.00")


async def test_get_payment_returns_it(client: httpx.AsyncClient) -> None:
    await client.post("/payments/process", json=PAY)

    response = await client.get("/payments/o-1")

    assert response.status_code == 200
    assert response.json() == {**PAY, "status": "COMPLETED"}


async def test_get_payment_of_an_order_without_one_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/payments/o-1")

    assert assert_error(response, 404)["error"] == "NotFound"


async def test_bad_order_id_in_path_is_422(client: httpx.AsyncClient) -> None:
    response = await client.get("/payments/" + "x" * 65)

    assert assert_error(response, 422)["error"] == "validation_error"


PROCESS_HOSTILE: list[tuple[str, bytes]] = [
    *GENERIC_HOSTILE,
    *((case, variant(PAY, "order_id", value)) for case, value in HOSTILE_ORDER_IDS),
    ("amount_nan_literal", variant(PAY, "amount", float("nan"))),
    ("amount_infinity_literal", variant(PAY, "amount", float("inf"))),
    ("amount_minus_infinity_literal", variant(PAY, "amount", float("-inf"))),
    ("amount_nan_string", variant(PAY, "amount", "NaN")),
    ("amount_infinity_string", variant(PAY, "amount", "Infinity")),
    ("amount_negative", variant(PAY, "amount", "-1.00")),
    ("amount_three_decimals", variant(PAY, "amount", "1.001")),
    ("amount_too_many_digits", variant(PAY, "amount", "1" * 30)),
    ("amount_huge_exponent", variant(PAY, "amount", "1e400")),
    ("amount_word", variant(PAY, "amount", "ten")),
    ("amount_null", variant(PAY, "amount", None)),
    ("amount_missing", variant(PAY, "amount")),
    ("amount_object", variant(PAY, "amount", {"value": 1})),
    ("customer_id_zero", variant(PAY, "customer_id", 0)),
    ("customer_id_overflow", variant(PAY, "customer_id", 2**31)),
    ("customer_id_string", variant(PAY, "customer_id", "1")),
    ("customer_id_fraction", variant(PAY, "customer_id", 1.5)),
    ("unknown_field", variant(PAY, "currency", "JPY")),
]
REF_HOSTILE: list[tuple[str, bytes]] = [
    *GENERIC_HOSTILE,
    *((case, variant({"order_id": "o-1"}, "order_id", value)) for case, value in HOSTILE_ORDER_IDS),
    ("unknown_field", variant({"order_id": "o-1"}, "amount", "5")),
    ("reason_nul", variant({"order_id": "o-1"}, "reason", "\x00")),
]
CASES = (
    [("/payments/process", case, raw) for case, raw in PROCESS_HOSTILE]
    + [("/payments/cancel", case, raw) for case, raw in REF_HOSTILE]
    + [("/payments/refund", case, raw) for case, raw in REF_HOSTILE]
)


@pytest.mark.parametrize(
    ("path", "case", "raw"), CASES, ids=[f"{path.split('/')[-1]}-{case}" for path, case, _ in CASES]
)
async def test_hostile_payment_body_is_a_4xx_json_error_and_writes_nothing(
    client: httpx.AsyncClient, db: Database, path: str, case: str, raw: bytes
) -> None:
    await client.post("/payments/process", json=PAY)  # something a bad refund could undo
    await refused_without_writes(client, db, path, raw)


async def test_top_up_adds_to_the_balance_and_the_ledger_agrees(
    client: httpx.AsyncClient, db: Database
) -> None:
    response = await client.post("/payments/top-up", json={"customer_id": 2, "amount": "12.50"})

    assert response.status_code == 200
    body = response.json()
    assert (body["customer_id"], body["amount"], body["balance"]) == (2, "12.50", "512.50")
    assert await balance(db, 2) == Decimal("512.50")
    assert await ledger_violations(db) == []


async def test_top_up_with_one_idempotency_key_takes_effect_once(
    client: httpx.AsyncClient, db: Database
) -> None:
    key = {"Idempotency-Key": "top-up-a"}
    body = {"customer_id": 2, "amount": "12.50"}
    first = await client.post("/payments/top-up", json=body, headers=key)
    again = await client.post("/payments/top-up", json=body, headers=key)
    other = await client.post("/payments/top-up", json={**body, "amount": "1.00"}, headers=key)

    assert again.status_code == 200 and again.json() == first.json()
    assert_error(other, 422)
    assert await balance(db, 2) == Decimal("512.50")
    assert await ledger_violations(db) == []


async def test_top_up_of_an_unknown_customer_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/payments/top-up", json={"customer_id": 999, "amount": "1.00"})
    assert_error(response, 404)


@pytest.mark.parametrize(
    "amount", ["0", "0.00", "-1.00", "1.005", "1000000.01", "NaN", "Infinity", None]
)
async def test_top_up_of_a_bad_amount_is_422_and_changes_nothing(
    client: httpx.AsyncClient, db: Database, amount: object
) -> None:
    response = await client.post("/payments/top-up", json={"customer_id": 2, "amount": amount})
    assert_error(response, 422)
    assert await balance(db, 2) == Decimal("500.00")
