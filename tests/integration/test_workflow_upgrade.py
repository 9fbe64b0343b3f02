"""The order saga's v2 deployed while v1 sagas are in flight, on real processes (MariaDB,
RabbitMQ): an orchestrator running v1 (``tests/order_saga_v1.py``) is killed with one saga
paid for and one that has not reached the payment, and restarted onto today's code, which
screens large orders for fraud before payment behind the patch ``fraud-check``. The saga past
the patch point finishes as v1; the one short of it, and new ones, run v2."""

from __future__ import annotations

import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import until
from processes import Deployment, deployed
from seed_scenarios import paid_with_shipping_held, saga_history, saga_start
from seed_scenarios import saga_finished as finished
from shop import Shop, order

from activities.db import create_engine
from activities.payments import DAILY_LIMIT
from cloudmart.replay import from_database, render, replay_all
from orchestration_pattern.orchestrator import WORKFLOWS, workflows_of
from workflows.order_saga import REVIEW_AMOUNT

pytestmark = [pytest.mark.mysql, pytest.mark.rabbitmq, pytest.mark.slow]

TESTS = Path(__file__).resolve().parents[1]  # where order_saga_v1 lives
V1 = {"CLOUDMART_WORKFLOWS": "order_saga_v1"}
V2 = {"CLOUDMART_WORKFLOWS": "orchestration_pattern.orchestrator"}  # today's WORKFLOWS
LARGE = str(REVIEW_AMOUNT + 2000)  # screened by v2, within the daily limit
TOO_LARGE = str(DAILY_LIMIT + 1000)  # screened by v2 and refused


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    with deployed(
        "orchestration",
        "fraud_test_upgrade",
        tmp_path_factory.mktemp("upgrade"),
        base_port=30500,
        namespace="fraud_upgrade",
        CLOUDMART_REQUEST_TIMEOUT="2",
        CLOUDMART_LEASE_SECONDS="3",
        PYTHONPATH=path,
        **V1,
    ) as deployment:
        yield deployment


def steps_of(history: list[dict[str, Any]]) -> list[str]:
    """The steps the saga scheduled and the patches it recorded, in order."""
    return [
        e["step"]
        for e in history
        if e["type"] == "StepScheduled"
        or (e["type"] == "MarkerRecorded" and e["step"].startswith("patch:"))
    ]


V1_STEPS = [
    "order.create_order",
    "inventory.reserve_stock",
    "payment.process_payment",
    "shipping.arrange_shipping",
    "order.complete_order",
]
V2_SCREENED = [*V1_STEPS[:2], "patch:fraud-check", "payment.screen_order", *V1_STEPS[2:]]


async def test_v1_sagas_in_flight_across_a_restart_onto_v2_finish_as_their_history_says(
    api: httpx.AsyncClient, shop: Shop, deployment: Deployment
) -> None:
    # On v1: one large saga paid for (past the patch point), shipping held; one large saga
    # whose stock is being reserved (short of it), inventory held. Then the v1 orchestrator dies.
    async with paid_with_shipping_held(
        api, shop, deployment, price=LARGE, balance=str(Decimal(LARGE) * 2)
    ) as (paid, paid_book, paid_customer):
        short_book, short_customer = shop.book(LARGE, 2), shop.customer(LARGE)
        deployment.pause("inventory")
        try:
            short = await saga_start(api, order(short_customer, (short_book, 1)))

            async def reserving() -> bool:
                return "inventory.reserve_stock" in steps_of(await saga_history(api, short))

            await until(reserving, timeout=20)
            before = steps_of(await saga_history(api, paid))
            assert before[:3] == V1_STEPS[:3]  # v1 took the payment without a screening
            deployment.kill("orchestrator")
        finally:
            deployment.resume("inventory")
    deployment.restart("orchestrator", env=V2)

    # On v2: new sagas, one ordinary, one large, one large enough to be refused at screening.
    ordinary_book, ordinary_customer = shop.book("10.00", 5), shop.customer("100.00")
    screened_book, screened_customer = shop.book(LARGE, 2), shop.customer(LARGE)
    refused_book, refused_customer = shop.book(TOO_LARGE, 2), shop.customer(TOO_LARGE)
    ordinary = await saga_start(api, order(ordinary_customer, (ordinary_book, 1)))
    screened = await saga_start(api, order(screened_customer, (screened_book, 1)))
    refused = await saga_start(api, order(refused_customer, (refused_book, 1)))

    sagas = {oid: await finished(api, oid, 60) for oid in (paid, short, ordinary, screened)}
    assert {oid: s["status"] for oid, s in sagas.items()} == dict.fromkeys(sagas, "COMPLETED")
    assert steps_of(await saga_history(api, paid)) == V1_STEPS  # finished as v1
    assert steps_of(await saga_history(api, ordinary)) == V1_STEPS  # below the review amount
    for oid in (short, screened):
        assert steps_of(await saga_history(api, oid)) == V2_SCREENED

    failed = await finished(api, refused, 60)
    assert failed["status"] == "FAILED"
    assert failed["failure_reason"].startswith("payment.screen_order failed")
    assert "FraudSuspected" in failed["failure_reason"]
    history = await saga_history(api, refused)
    undone = [e["step"] for e in history if e["type"] == "CompensationCompleted"]
    assert undone == ["inventory.release_stock", "order.cancel_order"]
    assert "payment.process_payment" not in steps_of(history)

    assert shop.stock_of(paid_book) == (4, 0) and shop.stock_of(short_book) == (1, 0)
    assert shop.stock_of(refused_book) == (2, 0)
    assert shop.balance_of(paid_customer) == Decimal(LARGE)
    assert shop.balance_of(short_customer) == Decimal(0)
    assert shop.balance_of(refused_customer) == Decimal(TOO_LARGE)
    shop.check([paid, short, ordinary, screened, refused])

    # What `cloudmart replay` gates a deploy on: every history matches the code deployed
    # now; rolled back to v1, the sagas that recorded the patch would not.
    engine = create_engine(deployment.database_url, pool_size=1, max_overflow=0)
    try:
        on_v2 = await replay_all(WORKFLOWS, from_database(engine))
        on_v1 = await replay_all(workflows_of("order_saga_v1"), from_database(engine))
    finally:
        await engine.dispose()
    assert len(on_v2) == 5 and all(r.matching for r in on_v2), render(on_v2)
    diverged = {r.workflow_id for r in on_v1 if not r.matching}
    assert diverged == {short, screened, refused}, render(on_v1)
