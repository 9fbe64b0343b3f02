"""Admission control on real processes (MariaDB, RabbitMQ): an orchestrator drives at most
``CLOUDMART_MAX_RUNNING_SAGAS`` sagas; later starts are committed and wait their turn, and
only past ``CLOUDMART_MAX_QUEUED_SAGAS`` waiting is a start refused with 503."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa
from conftest import until
from processes import Deployment, deployed
from prometheus_client.parser import text_string_to_metric_families
from seed_scenarios import paid_with_shipping_held, saga_finished, saga_start, saga_status
from shop import Shop, order

pytestmark = [pytest.mark.mysql, pytest.mark.rabbitmq, pytest.mark.slow]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployed(
        "orchestration",
        "cloudmart_test_admission",
        tmp_path_factory.mktemp("admission"),
        base_port=31000,
        CLOUDMART_MAX_RUNNING_SAGAS="2",
        CLOUDMART_MAX_QUEUED_SAGAS="3",
    ) as deployment:
        yield deployment


async def waiting(api: httpx.AsyncClient, deployment: Deployment) -> float:
    response = await api.get(f"{deployment.url('orchestrator')}/metrics")
    for family in text_string_to_metric_families(response.text):
        if family.name == "cloudmart_sagas_waiting":
            return float(family.samples[0].value)
    raise AssertionError("no cloudmart_sagas_waiting gauge")


async def test_starts_beyond_the_running_bound_wait_in_the_database_and_all_complete(
    api: httpx.AsyncClient, shop: Shop, deployment: Deployment, sql: sa.Engine
) -> None:
    # One saga holds a slot while shipping is stopped; a second fills the other.
    async with paid_with_shipping_held(api, shop, deployment) as (first, book, customer):
        second = await saga_start(api, order(customer, (book, 1)))

        async def both_paid() -> bool:
            return await saga_status(api, second) == "PAYMENT_COMPLETED"

        await until(both_paid, timeout=20)
        later = [await saga_start(api, order(customer, (book, 1))) for _ in range(3)]
        assert await waiting(api, deployment) == 3
        assert [await saga_status(api, oid) for oid in later] == ["STARTED"] * 3
        with sql.connect() as conn:
            steps = conn.execute(
                sa.text(
                    "SELECT COUNT(*) FROM saga_step_logs l JOIN saga_instances i "
                    "ON i.saga_id = l.saga_id WHERE i.order_id IN :ids "
                    "AND l.event_type = 'StepScheduled'"
                ).bindparams(sa.bindparam("ids", expanding=True)),
                {"ids": later},
            ).scalar_one()
        assert steps == 0  # written, durable, and not yet driven

        refused = await api.post(
            "/saga/start",
            json=order(customer, (book, 2)),
            headers={"Idempotency-Key": "admission-over-the-bound"},
        )
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "SagaBacklogFull"
        assert refused.json()["details"]["waiting"] == 3
        assert int(refused.headers["retry-after"]) >= 1
        with sql.connect() as conn:
            count = conn.execute(sa.text("SELECT COUNT(*) FROM saga_instances")).scalar_one()
        assert count == 5  # the refused start wrote nothing

    # Shipping is back: the two running sagas finish and the waiting ones take their slots.
    oids = [first, second, *later]
    assert [(await saga_finished(api, oid))["status"] for oid in oids] == ["COMPLETED"] * 5
    assert await waiting(api, deployment) == 0
    restocked = shop.book("10.00", 1)  # the first book's five copies are sold
    again = await api.post(
        "/saga/start",
        json=order(customer, (restocked, 1)),
        headers={"Idempotency-Key": "admission-over-the-bound"},
    )
    # The refused start wrote nothing, not even its key: once there is room, it is accepted.
    assert again.status_code == 202, again.text
    oids.append(again.json()["order_id"])
    assert (await saga_finished(api, oids[-1]))["status"] == "COMPLETED"
    shop.check(oids)
