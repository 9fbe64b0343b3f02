"""Orchestrated end to end: five real processes on MariaDB and RabbitMQ, driven through the
orchestrator's REST API, and SPEC §6's guarantees checked by SQL after each. The seed's
scenarios come from :mod:`seed_scenarios`; what follows them is the orchestrator's own (cancel,
idempotent starts, lookups, dead letters, a killed orchestrator)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal

import aio_pika
import httpx
import pytest
from conftest import TEST_RABBITMQ_URL, until
from processes import Deployment, deployed
from rabbitmq_support import message_count
from seed_scenarios import ORCHESTRATION, SeedScenarios
from seed_scenarios import saga_finished as finished
from seed_scenarios import saga_start as start
from shop import Shop, order

from engine.adapters import amqp_names

pytestmark = [pytest.mark.mysql, pytest.mark.rabbitmq, pytest.mark.slow]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployed(
        "orchestration",
        "cloudmart_test_orchestration",
        tmp_path_factory.mktemp("orchestration"),
        base_port=18100,
        CLOUDMART_REQUEST_TIMEOUT="5",
        CLOUDMART_LEASE_SECONDS="3",
    ) as deployment:
        yield deployment


class TestSeedScenarios(SeedScenarios):
    style = ORCHESTRATION


# a cancel ----------------------------------------------------------------------------------


async def test_cancel_mid_way_compensates_every_step_that_ran(
    api: httpx.AsyncClient, shop: Shop, deployment: Deployment
) -> None:
    book, customer = shop.book("100.00", 5), shop.customer("1000.00")
    deployment.pause("shipping")  # arrange_shipping waits in its queue
    try:
        oid = await start(api, order(customer, (book, 1)))
        await until(
            lambda: _status_is(api, oid, "PAYMENT_COMPLETED"),
            timeout=20,
        )
        cancelled = await api.post(f"/saga/{oid}/cancel")
        assert cancelled.status_code == 202, cancelled.text
    finally:
        deployment.resume("shipping")
    saga = await finished(api, oid)
    assert saga["status"] == "FAILED"
    assert "cancel" in saga["failure_reason"].lower()
    assert shop.stock_of(book) == (5, 0)
    assert shop.balance_of(customer) == Decimal("1000.00")
    shop.check([oid])


async def _status_is(api: httpx.AsyncClient, oid: str, status: str) -> bool:
    return bool((await api.get(f"/saga/{oid}/status")).json()["status"] == status)


# the API's contract ------------------------------------------------------------------------


async def test_idempotency_key_returns_the_same_saga_and_refuses_another_body(
    api: httpx.AsyncClient, shop: Shop
) -> None:
    book, customer = shop.book("10.00", 10), shop.customer("1000.00")
    key = f"key-{uuid.uuid4()}"
    first = await api.post(
        "/saga/start", json=order(customer, (book, 1)), headers={"Idempotency-Key": key}
    )
    again = await api.post(
        "/saga/start", json=order(customer, (book, 1)), headers={"Idempotency-Key": key}
    )
    other = await api.post(
        "/saga/start", json=order(customer, (book, 2)), headers={"Idempotency-Key": key}
    )
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["order_id"] == first.json()["order_id"]
    assert other.status_code == 422 and other.json()["error"] == "IdempotencyKeyReused"
    await finished(api, first.json()["order_id"])
    assert shop.stock_of(book) == (9, 0)


async def test_concurrent_starts_with_one_key_create_one_saga(
    api: httpx.AsyncClient, shop: Shop
) -> None:
    book, customer = shop.book("10.00", 10), shop.customer("1000.00")
    headers = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    responses = await asyncio.gather(
        *(
            api.post("/saga/start", json=order(customer, (book, 1)), headers=headers)
            for _ in range(10)
        )
    )
    assert {r.status_code for r in responses} <= {200, 202, 409}
    assert len({r.json()["order_id"] for r in responses if r.status_code in (200, 202)}) == 1
    await finished(
        api, next(r.json()["order_id"] for r in responses if r.status_code in (200, 202))
    )
    assert shop.stock_of(book) == (9, 0)


async def test_cancel_of_unknown_or_finished_sagas(api: httpx.AsyncClient, shop: Shop) -> None:
    book, customer = shop.book("10.00", 10), shop.customer("1000.00")
    assert (await api.post("/saga/no-such-order/cancel")).status_code == 404
    assert (await api.get("/saga/no-such-order/status")).status_code == 404
    oid = await start(api, order(customer, (book, 1)))
    await finished(api, oid)
    refused = await api.post(f"/saga/{oid}/cancel")
    assert refused.status_code == 409 and refused.json()["error"] == "SagaFinished"


async def test_unknown_customer_or_book_is_404_and_starts_nothing(
    api: httpx.AsyncClient, shop: Shop
) -> None:
    book = shop.book("10.00", 10)
    assert (await api.post("/saga/start", json=order(999_999, (book, 1)))).status_code == 404
    customer = shop.customer("10.00")
    assert (await api.post("/saga/start", json=order(customer, (999_999, 1)))).status_code == 404


async def test_saga_list_filters_by_status(api: httpx.AsyncClient, shop: Shop) -> None:
    book, customer = shop.book("10.00", 0), shop.customer("10.00")
    oid = await start(api, order(customer, (book, 1)))
    await finished(api, oid)
    page = (await api.get("/saga", params={"status": "FAILED", "limit": 500})).json()["sagas"]
    assert oid in {s["order_id"] for s in page}
    assert {s["status"] for s in page} == {"FAILED"}


async def test_poison_command_is_dead_lettered_while_sagas_proceed(
    api: httpx.AsyncClient, shop: Shop, deployment: Deployment
) -> None:
    connection = await aio_pika.connect(TEST_RABBITMQ_URL)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(amqp_names.commands_exchange(deployment.namespace))
        await exchange.publish(
            aio_pika.Message(b"\x00not json{", headers={"method": "reserve_stock"}),
            routing_key="inventory",
        )
        await exchange.publish(
            aio_pika.Message(
                json.dumps({"order_id": "x"}).encode(), headers={"method": "steal_stock"}
            ),
            routing_key="inventory",
        )
    dead = amqp_names.dead_letter_queue(deployment.namespace, "inventory")
    await until(lambda: _at_least(dead, 1), timeout=20)
    book, customer = shop.book("10.00", 10), shop.customer("1000.00")
    oid = await start(api, order(customer, (book, 1)))
    assert (await finished(api, oid))["status"] == "COMPLETED"


async def _at_least(queue: str, count: int) -> bool:
    return await message_count(TEST_RABBITMQ_URL, queue) >= count


@pytest.mark.chaos
async def test_orchestrator_killed_mid_run_resumes_every_saga_from_history(
    api: httpx.AsyncClient, shop: Shop, deployment: Deployment
) -> None:
    book, customer = shop.book("5.00", 100), shop.customer("10000.00")
    deployment.pause("shipping")  # every saga stops at arrange_shipping
    try:
        ids = await asyncio.gather(*(start(api, order(customer, (book, 1))) for _ in range(20)))

        async def all_paid() -> bool:
            statuses = [await _status_is(api, oid, "PAYMENT_COMPLETED") for oid in ids]
            return all(statuses)

        await until(all_paid, timeout=30)
        deployment.kill("orchestrator")
    finally:
        deployment.resume("shipping")
    deployment.start("orchestrator")  # recovers the sagas once the dead owner's leases expire
    sagas = [await finished(api, oid, timeout=60) for oid in ids]
    assert {s["status"] for s in sagas} == {"COMPLETED"}
    assert shop.stock_of(book) == (80, 0)
    shop.check(list(ids))
