"""The orchestrator app in one process: embedded (SQLite) and on MariaDB, with the in-process
transport calling the business operations directly — the mode `cloudmart up` runs without
infrastructure."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from conftest import mysql_database_url
from fastapi import FastAPI
from rest_support import prepared_database, running, settings_for
from round_trips import count_round_trips
from sqlalchemy.ext.asyncio import create_async_engine

from activities.db import create_engine
from contracts.commands import PlaceOrder
from engine import Engine
from engine.adapters import InMemoryTransport, SqlHistoryStore
from orchestration_pattern.orchestrator import Orchestrator
from services.orchestrator.api import SagaView
from services.orchestrator.main import build_app

JP = {
    "name": "Hanako",
    "line1": "1-2-3",
    "city": "Tokyo",
    "postal_code": "150-0002",
    "country": "JP",
}


def order(*items: tuple[int, int], customer: int = 1, country: str = "JP") -> dict[str, object]:
    return {
        "customer_id": customer,
        "items": [{"book_id": b, "quantity": q} for b, q in items],
        "shipping_address": {**JP, "country": country},
    }


@pytest.fixture(params=["sqlite", "mariadb"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'orchestrator.db'}"
    return mysql_database_url("cloudmart_test_orchestrator_inprocess")


@pytest.fixture
async def app(database_url: str, tmp_path: Path) -> FastAPI:
    async with prepared_database(database_url):
        pass
    embedded = database_url.startswith("sqlite")
    settings = settings_for(
        None if embedded else database_url, sqlite_path=str(tmp_path / "orchestrator.db")
    )
    return build_app(settings)


@pytest.fixture
async def api(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with running(app) as client:
        yield client


async def started(api: httpx.AsyncClient, body: dict[str, object], **headers: str) -> str:
    response = await api.post("/saga/start", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return str(response.json()["order_id"])


async def final(api: httpx.AsyncClient, order_id: str) -> dict[str, object]:
    body: dict[str, object] = (
        await api.get(f"/saga/{order_id}/status", params={"wait": 10})
    ).json()
    return body


async def test_a_saga_completes_and_reports_every_step(api: httpx.AsyncClient) -> None:
    oid = await started(api, order((1, 2)))
    saga = await final(api, oid)
    assert saga["status"] == "COMPLETED"
    assert [s["name"] for s in saga["steps"]] == [  # type: ignore[union-attr]
        "order.create_order",
        "inventory.reserve_stock",
        "payment.process_payment",
        "shipping.arrange_shipping",
        "order.complete_order",
    ]
    history = (await api.get(f"/saga/{oid}/history")).json()
    assert history[0]["type"] == "WorkflowStarted" and history[-1]["type"] == "WorkflowCompleted"


async def test_the_answer_of_the_engine_that_ran_a_saga_is_what_the_database_holds(
    api: httpx.AsyncClient, database_url: str
) -> None:
    """The orchestrator answers a saga it finished from memory; a reader of the database must
    see the very same status (timestamps, results, errors and all)."""
    done = await started(api, order((1, 2)))
    failed = await started(api, order((1, 1), country="US"))
    answers = {oid: await final(api, oid) for oid in (done, failed)}
    assert [answers[done]["status"], answers[failed]["status"]] == ["COMPLETED", "FAILED"]
    db = create_async_engine(database_url)
    try:
        reader = Engine(SqlHistoryStore(db), InMemoryTransport({}), owner_id="reader")
        for oid, answer in answers.items():
            stored = SagaView.of(await reader.status(oid)).model_dump(mode="json")
            assert answer == stored
    finally:
        await db.dispose()


async def test_a_start_costs_two_round_trips_and_a_status_read_two(
    app: FastAPI, api: httpx.AsyncClient, database_url: str
) -> None:
    """The start: the read that answers 404 for an unknown customer or book, then the saga's
    row, the check that it is new, its first event and the COMMIT in one packet. A status
    read of a saga driven elsewhere: its row by order id, then its row and history in one
    packet."""
    if database_url.startswith("sqlite"):
        pytest.skip("round trips are counted on MariaDB's driver")
    orchestrator: Orchestrator = app.state.orchestrator
    await final(api, await started(api, order((1, 1))))  # the pool's connections are open
    sent = count_round_trips(orchestrator.db.engine)
    handle = await orchestrator.start(PlaceOrder.model_validate(order((1, 2))))
    assert len(sent) == 2, sent
    await final(api, handle.workflow_id)
    db = create_engine(database_url, pool_size=1)  # configured as a process's
    try:
        reader = Engine(SqlHistoryStore(db), InMemoryTransport({}), owner_id="reader")
        sent = count_round_trips(db)
        status = await reader.status(handle.workflow_id)
        assert status.status == "COMPLETED"
        assert len(sent) == 2, sent
    finally:
        await db.dispose()


async def test_a_failing_step_compensates_in_reverse_and_fails(api: httpx.AsyncClient) -> None:
    oid = await started(api, order((1, 1), country="US"))
    saga = await final(api, oid)
    assert saga["status"] == "FAILED"
    assert "ShippingFailed" in str(saga["failure_reason"])
    states = {s["name"]: s["state"] for s in saga["steps"]}  # type: ignore[union-attr]
    assert states["payment.process_payment"] == "COMPENSATED"
    assert states["shipping.arrange_shipping"] == "FAILED"
    listed = (await api.get("/saga", params={"status": "FAILED"})).json()["sagas"]
    assert [s["order_id"] for s in listed] == [oid]


async def test_idempotent_start_and_refused_reuse(api: httpx.AsyncClient) -> None:
    key = {"Idempotency-Key": "checkout-42"}
    first = await api.post("/saga/start", json=order((3, 1)), headers=key)
    again = await api.post("/saga/start", json=order((3, 1)), headers=key)
    other = await api.post("/saga/start", json=order((3, 2)), headers=key)
    assert (first.status_code, again.status_code, other.status_code) == (202, 200, 422)
    assert first.json()["order_id"] == again.json()["order_id"]


async def test_cancel_and_lookups_of_unknown_or_finished_sagas(api: httpx.AsyncClient) -> None:
    assert (await api.get("/saga/missing/status")).status_code == 404
    assert (await api.get("/saga/missing/history")).status_code == 404
    assert (await api.post("/saga/missing/cancel")).status_code == 404
    oid = await started(api, order((3, 1)))
    await final(api, oid)
    assert (await api.post(f"/saga/{oid}/cancel")).status_code == 409


async def test_bad_orders_are_refused_before_any_saga(api: httpx.AsyncClient) -> None:
    assert (await api.post("/saga/start", json=order((1, 0)))).status_code == 422
    assert (await api.post("/saga/start", json=order((1, 1), customer=99))).status_code == 404
    assert (await api.post("/saga/start", json=order((404, 1)))).status_code == 404
    assert (await api.get("/saga", params={"status": "NOPE"})).status_code == 422
    assert (await api.get("/saga")).json()["sagas"] == []


@pytest.mark.parametrize(("country", "outcome"), [("JP", "COMPLETED"), ("US", "FAILED")])
async def test_the_seeds_declarative_workflow_runs_the_saga_through_the_orchestrator(
    app: FastAPI, api: httpx.AsyncClient, country: str, outcome: str
) -> None:
    orchestrator: Orchestrator = app.state.orchestrator  # the api fixture runs the app
    handle = await orchestrator.start(
        PlaceOrder.model_validate(order((1, 2), country=country)),
        workflow="place_order_declarative",
    )
    saga = await final(api, handle.workflow_id)
    assert saga["status"] == outcome
    recorded = await orchestrator.engine.status(handle.workflow_id)
    assert recorded.workflow_name == "place_order_declarative"
    steps = {s["name"]: s["state"] for s in saga["steps"]}  # type: ignore[union-attr]
    if outcome == "COMPLETED":
        assert list(steps) == [
            "order.create_order",
            "inventory.reserve_stock",
            "payment.process_payment",
            "shipping.arrange_shipping",
            "order.complete_order",
        ]
        assert set(steps.values()) == {"COMPLETED"}
    else:
        assert steps["shipping.arrange_shipping"] == "FAILED"
        for step in ("order.create_order", "inventory.reserve_stock", "payment.process_payment"):
            assert steps[step] == "COMPENSATED"


async def test_in_prod_saga_reads_and_actions_need_the_api_key(
    database_url: str, tmp_path: Path
) -> None:
    async with prepared_database(database_url):
        pass
    embedded = database_url.startswith("sqlite")
    settings = settings_for(
        None if embedded else database_url,
        sqlite_path=str(tmp_path / "orchestrator.db"),
        env="prod",
        api_key="k3y",
        log_json=False,
    )
    async with running(build_app(settings)) as client:
        bearer = {"Authorization": "Bearer k3y"}
        oid = await started(client, order((1, 1)), **bearer)
        for path in (f"/saga/{oid}/status", f"/saga/{oid}/history", "/saga"):
            assert (await client.get(path)).status_code == 401, path
            assert (await client.get(path, headers=bearer)).status_code == 200, path
        refused = await client.post(f"/saga/{oid}/retry", json={"reason": "r"})
        assert refused.status_code == 401
        assert (await client.get("/health")).status_code == 200
        done = await client.get(f"/saga/{oid}/status", params={"wait": 10}, headers=bearer)
        assert done.json()["status"] == "COMPLETED"  # nothing left running at shutdown
