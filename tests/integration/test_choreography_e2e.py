"""Choreographed end to end: four real service processes on MariaDB and Redis Streams, driven
through the order service's REST API, SPEC §6 checked by SQL after each. The seed's scenarios
come from :mod:`seed_scenarios`; what follows them is the choreography's own (redelivered and
reordered events, dead letters, a customer's cancel)."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import httpx
import pytest
from choreography_support import choreography_deployment, finished, start
from conftest import TEST_REDIS_URL, until
from processes import Deployment
from seed_scenarios import CHOREOGRAPHY, SeedScenarios
from shop import US, Shop, order

from activities.orders import order_id_for
from choreography_pattern import Event
from choreography_pattern import events as ev
from choreography_pattern.redis_bus import RedisEventBus
from choreography_pattern.redis_entries import dead_letter_key, stream_key

pytestmark = [pytest.mark.mysql, pytest.mark.redis, pytest.mark.slow]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with choreography_deployment(
        "cloudmart_test_choreography", tmp_path_factory.mktemp("choreography")
    ) as deployed:
        yield deployed


@pytest.fixture
async def bus(deployment: Deployment) -> AsyncIterator[RedisEventBus]:
    redis_bus = RedisEventBus.from_url(TEST_REDIS_URL, deployment.namespace)
    yield redis_bus
    await redis_bus.aclose()


class TestSeedScenarios(SeedScenarios):
    style = CHOREOGRAPHY


# delivery faults ---------------------------------------------------------------------------


async def test_every_event_delivered_again_two_to_four_times_changes_nothing(
    api: httpx.AsyncClient, shop: Shop, bus: RedisEventBus
) -> None:
    book, customer = shop.book("100.00", 10), shop.customer("1000.00")
    ok = await start(api, order(customer, (book, 1)))
    failed = await start(api, order(customer, (book, 1), address=US))
    await finished(api, ok)
    await finished(api, failed)
    before = (shop.stock_of(book), shop.balance_of(customer))
    entries = await bus.client.xrange(stream_key(bus.namespace))
    mine = [
        {k.decode(): v.decode() for k, v in fields.items()}
        for _, fields in entries
        if fields[b"order_id"].decode() in (ok, failed)
    ]
    assert len(mine) >= 10
    for copies, fields in zip(itertools.cycle([2, 3, 4]), mine, strict=False):
        for _ in range(copies):
            await bus.publish_fields(fields)
    marker = await start(api, order(customer, (book, 1)))  # flows behind every duplicate
    await finished(api, marker)
    assert (shop.stock_of(book), shop.balance_of(customer)) == (
        (before[0][0] - 1, 0),
        before[1] - Decimal("100.00"),
    )
    assert shop.statuses([ok, failed]) == {ok: "COMPLETED", failed: "CANCELLED"}
    metrics = (await api.get("/metrics")).text
    assert 'cloudmart_events_duplicates_skipped_total{service="order"}' in metrics
    assert 'cloudmart_events_duplicates_skipped_total{service="order"} 0.0' not in metrics
    shop.check([ok, failed, marker])


async def test_a_compensation_before_the_event_it_compensates_means_no_charge_ever(
    api: httpx.AsyncClient, shop: Shop, bus: RedisEventBus
) -> None:
    book, customer = shop.book("100.00", 0), shop.customer("1000.00")
    key = f"early-{uuid.uuid4()}"
    oid = order_id_for(key)
    await bus.publish([Event(ev.STOCK_UNAVAILABLE, oid, {})])
    # Payment has taken it (tombstone + PaymentCancelled) before the order even exists.
    await until(
        lambda: shop.count(
            "SELECT COUNT(*) FROM processed_events WHERE service = 'payment' AND order_id = :o",
            o=oid,
        ),
        timeout=20,
    )
    assert await start(api, order(customer, (book, 1)), **{"Idempotency-Key": key}) == oid
    body = await finished(api, oid)
    assert body["status"] == "CANCELLED"
    assert shop.balance_of(customer) == Decimal("1000.00")
    assert shop.count("SELECT COUNT(*) FROM payments WHERE order_id = :o", o=oid) == 0
    shop.check([oid])


async def test_a_malformed_entry_is_dead_lettered_while_sagas_proceed(
    api: httpx.AsyncClient, shop: Shop, bus: RedisEventBus
) -> None:
    await bus.publish_fields({"type": "OrderCreated", "order_id": "x", "payload": "{not json"})
    dead = dead_letter_key(bus.namespace, "payment")
    await until(lambda: bus.client.xlen(dead), timeout=20)
    book, customer = shop.book("10.00", 10), shop.customer("1000.00")
    oid = await start(api, order(customer, (book, 1)))
    assert (await finished(api, oid))["status"] == "COMPLETED"


# the API's contract ------------------------------------------------------------------------


async def test_idempotency_key_returns_the_same_order_and_refuses_another_body(
    api: httpx.AsyncClient, shop: Shop
) -> None:
    book, customer = shop.book("10.00", 10), shop.customer("1000.00")
    headers = {"Idempotency-Key": f"key-{uuid.uuid4()}"}
    first = await api.post("/orders", json=order(customer, (book, 1)), headers=headers)
    again = await api.post("/orders", json=order(customer, (book, 1)), headers=headers)
    other = await api.post("/orders", json=order(customer, (book, 2)), headers=headers)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["order_id"] == first.json()["order_id"]
    assert other.status_code == 422 and other.json()["error"] == "IdempotencyKeyReused"
    await finished(api, first.json()["order_id"])
    assert shop.stock_of(book) == (9, 0)


async def test_unknown_customer_or_book_is_404_and_writes_nothing(
    api: httpx.AsyncClient, shop: Shop
) -> None:
    book = shop.book("10.00", 10)
    before = shop.count("SELECT COUNT(*) FROM outbox")
    assert (await api.post("/orders", json=order(999_999, (book, 1)))).status_code == 404
    customer = shop.customer("10.00")
    assert (await api.post("/orders", json=order(customer, (999_999, 1)))).status_code == 404
    assert shop.count("SELECT COUNT(*) FROM outbox") == before


# a customer's cancel -------------------------------------------------------------------------


async def test_cancelled_orders_end_cancelled_with_every_effect_undone(
    api: httpx.AsyncClient, shop: Shop
) -> None:
    # Cancels land at every point of the flow: some before a step ran, some after shipping
    # was arranged; none may complete, and whatever happened is undone.
    book, customer = shop.book("10.00", 100), shop.customer("1000.00")
    oids = [await start(api, order(customer, (book, 1))) for _ in range(20)]
    answers = [await api.put(f"/orders/{oid}/cancel") for oid in oids]
    accepted = [oid for oid, a in zip(oids, answers, strict=True) if a.status_code == 202]
    refused = [oid for oid, a in zip(oids, answers, strict=True) if a.status_code == 409]
    assert len(accepted) + len(refused) == len(oids), [a.text for a in answers]
    assert all(a.json()["status"] in ("PENDING", "CANCELLED") for a in answers if a.is_success)
    ended = {oid: (await finished(api, oid))["status"] for oid in oids}
    assert {ended[oid] for oid in accepted} <= {"CANCELLED"}
    assert {ended[oid] for oid in refused} <= {"COMPLETED"}  # it had completed already
    completed = len(refused)
    assert shop.stock_of(book) == (100 - completed, 0)
    assert shop.balance_of(customer) == Decimal("1000.00") - 10 * completed
    shop.check(oids)
