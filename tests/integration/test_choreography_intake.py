"""The choreography's intake bound on real processes (MariaDB, Redis): while
``CLOUDMART_MAX_QUEUED_SAGAS`` orders are in flight a new order is refused with 503 and
nothing is written; a repeat of an accepted one is answered, and once the orders in flight
finish, the refused one is accepted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from choreography_support import choreography_deployment, finished, start
from conftest import until
from processes import Deployment
from shop import Shop, order

pytestmark = [pytest.mark.mysql, pytest.mark.redis, pytest.mark.slow]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    directory: Path = tmp_path_factory.mktemp("intake")
    with choreography_deployment(
        "cloudmart_test_intake", directory, base_port=31200, CLOUDMART_MAX_QUEUED_SAGAS="2"
    ) as deployment:
        yield deployment


async def test_orders_beyond_the_bound_are_refused_until_those_in_flight_finish(
    api: httpx.AsyncClient, shop: Shop, deployment: Deployment, sql: sa.Engine
) -> None:
    book, customer = shop.book("10.00", 5), shop.customer("100.00")
    deployment.pause("payment")  # the orders stay in flight
    try:
        first = await start(api, order(customer, (book, 1)), **{"Idempotency-Key": "intake-1"})
        second = await start(api, order(customer, (book, 1)))
        refused = await api.post(
            "/orders", json=order(customer, (book, 1)), headers={"Idempotency-Key": "intake-3"}
        )
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "SagaBacklogFull"
        assert refused.json()["details"]["pending"] == 2
        assert int(refused.headers["retry-after"]) >= 1
        with sql.connect() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM orders")).scalar_one() == 2
        again = await api.post(
            "/orders", json=order(customer, (book, 1)), headers={"Idempotency-Key": "intake-1"}
        )
        assert (again.status_code, again.json()["order_id"]) == (200, first)  # a repeat
    finally:
        deployment.resume("payment")
    assert [(await finished(api, oid))["status"] for oid in (first, second)] == ["COMPLETED"] * 2

    async def accepted() -> httpx.Response | None:
        response = await api.post(
            "/orders", json=order(customer, (book, 1)), headers={"Idempotency-Key": "intake-3"}
        )
        return response if response.status_code == 202 else None

    third = str((await until(accepted, timeout=10, interval=0.2)).json()["order_id"])
    assert (await finished(api, third))["status"] == "COMPLETED"
    shop.check([first, second, third])
