"""The broker away from the orchestrator across a saga's deadline, after its pivot: the saga
must complete, not compensate (shipping was arranged; only forward). The orchestrator reaches
RabbitMQ through a :class:`~faults.proxy.FaultProxy`, black-holed once the saga is past its
pivot and healed once an attempt to complete the order failed after the deadline."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
from conftest import TEST_RABBITMQ_URL
from faults.proxy import FaultProxy
from orchestration_support import orchestration_deployment
from processes import Deployment
from seed_scenarios import attempted_past_its_deadline, held_past_the_pivot, saga_finished
from shop import Shop

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.mysql, pytest.mark.rabbitmq]

DEADLINE = 10.0
PROXY_PORT = 18790


@pytest.fixture(scope="module")
def proxy() -> Iterator[FaultProxy]:
    with FaultProxy.in_front_of(
        TEST_RABBITMQ_URL, listen_port=PROXY_PORT, default_port=5672
    ) as running:
        yield running


@pytest.fixture(scope="module")
def deployment(proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with orchestration_deployment(
        "pivot",
        tmp_path_factory.mktemp("pivot-chaos"),
        base_port=18700,
        CLOUDMART_REQUEST_TIMEOUT="2",
        CLOUDMART_LEASE_SECONDS="3",
        CLOUDMART_SAGA_DEADLINE=str(DEADLINE),
    ) as deployment:
        proxied = proxy.through(TEST_RABBITMQ_URL)
        deployment.restart("orchestrator", env={"CLOUDMART_RABBITMQ_URL": proxied})
        yield deployment


async def test_the_broker_away_across_the_deadline_after_the_pivot_completes_the_saga(
    api: httpx.AsyncClient, shop: Shop, deployment: Deployment, proxy: FaultProxy
) -> None:
    oid, book, customer = await held_past_the_pivot(api, shop, deployment)
    proxy.blackhole()
    try:
        deployment.resume("order")  # the command may run now; its reply cannot come back
        await attempted_past_its_deadline(api, oid, "order.complete_order", DEADLINE * 6)
    finally:
        proxy.pass_through()
        deployment.resume("order")
    saga = await saga_finished(api, oid, timeout=60)
    assert saga["status"] == "COMPLETED", saga
    assert shop.stock_of(book) == (4, 0)
    assert shop.balance_of(customer) == Decimal("90.00")
    assert (
        shop.count(
            "SELECT COUNT(*) FROM shipments WHERE order_id = :oid AND status = 'ARRANGED'", oid=oid
        )
        == 1
    )
    shop.check([oid])
