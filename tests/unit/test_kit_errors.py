"""The kit's error mapping: every failure is one JSON shape, and nothing internal leaks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel
from sqlalchemy import exc as sa_exc

from activities.errors import DomainError, PaymentFailed, ShippingFailed, StockUnavailable
from engine.errors import StoreUnavailable
from services._kit import Settings, create_app, error_responses
from services._kit.errors import MAX_REPORTED_ERRORS, is_database_unavailable

router = APIRouter()


class Body(BaseModel):
    amount: Decimal
    count: int


@router.get("/boom")
async def boom() -> None:
    raise RuntimeError("secret internals: password=hunter2")


@router.get("/db-down")
async def db_down() -> None:
    raise sa_exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("aiomysql refused"))


@router.get("/pool-timeout")
async def pool_timeout() -> None:
    raise sa_exc.TimeoutError("QueuePool limit of size 2 overflow 2 reached")


@router.get("/integrity")
async def integrity() -> None:
    raise sa_exc.IntegrityError("INSERT", {}, Exception("Duplicate entry for key PRIMARY"))


@router.get("/refused")
async def refused() -> None:
    raise StockUnavailable(
        "book 2: 6 wanted, 5 available", book_id=2, price=Decimal("1.50"), raw=b"\x00\xff"
    )


@router.post("/body")
async def body(payload: Body) -> Body:
    return payload


@router.post("/items")
async def items(payload: list[Body]) -> int:
    return len(payload)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, env="test", database_url=f"sqlite+aiosqlite:///{tmp_path}/kit.db"
    )
    app: FastAPI = create_app("test", settings, router)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://t"
        ) as client,
    ):
        yield client


async def test_unexpected_exception_is_a_bare_500_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/boom")

    assert response.status_code == 500
    assert response.json() == {"error": "internal", "message": "internal server error"}
    assert "x-request-id" in response.headers


@pytest.mark.parametrize("path", ["/db-down", "/pool-timeout"])
async def test_database_outage_is_503_json_without_driver_text(
    client: httpx.AsyncClient, path: str
) -> None:
    response = await client.get(path)

    assert response.status_code == 503
    assert response.json()["error"] == "unavailable"
    assert "aiomysql" not in response.text and "QueuePool" not in response.text


async def test_integrity_error_is_a_bug_so_500_not_503(client: httpx.AsyncClient) -> None:
    response = await client.get("/integrity")

    assert response.status_code == 500
    assert "Duplicate" not in response.text


async def test_domain_error_maps_to_its_status_code_and_json_safe_details(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/refused")

    assert response.status_code == 409
    assert response.json() == {
        "error": "StockUnavailable",
        "message": "book 2: 6 wanted, 5 available",
        "details": {"book_id": 2, "price": "1.50", "raw": "b'\\x00\\xff'"},
    }


@pytest.mark.parametrize(
    "raw",
    [
        b'{"amount": NaN, "count": 1}',
        b'{"amount": "Infinity", "count": 1}',
        b'{"amount": -Infinity, "count": 1}',
        b'{"amount": 1, "count": NaN}',
    ],
)
async def test_nan_and_infinity_are_422_with_a_json_body(
    client: httpx.AsyncClient, raw: bytes
) -> None:
    response = await client.post("/body", content=raw, headers={"content-type": "application/json"})

    assert response.status_code in (400, 422)
    assert response.json()["error"] in {"validation_error", "malformed_json"}


async def test_validation_errors_are_capped(client: httpx.AsyncClient) -> None:
    response = await client.post("/items", json=[{"amount": "x"}] * 500)

    body = response.json()
    assert response.status_code == 422
    assert len(body["details"]["errors"]) == MAX_REPORTED_ERRORS
    assert body["details"]["error_count"] == 1000


@pytest.mark.parametrize(
    ("method", "path", "status", "error"),
    [("GET", "/nowhere", 404, "not_found"), ("DELETE", "/boom", 405, "method_not_allowed")],
)
async def test_routing_errors_use_the_same_shape(
    client: httpx.AsyncClient, method: str, path: str, status: int, error: str
) -> None:
    response = await client.request(method, path)

    assert response.status_code == status
    assert response.json()["error"] == error


async def test_unparseable_body_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/body", content=b"\xff\xfe\xfd", headers={"content-type": "application/json"}
    )

    assert response.status_code == 400
    assert set(response.json()) == {"error", "message", "details"}


def test_error_responses_groups_domain_errors_by_status() -> None:
    responses = error_responses(StockUnavailable, PaymentFailed, ShippingFailed)

    assert sorted(responses) == [402, 409, 422]
    assert responses[409]["description"] == "StockUnavailable"


@pytest.mark.parametrize(
    ("exc", "unavailable"),
    [
        (sa_exc.OperationalError("x", {}, Exception()), True),
        (sa_exc.InterfaceError("x", {}, Exception()), True),
        (sa_exc.TimeoutError(), True),
        (sa_exc.DBAPIError("x", {}, Exception()), True),
        (sa_exc.DBAPIError("x", {}, Exception(), connection_invalidated=True), True),
        (sa_exc.IntegrityError("x", {}, Exception()), False),
        (sa_exc.DataError("x", {}, Exception()), False),
        (ConnectionRefusedError(), True),
        (ValueError(), False),
        (DomainError("no"), False),
    ],
)
def test_is_database_unavailable(exc: BaseException, unavailable: bool) -> None:
    assert is_database_unavailable(exc) is unavailable


def _caused_by(error: Exception, cause: BaseException) -> Exception:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("exc", "unavailable"),
    [
        # the engine's history store wraps the driver's error (StoreUnavailable)
        (_caused_by(StoreUnavailable("x"), sa_exc.OperationalError("x", {}, Exception())), True),
        (_caused_by(StoreUnavailable("x"), sa_exc.ProgrammingError("x", {}, Exception())), False),
        (_caused_by(RuntimeError("x"), _caused_by(ValueError(), ConnectionRefusedError())), True),
    ],
)
def test_a_database_outage_wrapped_as_a_cause_is_unavailable(
    exc: BaseException, unavailable: bool
) -> None:
    assert is_database_unavailable(exc) is unavailable
