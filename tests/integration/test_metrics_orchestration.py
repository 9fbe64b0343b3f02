"""Every process of a real orchestrated deployment (MariaDB, RabbitMQ) serves its own /metrics,
and the order id travels with every command, reply and log line."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aio_pika
import httpx
import pytest
import sqlalchemy as sa
from conftest import TEST_RABBITMQ_URL, until
from metrics_samples import Samples, scrape
from processes import Deployment, deployed
from shop import US, Shop, order

from engine.adapters import amqp_names
from services._kit.roster import SERVICE_NAMES

pytestmark = [pytest.mark.mysql, pytest.mark.rabbitmq, pytest.mark.slow]

NAMESPACE = "metrics-test"
SERVICES = SERVICE_NAMES
SAGA_EVENTS = {
    "step.failed",
    "step.retrying",
    "compensation.started",
    "compensation.completed",
    "saga.completed",
    "saga.failed",
}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployed(
        "orchestration",
        "cloudmart_test_metrics",
        tmp_path_factory.mktemp("metrics"),
        base_port=28100,
        namespace=NAMESPACE,
        CLOUDMART_LOG_JSON="true",
    ) as deployment:
        yield deployment


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as http:
        yield http


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def log_lines(deployment: Deployment, name: str) -> list[dict[str, Any]]:
    path = deployment.directory / f"{name}.log"
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


@pytest.fixture(scope="module")
def sagas(deployment: Deployment, sql: sa.Engine) -> dict[str, str]:
    """Two orders that complete and one that fails at shipping (country US), run to the end."""
    return asyncio.run(_run_sagas(deployment, Shop(sql)))


async def _run_sagas(deployment: Deployment, shop: Shop) -> dict[str, str]:
    book, customer = shop.book("100.00", 10), shop.customer("1000.00")
    bodies = {
        "ok-1": order(customer, (book, 1)),
        "ok-2": order(customer, (book, 2)),
        "us": order(customer, (book, 1), address=US),
    }
    ids: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=deployment.url("orchestrator"), timeout=30) as api:
        for label, body in bodies.items():
            response = await api.post("/saga/start", json=body)
            assert response.status_code == 202, response.text
            ids[label] = response.json()["order_id"]

        async def all_finished() -> bool:
            statuses = [
                (await api.get(f"/saga/{oid}/status", params={"wait": 5})).json()["status"]
                for oid in ids.values()
            ]
            return all(s in ("COMPLETED", "FAILED") for s in statuses)

        await until(all_finished, timeout=60)
    return ids


# the orchestrator ---------------------------------------------------------------------------


async def test_the_orchestrator_counts_sagas_by_outcome_and_failed_step(
    deployment: Deployment, sagas: dict[str, str], client: httpx.AsyncClient
) -> None:
    async def settled() -> Samples | None:
        samples = await scrape(client, deployment.url("orchestrator"))
        return samples if value(samples, "cloudmart_sagas_running") == 0 else None

    samples = await until(settled, timeout=30)
    wf = "place_order"
    assert value(samples, "cloudmart_saga_started_total", workflow=wf) == 3
    completed = {"workflow": wf, "status": "COMPLETED", "failed_step": "none"}
    assert value(samples, "cloudmart_saga_finished_total", **completed) == 2
    shipping = "shipping.arrange_shipping"
    failed = {"workflow": wf, "status": "FAILED", "failed_step": shipping}
    assert value(samples, "cloudmart_saga_finished_total", **failed) == 1
    assert value(samples, "cloudmart_step_attempts_total", step=shipping, outcome="refused") == 1
    create = "order.create_order"
    assert value(samples, "cloudmart_step_attempts_total", step=create, outcome="completed") == 3
    assert value(samples, "cloudmart_step_duration_seconds_count", step=create) >= 3
    for comp in ("payment.cancel_payment", "inventory.release_stock", "order.cancel_order"):
        assert value(samples, "cloudmart_compensations_total", step=comp, outcome="completed") == 1
    assert value(samples, "cloudmart_sagas_needing_operator") == 0
    assert ("cloudmart_sagas_needing_operator", ()) in samples  # read from the database
    assert ("cloudmart_sagas_waiting", ()) in samples
    assert value(samples, "cloudmart_sagas_waiting") == 0  # no more than it may drive at once
    # HTTP latency per route template, never per order id
    routes = {dict(labels).get("route") for name, labels in samples if "http_request" in name}
    assert "/saga/{order_id}/status" in routes
    assert not any(oid in str(samples) for oid in sagas.values())


async def test_the_services_count_commands_by_method_and_outcome(
    deployment: Deployment, sagas: dict[str, str], client: httpx.AsyncClient
) -> None:
    shipping = await scrape(client, deployment.url("shipping"))
    inventory = await scrape(client, deployment.url("inventory"))
    order_service = await scrape(client, deployment.url("order"))

    commands = "cloudmart_commands_total"
    assert value(shipping, commands, method="arrange_shipping", outcome="ok") >= 2
    assert value(shipping, commands, method="arrange_shipping", outcome="refused") >= 1
    assert value(inventory, commands, method="reserve_stock", outcome="ok") >= 3
    assert value(inventory, commands, method="release_stock", outcome="ok") >= 1
    assert value(order_service, commands, method="complete_order", outcome="ok") >= 2
    # each process shows its own: no inventory command on the shipping service
    assert value(shipping, commands, method="reserve_stock", outcome="ok") == 0
    for name, samples in (("shipping", shipping), ("inventory", inventory)):
        dead = amqp_names.dead_letter_queue(NAMESPACE, name)
        assert ("cloudmart_dlq_depth", (("queue", dead),)) in samples


async def test_a_repeated_command_is_counted_as_an_inbox_duplicate(
    deployment: Deployment, sagas: dict[str, str], client: httpx.AsyncClient, shop: Shop
) -> None:
    oid = sagas["ok-1"]
    before = await scrape(client, deployment.url("inventory"))
    items = shop.count("SELECT COUNT(*) FROM order_items WHERE order_id = :o", o=oid)
    assert items == 1
    with shop.sql.connect() as conn:
        book = conn.execute(
            sa.text("SELECT book_id, quantity FROM order_items WHERE order_id = :o"), {"o": oid}
        ).one()
    response = await client.post(
        f"{deployment.url('inventory')}/inventory/reserve",
        json={"order_id": oid, "items": [{"book_id": book.book_id, "quantity": book.quantity}]},
    )
    assert response.status_code in (200, 201), response.text
    after = await scrape(client, deployment.url("inventory"))

    name, labels = "cloudmart_inbox_duplicates_total", {"operation": "reserve_stock"}
    assert value(after, name, **labels) == value(before, name, **labels) + 1


async def test_a_poison_command_shows_in_the_dead_letter_depth(
    deployment: Deployment, client: httpx.AsyncClient
) -> None:
    dead = amqp_names.dead_letter_queue(NAMESPACE, "payment")
    connection = await aio_pika.connect(TEST_RABBITMQ_URL)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(amqp_names.commands_exchange(NAMESPACE))
        await exchange.publish(aio_pika.Message(b"not json at all"), routing_key="payment")

    async def dead_lettered() -> bool:
        samples = await scrape(client, deployment.url("payment"))
        return value(samples, "cloudmart_dlq_depth", queue=dead) == 1

    await until(dead_lettered, timeout=15)


# the correlation id -------------------------------------------------------------------------


async def test_a_reply_carries_the_order_and_saga_ids_of_its_command(
    deployment: Deployment, sagas: dict[str, str]
) -> None:
    oid = sagas["ok-2"]
    connection = await aio_pika.connect(TEST_RABBITMQ_URL)
    async with connection:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        exchange = await channel.get_exchange(amqp_names.commands_exchange(NAMESPACE))
        await exchange.publish(
            aio_pika.Message(
                json.dumps({"order_id": oid}).encode(),
                correlation_id=uuid.uuid4().hex,
                reply_to=replies.name,
                headers={
                    amqp_names.METHOD_HEADER: "complete_order",
                    amqp_names.IDEMPOTENCY_KEY_HEADER: f"{oid}:complete_order",
                    "order_id": oid,
                    "saga_id": "s-metrics",
                },
            ),
            routing_key="order",
        )
        async with replies.iterator(timeout=15) as messages:
            async for message in messages:
                await message.ack()
                headers = {k: str(v) for k, v in (message.headers or {}).items()}
                break
    assert headers["order_id"] == oid
    assert headers["saga_id"] == "s-metrics"


async def test_every_log_line_about_a_saga_carries_its_order_id(
    deployment: Deployment, sagas: dict[str, str]
) -> None:
    oid = sagas["us"]
    shipping = [line for line in log_lines(deployment, "shipping") if line.get("order_id") == oid]
    assert {"command.refused"} <= {line["event"] for line in shipping}
    assert all(line.get("saga_id") for line in shipping if line["event"].startswith("command."))
    orchestrator = log_lines(deployment, "orchestrator")
    saga_lines = [line for line in orchestrator if line["event"] in SAGA_EVENTS]
    assert saga_lines
    assert all(line.get("order_id") and line.get("saga_id") for line in saga_lines)
    refused = [line for line in saga_lines if line["event"] == "step.failed"]
    assert [line["order_id"] for line in refused] == [oid]
