"""Every process of a real choreographed deployment (MariaDB, Redis Streams) serves its own
/metrics — outbox lag, consumer backlog, dead letters — and every event and log line about an
order carries its id."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from choreography_support import SERVICES, finished, start
from conftest import TEST_REDIS_URL, until
from metrics_samples import Samples, scrape
from processes import Deployment, deployed
from shop import US, Shop, order, sync_engine

from choreography_pattern.redis_bus import RedisEventBus
from choreography_pattern.redis_entries import dead_letter_key

pytestmark = [pytest.mark.mysql, pytest.mark.redis, pytest.mark.slow]

NAMESPACE = "metrics-chor"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployed(
        "choreography",
        "cloudmart_test_metrics_chor",
        tmp_path_factory.mktemp("metrics-chor"),
        base_port=28200,
        namespace=NAMESPACE,
        CLOUDMART_EVENT_CLAIM_IDLE="1",
        CLOUDMART_LOG_JSON="true",
    ) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def orders(deployment: Deployment) -> dict[str, str]:
    """Two orders that complete and one that fails at shipping (country US), run to the end."""
    engine = sync_engine(deployment.database_url)
    try:
        return asyncio.run(_run_orders(deployment, Shop(engine, pattern="choreography")))
    finally:
        engine.dispose()


async def _run_orders(deployment: Deployment, shop: Shop) -> dict[str, str]:
    book, customer = shop.book("100.00", 10), shop.customer("1000.00")
    bodies = {
        "ok-1": order(customer, (book, 1)),
        "ok-2": order(customer, (book, 2)),
        "us": order(customer, (book, 1), address=US),
    }
    async with httpx.AsyncClient(base_url=deployment.url("order"), timeout=30) as api:
        ids = {label: await start(api, body) for label, body in bodies.items()}
        statuses = {label: (await finished(api, oid))["status"] for label, oid in ids.items()}
    assert statuses == {"ok-1": "COMPLETED", "ok-2": "COMPLETED", "us": "CANCELLED"}
    return ids


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as http:
        yield http


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def test_each_service_reports_its_outbox_and_its_group_backlog(
    deployment: Deployment, orders: dict[str, str], client: httpx.AsyncClient
) -> None:
    for service in SERVICES:

        async def drained(service: str = service) -> Samples | None:
            samples = await scrape(client, deployment.url(service))
            idle = (
                value(samples, "cloudmart_outbox_unpublished") == 0
                and value(samples, "cloudmart_consumer_pending", group=service) == 0
                and value(samples, "cloudmart_consumer_lag", group=service) == 0
            )
            return samples if idle else None

        samples = await until(drained, timeout=30)
        assert value(samples, "cloudmart_outbox_lag_seconds") == 0
        dead = dead_letter_key(NAMESPACE, service)
        assert value(samples, "cloudmart_dlq_depth", queue=dead) == 0
        assert value(samples, "cloudmart_events_handled_total", service=service)
        # each process reports its own group only
        others = [s for s in SERVICES if s != service]
        assert all(value(samples, "cloudmart_consumer_pending", group=o) is None for o in others)
        assert not any(key[0] == "cloudmart_scrape_errors_total" for key in samples)


async def test_a_malformed_event_shows_in_every_groups_dead_letter_depth(
    deployment: Deployment, orders: dict[str, str], client: httpx.AsyncClient
) -> None:
    bus = RedisEventBus.from_url(TEST_REDIS_URL, NAMESPACE)
    try:
        await bus.publish_fields({"type": "NoSuchEvent", "order_id": "o-poison"})
    finally:
        await bus.aclose()

    for service in SERVICES:
        dead = dead_letter_key(NAMESPACE, service)

        async def dead_lettered(service: str = service, dead: str = dead) -> bool:
            samples = await scrape(client, deployment.url(service))
            return value(samples, "cloudmart_dlq_depth", queue=dead) == 1

        await until(dead_lettered, timeout=15)


async def test_every_event_carries_its_order_id(
    deployment: Deployment, orders: dict[str, str]
) -> None:
    bus = RedisEventBus.from_url(TEST_REDIS_URL, NAMESPACE)
    try:
        entries = await bus.client.xrange(bus.stream)
    finally:
        await bus.aclose()
    fields = [{k.decode(): v.decode() for k, v in raw.items()} for _, raw in entries]
    ours = [f for f in fields if f.get("type") != "NoSuchEvent"]
    assert {f["order_id"] for f in ours} == set(orders.values())


def log_lines(deployment: Deployment, name: str) -> list[dict[str, Any]]:
    path = deployment.directory / f"{name}.log"
    text = path.read_text(errors="replace")
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


async def test_the_log_lines_of_event_handling_carry_the_order_id(
    deployment: Deployment, orders: dict[str, str]
) -> None:
    oid = orders["us"]
    shipping = log_lines(deployment, "shipping")
    (refused,) = [line for line in shipping if line["event"] == "event.operation_refused"]
    # bound by the consumer around the handler (the log call names none of these)
    assert refused["order_id"] == oid
    assert refused["event_type"] in ("StockReserved", "PaymentCompleted")
    assert refused["event_id"]
    order_lines = log_lines(deployment, "order")
    started = [line for line in order_lines if line.get("path") == "/orders"]
    assert {line.get("order_id") for line in started} == set(orders.values())
