"""An operator's view of orchestrated sagas, on real processes (MariaDB, RabbitMQ): the pivot
holds against a cancel and against the deadline, and a parked saga is resumed or compensated
through the REST API (SPEC §8)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
import sqlalchemy as sa
from conftest import until
from processes import Deployment, deployed
from seed_scenarios import (
    attempted_past_its_deadline,
    held_past_the_pivot,
    paid_with_shipping_held,
    parked_saga,
    rename_step,
    saga_history,
)
from seed_scenarios import saga_finished as finished
from shop import Shop

pytestmark = [pytest.mark.mysql, pytest.mark.rabbitmq, pytest.mark.slow]

DEADLINE = 10.0


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployed(
        "orchestration",
        "cloudmart_test_operator",
        tmp_path_factory.mktemp("operator"),
        base_port=18600,
        CLOUDMART_REQUEST_TIMEOUT="2",
        CLOUDMART_LEASE_SECONDS="3",
        CLOUDMART_SAGA_DEADLINE=str(DEADLINE),
    ) as deployment:
        yield deployment


async def test_cancel_past_the_pivot_is_refused_and_the_saga_completes(
    api: httpx.AsyncClient, shop: Shop, deployment: Deployment
) -> None:
    oid, book, _customer = await held_past_the_pivot(api, shop, deployment)
    try:
        refused = await api.post(f"/saga/{oid}/cancel")
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"] == "SagaActionRefused"
        assert refused.json()["details"]["status"] == "SHIPPING_ARRANGED"
        compensate = await api.post(f"/saga/{oid}/compensate", json={"reason": "too late"})
        assert compensate.status_code == 409
    finally:
        deployment.resume("order")
    assert (await finished(api, oid))["status"] == "COMPLETED"
    assert shop.stock_of(book) == (4, 0)
    shop.check([oid])


async def test_the_order_service_down_across_the_deadline_after_the_pivot_completes(
    api: httpx.AsyncClient, shop: Shop, deployment: Deployment
) -> None:
    oid, _book, customer = await held_past_the_pivot(api, shop, deployment)
    try:
        await attempted_past_its_deadline(api, oid, "order.complete_order", DEADLINE * 4)
    finally:
        deployment.resume("order")
    saga = await finished(api, oid)
    assert saga["status"] == "COMPLETED", saga
    assert shop.balance_of(customer) == Decimal("90.00")
    shop.check([oid])


async def test_a_parked_saga_resumed_once_its_history_matches_again_completes(
    api: httpx.AsyncClient, shop: Shop, deployment: Deployment, sql: sa.Engine
) -> None:
    oid, book, _customer = await parked_saga(api, shop, deployment, sql)
    assert (await api.post(f"/saga/{oid}/retry", json={"reason": "x"})).status_code == 409
    assert (await api.post(f"/saga/{oid}/resume", json={})).status_code == 422  # no reason
    rename_step(sql, oid, "shipping.arrange_courier", "shipping.arrange_shipping")
    resumed = await api.post(f"/saga/{oid}/resume", json={"reason": "v1 redeployed"})
    assert resumed.status_code == 202, resumed.text
    assert (await finished(api, oid))["status"] == "COMPLETED"
    actions = [e["payload"] for e in await saga_history(api, oid) if e["type"] == "OperatorAction"]
    assert [(a["action"], a["reason"]) for a in actions] == [("resume", "v1 redeployed")]
    assert shop.stock_of(book) == (4, 0)
    shop.check([oid])


async def test_a_parked_saga_compensated_by_an_operator_ends_failed_with_every_effect_undone(
    api: httpx.AsyncClient, shop: Shop, deployment: Deployment, sql: sa.Engine
) -> None:
    oid, book, customer = await parked_saga(api, shop, deployment, sql)
    done = await api.post(f"/saga/{oid}/compensate", json={"reason": "customer cancelled"})
    assert done.status_code == 202, done.text
    saga = await finished(api, oid)
    assert (saga["status"], saga["failure_reason"]) == ("FAILED", "operator: customer cancelled")
    actions = [e["payload"] for e in await saga_history(api, oid) if e["type"] == "OperatorAction"]
    assert [(a["action"], a["reason"]) for a in actions] == [("compensate", "customer cancelled")]
    assert shop.stock_of(book) == (5, 0)
    assert shop.balance_of(customer) == Decimal("100.00")
    assert (
        shop.count(
            "SELECT COUNT(*) FROM shipments WHERE order_id = :oid AND status = 'ARRANGED'", oid=oid
        )
        == 0
    )
    shop.check([oid])


async def test_150_sagas_of_an_unknown_workflow_are_parked_and_hold_up_no_recovery(
    api: httpx.AsyncClient, shop: Shop, deployment: Deployment, sql: sa.Engine
) -> None:
    # Before, they sorted first among the claimable sagas and were skipped without a word, so
    # with more of them than one claim batch (100) nothing else was ever recovered.
    async with paid_with_shipping_held(api, shop, deployment) as (oid, _book, _customer):
        deployment.kill("orchestrator")
        with sql.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO saga_instances (saga_id, order_id, workflow_name, status, input, "
                    "version, next_seq, needs_operator, cancel_requested, compensation_attempts, "
                    "created_at, updated_at) VALUES (:s, :o, 'retired_workflow', 'STARTED', '{}', "
                    "1, 0, 0, 0, 0, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))"
                ),
                [{"s": f"gone-{n}", "o": f"gone-{n}"} for n in range(150)],
            )
    deployment.restart("orchestrator")
    assert (await finished(api, oid))["status"] == "COMPLETED"

    def parked() -> int:
        return shop.count(
            "SELECT COUNT(*) FROM saga_instances WHERE workflow_name = 'retired_workflow' "
            "AND status = 'PARKED' AND failure_reason LIKE 'UnknownWorkflow%'"
        )

    await until(lambda: parked() == 150, timeout=60)
    shop.check([oid])
