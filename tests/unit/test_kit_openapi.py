"""What the kit answers on every route, told by the app and by its OpenAPI document: a 405 with
``Allow`` for a method the path does not declare (even where a templated route would match the
path), and the kit's errors, with its error body, on every operation."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, Field

from activities.errors import BookNotFound, IdempotencyKeyReused
from services._kit import BookIdPath, Settings, create_app, error_responses

router = APIRouter(prefix="/things")


class Thing(BaseModel):
    name: str
    count: Annotated[int, Field(ge=1, le=10)] = 1


# A static path beside a templated one, as /inventory/reserve sits beside /inventory/{book_id}.
@router.post("/reserve", responses=error_responses(IdempotencyKeyReused))
async def reserve(body: Thing) -> Thing:
    return body


@router.get("/{book_id}", responses=error_responses(BookNotFound))
async def read(book_id: BookIdPath) -> int:
    return book_id


# Declared after the templated route, yet its path is still its own.
@router.post("/later")
async def later(body: Thing) -> Thing:
    return body


@router.put("/{book_id}/cancel")
async def cancel(book_id: BookIdPath) -> int:
    return book_id


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "database_url": f"sqlite+aiosqlite:///{tmp_path}/kit.db",
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def app_for(tmp_path: Path, **overrides: Any) -> FastAPI:
    return create_app("test", settings_for(tmp_path, **overrides), router)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        LifespanManager(app_for(tmp_path)) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://t"
        ) as client,
    ):
        yield client


# 405 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        # The templated GET route would match these paths; the static one owns them.
        ("GET", "/things/reserve", "POST"),
        ("HEAD", "/things/reserve", "POST"),
        ("GET", "/things/later", "POST"),
        ("DELETE", "/things/7", "GET"),
        ("POST", "/things/7/cancel", "PUT"),
        ("OPTIONS", "/things/7", "GET"),
        ("PATCH", "/health", "GET"),
    ],
)
async def test_an_undeclared_method_is_405_with_allow_and_the_kits_json_body(
    client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    response = await client.request(method, path, json={"name": "x"})

    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.headers["content-type"].startswith("application/json")
    if method != "HEAD":
        body = response.json()
        assert body["error"] == "method_not_allowed"
        assert body["details"] == {"allowed": allow.split(", ")}


async def test_a_declared_method_still_reaches_its_route(client: httpx.AsyncClient) -> None:
    reserved = await client.post("/things/reserve", json={"name": "x"})
    later = await client.post("/things/later", json={"name": "y"})
    read = await client.get("/things/7")
    bad_id = await client.get("/things/seven")

    assert reserved.status_code == 200 and reserved.json() == {"name": "x", "count": 1}
    assert later.status_code == 200 and later.json() == {"name": "y", "count": 1}
    assert read.status_code == 200 and read.json() == 7
    assert bad_id.status_code == 422  # a templated path still validates its parameter


async def test_an_unknown_path_is_still_404(client: httpx.AsyncClient) -> None:
    response = await client.delete("/nowhere")

    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert "allow" not in response.headers


# The OpenAPI document -----------------------------------------------------------------------


def operations(schema: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    }


def error_body(response: dict[str, Any]) -> bool:
    return bool(
        response["content"]["application/json"]["schema"]
        == {"$ref": "#/components/schemas/ErrorBody"}
    )


def test_every_operation_declares_the_kits_errors_as_the_error_body(tmp_path: Path) -> None:
    schema = app_for(tmp_path).openapi()

    for key, operation in operations(schema).items():
        responses = operation["responses"]
        for status in ("400", "413", "500"):
            assert error_body(responses[status]), (key, status)
        if key != ("GET", "/health"):  # /health answers 503 with its own body
            assert error_body(responses["503"]), key
            assert "Retry-After" in responses["503"]["headers"]


def test_every_operation_with_input_declares_422_as_the_error_body(tmp_path: Path) -> None:
    schema = app_for(tmp_path).openapi()

    with_input = {
        key for key, op in operations(schema).items() if op.get("parameters") or "requestBody" in op
    }
    assert with_input >= {("POST", "/things/reserve"), ("GET", "/things/{book_id}")}
    for key in with_input:
        assert error_body(operations(schema)[key]["responses"]["422"]), key
    assert "422" not in operations(schema)[("GET", "/health")]["responses"]
    # FastAPI's own validation-error shape is not what the kit answers.
    assert "HTTPValidationError" not in json.dumps(schema)


def test_a_routes_own_responses_stand_beside_the_kits(tmp_path: Path) -> None:
    ops = operations(app_for(tmp_path).openapi())

    assert ops[("GET", "/things/{book_id}")]["responses"]["404"]["description"] == "BookNotFound"
    reserve_422 = ops[("POST", "/things/reserve")]["responses"]["422"]["description"]
    assert "validation_error" in reserve_422 and "IdempotencyKeyReused" in reserve_422
    assert "HealthView" in json.dumps(ops[("GET", "/health")]["responses"]["503"])


def test_the_bearer_token_is_declared_on_every_operation_but_the_open_ones_in_prod_only(
    tmp_path: Path,
) -> None:
    dev = operations(app_for(tmp_path).openapi())
    prod_schema = app_for(tmp_path, env="prod", api_key="k").openapi()
    prod = operations(prod_schema)

    assert all("401" not in op["responses"] for op in dev.values())
    assert error_body(prod[("POST", "/things/reserve")]["responses"]["401"])
    assert error_body(prod[("PUT", "/things/{book_id}/cancel")]["responses"]["401"])
    assert prod[("POST", "/things/reserve")]["security"] == [{"bearer": []}]
    assert prod_schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert prod[("GET", "/things/{book_id}")]["security"] == [{"bearer": []}]
    assert "security" not in prod[("GET", "/health")]
    assert "401" not in prod[("GET", "/health")]["responses"]


def test_integer_bounds_are_written_as_integers(tmp_path: Path) -> None:
    schema = app_for(tmp_path).openapi()

    (book_id,) = operations(schema)[("GET", "/things/{book_id}")]["parameters"]
    count = schema["components"]["schemas"]["Thing"]["properties"]["count"]
    for bounded, expected in ((book_id["schema"], (1, 2**31 - 1)), (count, (1, 10))):
        bounds = (bounded["minimum"], bounded["maximum"])
        assert bounds == expected and all(type(bound) is int for bound in bounds), bounded
