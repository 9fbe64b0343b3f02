"""Dead letters, end to end on real processes: a poison command and a poison event reach the
dead letters, ``cloudmart dead-letters list`` shows them, and ``redrive`` after the cause is
fixed runs each exactly once, leaving the dead letters empty.

The poison is the ``poison:<service>`` failure point (services/_kit/failpoints.py): every
message the service handles fails with an error that is neither a business answer nor an
infrastructure fault. "Fixing the cause" is restarting the service without it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
from conftest import TEST_RABBITMQ_URL, TEST_REDIS_URL, fresh_database, until
from processes import Deployment, delete_redis_namespace
from rabbitmq_support import delete_topology
from shop import Shop, order, sync_engine

from choreography_pattern.redis_bus import RedisEventBus
from choreography_pattern.redis_entries import dead_letter_key
from engine.adapters import amqp_names as names

pytestmark = [pytest.mark.mysql, pytest.mark.slow]

POISON = {"CLOUDMART_FAILPOINT": "poison:inventory"}
LIMITS = {
    "CLOUDMART_COMMAND_MAX_DELIVERIES": "2",
    "CLOUDMART_EVENT_MAX_DELIVERIES": "2",
    "CLOUDMART_EVENT_CLAIM_IDLE": "0.5",
}


def cli(deployment: Deployment, *args: str) -> subprocess.CompletedProcess[str]:
    """``cloudmart ARGS`` as an operator runs it, against the deployment's brokers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDMART_")}
    env.update(
        CLOUDMART_ENV="test",
        CLOUDMART_DATABASE_URL=deployment.database_url,
        CLOUDMART_NAMESPACE=deployment.namespace,
        CLOUDMART_RABBITMQ_URL=TEST_RABBITMQ_URL,
        CLOUDMART_REDIS_URL=TEST_REDIS_URL,
    )
    return subprocess.run(
        [sys.executable, "-m", "cloudmart", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def listed(deployment: Deployment, pattern: str) -> list[dict[str, Any]]:
    done = await asyncio.to_thread(
        cli, deployment, "dead-letters", "list", "--pattern", pattern, "--json"
    )
    assert done.returncode == 0, done.stderr
    letters: list[dict[str, Any]] = json.loads(done.stdout)
    return letters


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


# orchestration: commands on RabbitMQ ---------------------------------------------------------


@pytest.fixture(scope="module")
def orchestration(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    deployment = Deployment(
        database_url=fresh_database("cloudmart_test_infra_dead_orch"),
        namespace=f"infra-dead-{uuid.uuid4().hex[:8]}",
        directory=Path(tmp_path_factory.mktemp("dead-letters-orchestration")),
        base_port=29000,
        pattern="orchestration",
        rabbitmq_url=TEST_RABBITMQ_URL,
        extra_env=LIMITS,
    )
    try:
        deployment.start("order")
        deployment.start("inventory", env=POISON)
        yield deployment
    finally:
        deployment.stop_all()
        asyncio.run(
            delete_topology(TEST_RABBITMQ_URL, deployment.namespace, ["order", "inventory"])
        )


async def send_command(
    namespace: str, method: str, body: bytes, *, key: str, order_id: str
) -> None:
    """A command on the inventory's queue, as the orchestrator sends it (no one awaits a reply)."""
    connection = await aio_pika.connect(TEST_RABBITMQ_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(names.commands_exchange(namespace))
        await exchange.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                message_id=key,
                headers={
                    names.METHOD_HEADER: method,
                    names.IDEMPOTENCY_KEY_HEADER: key,
                    "order_id": order_id,
                },
            ),
            routing_key="inventory",
            mandatory=True,
        )


@pytest.mark.rabbitmq
async def test_a_poison_command_is_dead_lettered_listed_and_redriven_once(
    orchestration: Deployment, http: httpx.AsyncClient
) -> None:
    sql = sync_engine(orchestration.database_url)
    try:
        shop = Shop(sql)
        book, customer = shop.book("10.00", 50), shop.customer("1000.00")
        body = order(customer, (book, 3))
        created = await http.post(f"{orchestration.url('order')}/orders", json=body)
        assert created.status_code == 201, created.text
        order_id = created.json()["order_id"]
        command = {"order_id": order_id, "items": [{"book_id": book, "quantity": 3}]}
        key = f"{order_id}:reserve_stock"
        await send_command(
            orchestration.namespace,
            "reserve_stock",
            json.dumps(command).encode(),
            key=key,
            order_id=order_id,
        )

        letters = await until(lambda: listed(orchestration, "orchestration"), timeout=30)
        [letter] = letters
        assert letter["service"] == "inventory" and letter["name"] == "reserve_stock"
        assert letter["order_id"] == order_id and letter["deliveries"] == 2
        assert letter["error"].startswith("FailpointPoison")
        assert letter["dead_at"] and letter["source"].endswith(".inventory.dead")
        table = await asyncio.to_thread(cli, orchestration, "dead-letters", "list")
        assert letter["id"] in table.stdout and "reserve_stock" in table.stdout
        assert shop.stock_of(book) == (50, 0)  # the poison never took effect

        await asyncio.to_thread(orchestration.restart, "inventory")  # the cause, fixed
        done = await asyncio.to_thread(
            cli, orchestration, "dead-letters", "redrive", "--id", letter["id"]
        )
        assert done.returncode == 0, done.stderr
        assert letter["id"] in done.stdout

        await until(lambda: shop.stock_of(book) == (47, 3), timeout=30)
        # once: one inbox record, and a second redrive finds nothing to put back
        records = "SELECT COUNT(*) FROM inbox WHERE order_id = :o AND operation = 'reserve_stock'"
        assert shop.count(records, o=order_id) == 1
        assert await listed(orchestration, "orchestration") == []
        again = await asyncio.to_thread(
            cli, orchestration, "dead-letters", "redrive", "--id", letter["id"]
        )
        assert again.returncode == 1 and "no such dead letter" in again.stderr
        assert shop.stock_of(book) == (47, 3)
    finally:
        sql.dispose()


@pytest.mark.rabbitmq
async def test_a_malformed_command_is_dead_lettered_at_once_and_listed(
    orchestration: Deployment,
) -> None:
    await send_command(
        orchestration.namespace, "reserve_stock", b"{not json", key="garbled", order_id="o-x"
    )
    letters = await until(lambda: listed(orchestration, "orchestration"), timeout=30)
    [letter] = letters
    assert (letter["name"], letter["order_id"]) == ("reserve_stock", "o-x")
    assert (letter["deliveries"], letter["error"]) == (1, "malformed command")


# choreography: events on Redis Streams --------------------------------------------------------


@pytest.fixture(scope="module")
def choreography(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    deployment = Deployment(
        database_url=fresh_database("cloudmart_test_infra_dead_choreo"),
        namespace=f"infra-dead-{uuid.uuid4().hex[:8]}",
        directory=Path(tmp_path_factory.mktemp("dead-letters-choreography")),
        base_port=29100,
        pattern="choreography",
        redis_url=TEST_REDIS_URL,
        extra_env=LIMITS,
    )
    try:
        for name in ("order", "payment", "shipping"):
            deployment.start(name)
        deployment.start("inventory", env=POISON)
        yield deployment
    finally:
        deployment.stop_all()
        delete_redis_namespace(TEST_REDIS_URL, deployment.namespace)


@pytest.mark.redis
async def test_a_poison_event_is_dead_lettered_listed_and_redriven_once(
    choreography: Deployment, http: httpx.AsyncClient
) -> None:
    sql = sync_engine(choreography.database_url)
    try:
        shop = Shop(sql, pattern="choreography")
        book, customer = shop.book("10.00", 50), shop.customer("1000.00")
        started = await http.post(
            f"{choreography.url('order')}/orders", json=order(customer, (book, 2))
        )
        assert started.status_code == 202, started.text
        order_id = started.json()["order_id"]

        letters = await until(lambda: listed(choreography, "choreography"), timeout=30)
        [letter] = letters
        assert letter["service"] == "inventory" and letter["name"] == "OrderCreated"
        assert letter["order_id"] == order_id and letter["deliveries"] >= 2
        assert letter["error"].startswith("FailpointPoison")
        assert letter["source"] == dead_letter_key(choreography.namespace, "inventory")
        assert shop.statuses([order_id]) == {order_id: "PENDING"}  # stranded, not lost

        await asyncio.to_thread(choreography.restart, "inventory")  # the cause, fixed
        done = await asyncio.to_thread(
            cli, choreography, "dead-letters", "redrive", "--service", "inventory"
        )
        assert done.returncode == 0, done.stderr
        assert letter["id"] in done.stdout

        await until(lambda: shop.statuses([order_id]) == {order_id: "COMPLETED"}, timeout=30)
        records = "SELECT COUNT(*) FROM inbox WHERE order_id = :o AND operation = :op"
        assert shop.count(records, o=order_id, op="reserve_stock") == 1
        # the other groups had handled OrderCreated: they skipped it, charging nothing twice
        assert shop.count(records, o=order_id, op="process_payment") == 1
        assert shop.balance_of(customer) == 980
        assert await listed(choreography, "choreography") == []
        checked = await asyncio.to_thread(cli, choreography, "check", "--grace", "0")
        assert checked.returncode == 0, checked.stdout
        shop.check([order_id])
    finally:
        sql.dispose()


@pytest.mark.redis
async def test_a_malformed_event_is_dead_lettered_at_once_and_listed(
    choreography: Deployment,
) -> None:
    bus = RedisEventBus.from_url(TEST_REDIS_URL, choreography.namespace)
    try:
        await bus.publish_fields({"type": "OrderCreated", "order_id": "o-y", "payload": "{]"})
    finally:
        await bus.aclose()

    async def every_group_gave_up() -> list[dict[str, Any]]:
        letters = await listed(choreography, "choreography")
        return letters if len(letters) == 3 else []

    letters = await until(every_group_gave_up, timeout=30)
    # each group that handles OrderCreated (shipping acknowledges the type unread)
    assert {letter["service"] for letter in letters} == {"order", "inventory", "payment"}
    assert {(letter["name"], letter["order_id"]) for letter in letters} == {("OrderCreated", "o-y")}
    assert all("cannot decode event" in letter["error"] for letter in letters)
