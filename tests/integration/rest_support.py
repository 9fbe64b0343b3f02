"""Shared pieces of the REST tests: a service's fixtures, apps driven in-process, database
snapshots, error checks."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from activities import Database
from activities.tables import customers, inventory, metadata
from services._kit import Settings

VALID_ADDRESS = {
    "name": "Hanako",
    "line1": "1-2-3 Shibuya",
    "city": "Tokyo",
    "postal_code": "150-0002",
    "country": "JP",
}
# Words that would betray a traceback or a driver behind an error body.
LEAKS = ("Traceback", 'File "', "sqlalchemy", "aiomysql", "pymysql", "sqlite", "MariaDB", "mysql")


def settings_for(url: str | None, **overrides: Any) -> Settings:
    """Test settings: no .env, small pools, no broker (REST only); ``overrides`` as given."""
    values: dict[str, Any] = {
        "env": "test",
        "database_url": url,
        "rabbitmq_url": None,
        "db_pool_size": 2,
        "db_max_overflow": 2,
        "db_pool_timeout": 5.0,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app``'s lifespan and yield a client talking to it in-process."""
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://testserver"
        ) as client,
    ):
        yield client


def closed_port_url() -> str:
    """A MySQL URL on a local port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"mysql+aiomysql://root@127.0.0.1:{port}/nowhere"


async def snapshot(db: Database) -> dict[str, Any]:
    """Row counts of every domain table, plus stock and balances (to prove nothing changed)."""
    async with db.engine.connect() as conn:
        counts = {
            table.name: await conn.scalar(sa.select(sa.func.count()).select_from(table))
            for table in metadata.sorted_tables
        }
        stock = (await conn.execute(sa.select(inventory).order_by(inventory.c.book_id))).all()
        balances = (
            await conn.execute(
                sa.select(customers.c.customer_id, customers.c.balance).order_by(
                    customers.c.customer_id
                )
            )
        ).all()
    return {"counts": counts, "stock": [tuple(r) for r in stock], "balances": list(balances)}


def assert_error(response: httpx.Response, status: int | Callable[[int], bool]) -> dict[str, Any]:
    """The response is a JSON error body with ``status`` that leaks no traceback or driver."""
    ok = status(response.status_code) if callable(status) else response.status_code == status
    assert ok, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    text = json.dumps(body)
    for leak in LEAKS:
        assert leak.lower() not in text.lower(), (leak, text[:500])
    return body


def is_client_error(status: int) -> bool:
    return 400 <= status < 500


def json_request(method: str, body: bytes | str) -> dict[str, Any]:
    """kwargs for ``client.request`` sending ``body`` raw as JSON."""
    content = body.encode() if isinstance(body, str) else body
    return {"method": method, "content": content, "headers": {"content-type": "application/json"}}


async def refused_without_writes(
    client: httpx.AsyncClient,
    db: Database,
    path: str,
    raw: bytes,
    status: int | Callable[[int], bool] = is_client_error,
) -> dict[str, Any]:
    """POST ``raw`` to ``path``: a JSON error with ``status``, and every table as it was.

    Returns the error body.
    """
    before = await snapshot(db)
    response = await client.request(url=path, **json_request("POST", raw))
    body = assert_error(response, status)
    assert await snapshot(db) == before
    return body


@asynccontextmanager
async def prepared_database(url: str) -> AsyncIterator[Database]:
    """The schema, emptied and filled with tests/domain_data.py's catalogue."""
    from domain_data import clean

    from cloudmart.schema import create_schema

    database = Database.from_url(url, pool_size=2, max_overflow=2)
    try:
        await create_schema(database.engine)
        await clean(database)
        yield database
    finally:
        await database.dispose()


def rest_fixtures(
    service: str,
    *,
    seed: Callable[[Database], Awaitable[None]] | None = None,
    database: str | None = None,
) -> tuple[Any, Any, Any]:
    """The ``url``, ``db`` and ``client`` fixtures of a module testing ``service``'s REST API:

    ``url``: its MariaDB database (``cloudmart_test_rest_<service>`` unless ``database``),
    ``db``: that database with the schema, emptied, the catalogue loaded and ``seed`` run,
    for each test; ``client``: the service's app in-process on it. A module takes them with
    ``url, db, client = rest_fixtures("payment", seed=...)``.
    """

    @pytest.fixture(scope="module")
    def url() -> str:
        from conftest import mysql_database_url

        return mysql_database_url(database or f"cloudmart_test_rest_{service}")

    @pytest.fixture
    async def db(url: str) -> AsyncIterator[Database]:
        async with prepared_database(url) as prepared:
            if seed is not None:
                await seed(prepared)
            yield prepared

    @pytest.fixture
    async def client(url: str, db: Database) -> AsyncIterator[httpx.AsyncClient]:
        from services.registry import build_service_app

        async with running(build_service_app(service, settings_for(url))) as client:
            yield client

    return url, db, client


_MISSING: Any = object()


def variant(base: dict[str, Any], path: str, value: Any = _MISSING) -> bytes:
    """``base`` as JSON with the field at dotted ``path`` set to ``value`` (or removed).

    NaN and infinities are written raw (``NaN``), as a hostile client would send them.
    """
    data = json.loads(json.dumps(base))
    *parents, last = path.split(".")
    target: Any = data
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    key: Any = int(last) if isinstance(target, list) else last
    if value is _MISSING:
        del target[key]
    else:
        target[key] = value
    return json.dumps(data, allow_nan=True).encode()


# Bodies no endpoint accepts, whatever it expects.
GENERIC_HOSTILE: list[tuple[str, bytes]] = [
    ("malformed", b'{"order_id": "x",'),
    ("empty", b""),
    ("null", b"null"),
    ("list", b"[]"),
    ("string", b'"hello"'),
    ("not_utf8", b"\xff\xfe\x00{"),
    ("deeply_nested", b"[" * 5000 + b"]" * 5000),
    ("nan_literal", b'{"order_id": NaN}'),
]

# Hostile values for a body's order_id.
HOSTILE_ORDER_IDS: list[tuple[str, Any]] = [
    ("order_id_empty", ""),
    ("order_id_too_long", "a" * 65),
    ("order_id_sql", "x'); DROP TABLE orders;--"),
    ("order_id_nul", "ab\x00cd"),
    ("order_id_int", 123),
    ("order_id_null", None),
    ("order_id_unicode", "注文-1"),
]
