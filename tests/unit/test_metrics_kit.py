"""What every process's /metrics shows besides HTTP latencies, and the order id on its log lines:
probes that fail never fail the scrape, commands counted by outcome, inbox repeats counted."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from asgi_lifespan import LifespanManager
from domain_data import clean, order
from fastapi import APIRouter, FastAPI
from metrics_samples import scrape
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from pydantic import BaseModel

import services._kit.logging as kit_logging
from activities import Database, create_order
from activities.errors import StockUnavailable
from cloudmart.schema import create_schema
from services._kit import Settings, create_app
from services._kit.metrics import Telemetry, gauge


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database.from_url(f"sqlite+aiosqlite:///{tmp_path}/metrics.db")
    await create_schema(database.engine)
    await clean(database)
    yield database
    await database.dispose()


def app_on(db: Database, tmp_path: Path, *routers: APIRouter, log_json: bool = False) -> FastAPI:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=f"sqlite+aiosqlite:///{tmp_path}/metrics.db",
        log_json=log_json,
    )
    return create_app("test", settings, *routers, database=db)


@asynccontextmanager
async def client_of(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://t"
        ) as client,
    ):
        yield client


async def test_a_failing_or_hanging_probe_reports_nothing_and_counts_a_scrape_error(
    db: Database, tmp_path: Path
) -> None:
    app = app_on(db, tmp_path)
    telemetry: Telemetry = app.state.telemetry
    telemetry.probe_timeout = 0.05
    never = asyncio.Event()

    async def good() -> list[Metric]:
        return [gauge("cloudmart_dlq_depth", "test", {"q.dead": 3}, "queue")]

    async def broken() -> list[Metric]:
        raise ConnectionError("broker away")

    async def hanging() -> list[Metric]:
        await never.wait()
        return [gauge("cloudmart_consumer_lag", "test", {"g": 1}, "group")]

    telemetry.add_probe("good", good)
    telemetry.add_probe("broken", broken)
    telemetry.add_probe("hanging", hanging)

    async with client_of(app) as client:
        first = await scrape(client)
        second = await scrape(client)

    assert first[("cloudmart_dlq_depth", (("queue", "q.dead"),))] == 3
    assert first[("cloudmart_scrape_errors_total", (("probe", "broken"),))] == 1
    assert first[("cloudmart_scrape_errors_total", (("probe", "hanging"),))] == 1
    assert not any(name == "cloudmart_consumer_lag" for name, _ in first)
    assert second[("cloudmart_scrape_errors_total", (("probe", "broken"),))] == 2
    assert ("cloudmart_scrape_errors_total", (("probe", "good"),)) not in second


async def test_commands_are_counted_by_method_and_outcome() -> None:
    telemetry = Telemetry(CollectorRegistry())

    async def handler(method: str, payload: dict[str, Any], headers: dict[str, str]) -> Any:
        if payload.get("refuse"):
            raise StockUnavailable("no stock")
        if payload.get("away"):
            raise ConnectionError("database away")
        if payload.get("crash"):
            raise RuntimeError("a bug")
        return {"ok": True}

    counted = telemetry.count_commands(handler)
    await counted("reserve_stock", {}, {})
    await counted("reserve_stock", {}, {})
    with pytest.raises(StockUnavailable):
        await counted("reserve_stock", {"refuse": True}, {})
    with pytest.raises(ConnectionError):
        await counted("release_stock", {"away": True}, {})
    with pytest.raises(RuntimeError):
        await counted("release_stock", {"crash": True}, {})

    def value(method: str, outcome: str) -> float:
        labels = {"method": method, "outcome": outcome}
        return telemetry.registry.get_sample_value("cloudmart_commands_total", labels) or 0.0

    assert value("reserve_stock", "ok") == 2
    assert value("reserve_stock", "refused") == 1
    assert value("release_stock", "unavailable") == 1  # an infrastructure fault, waited out
    assert value("release_stock", "failed") == 1
    assert value("release_stock", "ok") == 0


async def test_a_repeat_answered_from_the_inbox_is_counted_per_operation(
    db: Database, tmp_path: Path
) -> None:
    app = app_on(db, tmp_path)
    await create_order(db, order("o-dup", (1, 1)))
    async with client_of(app) as client:
        before = await scrape(client)
        await create_order(db, order("o-dup", (1, 1)))
        await create_order(db, order("o-dup", (1, 1)))
        after = await scrape(client)

    key = ("cloudmart_inbox_duplicates_total", (("operation", "create_order"),))
    assert key not in before
    assert after[key] == 2


@pytest.fixture
def fresh_logging() -> Iterator[None]:
    """Let the test reconfigure logging; the next app built reconfigures it back."""
    kit_logging._configured_as = None
    yield
    kit_logging._configured_as = None


def capture_json_lines() -> tuple[io.StringIO, logging.StreamHandler[Any], Any]:
    (handler,) = [h for h in logging.getLogger().handlers if getattr(h, "_cloudmart", False)]
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    return stream, handler, handler.setStream(stream)


class Ref(BaseModel):
    order_id: str


async def test_the_log_lines_of_a_request_carry_the_order_id_of_its_path_or_body(
    db: Database, tmp_path: Path, fresh_logging: None
) -> None:
    router = APIRouter()

    @router.get("/things/{order_id}")
    async def read(order_id: str) -> dict[str, str]:
        structlog.get_logger("test.route").info("route.read")
        return {"order_id": order_id}

    @router.post("/things/cancel")
    async def cancel(ref: Ref) -> dict[str, str]:
        structlog.get_logger("test.route").info("route.cancel")
        return {"order_id": ref.order_id}

    @router.get("/plain")
    async def plain() -> dict[str, str]:
        structlog.get_logger("test.route").info("route.plain")
        return {}

    app = app_on(db, tmp_path, router, log_json=True)
    stream, handler, previous = capture_json_lines()
    try:
        async with client_of(app) as client:
            assert (await client.get("/things/o-path")).status_code == 200
            cancelled = await client.post("/things/cancel", json={"order_id": "o-body"})
            assert cancelled.status_code == 200
            assert (await client.get("/plain")).status_code == 200
    finally:
        handler.setStream(previous)

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    by_event = {(line["event"], line.get("path")): line for line in lines}
    assert by_event[("route.read", None)]["order_id"] == "o-path"
    assert by_event[("http.request", "/things/o-path")]["order_id"] == "o-path"
    assert by_event[("route.cancel", None)]["order_id"] == "o-body"
    assert by_event[("http.request", "/things/cancel")]["order_id"] == "o-body"
    assert "order_id" not in by_event[("route.plain", None)]
    assert "order_id" not in by_event[("http.request", "/plain")]
    assert "order_id" not in structlog.contextvars.get_contextvars()
