"""Crashes at the choreography's two dangerous instants, with real processes (SIGKILL):

- a service killed after its handler committed and before its XACK: on restart its pending
  entry is claimed (XAUTOCLAIM) and recognised as processed — the effect happened once;
- a relay killed after the business commit and before publishing: the outbox row stays and the
  event goes out after the restart — once.

The failure points are armed through ``CLOUDMART_FAILPOINT`` (test profile only).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
import redis.asyncio as aioredis
from choreography_support import choreography_deployment, finished
from conftest import TEST_REDIS_URL, until
from processes import Deployment
from shop import Shop, order

from activities.orders import order_id_for
from choreography_pattern import events as ev
from choreography_pattern.redis_entries import stream_key

pytestmark = [pytest.mark.mysql, pytest.mark.redis, pytest.mark.slow, pytest.mark.chaos]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with choreography_deployment(
        "cloudmart_test_choreography_chaos", tmp_path_factory.mktemp("choreography-chaos")
    ) as deployed:
        yield deployed


def restart_with(deployment: Deployment, name: str, failpoint: str | None) -> None:
    if failpoint is None:
        deployment.extra_env.pop("CLOUDMART_FAILPOINT", None)
    else:
        deployment.extra_env["CLOUDMART_FAILPOINT"] = failpoint
    deployment.restart(name)
    deployment.extra_env.pop("CLOUDMART_FAILPOINT", None)


def metric(deployment: Deployment, name: str, text: str) -> float:
    body = httpx.get(f"{deployment.url(name)}/metrics", timeout=5).text
    found = re.search(rf"^{re.escape(text)} ([0-9.e+]+)$", body, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_a_service_killed_between_commit_and_ack_processes_the_event_once(
    deployment: Deployment, shop: Shop, api: httpx.AsyncClient
) -> None:
    book, customer = shop.book("100.00", 5), shop.customer("1000.00")
    restart_with(deployment, "payment", "crash_before_ack:payment")
    response = await api.post("/orders", json=order(customer, (book, 1)))
    assert response.status_code == 202
    oid = response.json()["order_id"]
    await until(lambda: deployment.processes["payment"].poll() is not None, timeout=20)
    # The charge committed; the entry was never acknowledged.
    assert shop.count("SELECT COUNT(*) FROM payments WHERE order_id = :o", o=oid) == 1
    restart_with(deployment, "payment", None)
    assert (await finished(api, oid))["status"] == "COMPLETED"
    assert shop.balance_of(customer) == Decimal("900.00")
    # The dead consumer's pending entry is claimed after the idle timeout and skipped as
    # already processed: nothing is left pending, and nothing was charged twice.
    duplicates = 'cloudmart_events_duplicates_skipped_total{service="payment"}'
    await until(lambda: metric(deployment, "payment", duplicates) >= 1, timeout=20)
    client = aioredis.Redis.from_url(TEST_REDIS_URL)
    try:

        async def nothing_pending() -> bool:
            summary = await client.xpending(stream_key(deployment.namespace), "payment")
            return int(summary["pending"]) == 0

        await until(nothing_pending, timeout=10)
    finally:
        await client.aclose()
    assert shop.balance_of(customer) == Decimal("900.00")
    shop.check([oid])


async def test_a_relay_killed_between_commit_and_publish_still_sends_the_event_once(
    deployment: Deployment, shop: Shop, api: httpx.AsyncClient
) -> None:
    book, customer = shop.book("100.00", 5), shop.customer("1000.00")
    key = f"crash-{uuid.uuid4()}"
    oid = order_id_for(key)
    restart_with(deployment, "order", "crash_before_publish:order")
    try:
        answered: int | None = (
            await api.post(
                "/orders", json=order(customer, (book, 1)), headers={"Idempotency-Key": key}
            )
        ).status_code
    except httpx.TransportError:
        answered = None  # the process died before it answered; the order is known by its key
    assert answered in (202, None)
    await until(lambda: deployment.processes["order"].poll() is not None, timeout=20)
    unpublished = "SELECT COUNT(*) FROM outbox WHERE order_id = :o AND published_at IS NULL"
    assert shop.count(unpublished, o=oid) == 1
    restart_with(deployment, "order", None)
    assert (await finished(api, oid))["status"] == "COMPLETED"
    client = aioredis.Redis.from_url(TEST_REDIS_URL)
    try:
        entries = await client.xrange(stream_key(deployment.namespace))
    finally:
        await client.aclose()
    created = ev.event_id(oid, ev.ORDER_CREATED).encode()
    assert sum(fields[b"event_id"] == created for _, fields in entries) == 1
    assert shop.balance_of(customer) == Decimal("900.00")
    shop.check([oid])
