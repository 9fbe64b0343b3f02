"""The orchestrator's console as ``./scripts/run.sh`` serves it: embedded, on a SQLite file with
the in-process transport, no broker. Its pages answer, and bad input gets a 4xx with a JSON
body (the browser tests, on real processes, are ``test_console.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from rest_support import prepared_database, running, settings_for

from services.orchestrator.main import build_app

US = {"name": "Hanako", "line1": "1", "city": "Springfield", "postal_code": "1", "country": "US"}
FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    path = tmp_path / "cloudmart.db"
    async with prepared_database(f"sqlite+aiosqlite:///{path}"):
        pass
    async with running(build_app(settings_for(None, sqlite_path=str(path)))) as client:
        yield client


async def failed_saga(api: httpx.AsyncClient) -> str:
    body = {"customer_id": 1, "items": [{"book_id": 1, "quantity": 1}], "shipping_address": US}
    started = await api.post("/saga/start", json=body)
    oid = str(started.json()["order_id"])
    saga = (await api.get(f"/saga/{oid}/status", params={"wait": 10})).json()
    assert saga["status"] == "FAILED"
    return oid


async def test_embedded_the_console_serves_its_pages_and_files(api: httpx.AsyncClient) -> None:
    oid = await failed_saga(api)
    overview = await api.get("/ui")
    assert overview.status_code == 200 and overview.headers["content-type"].startswith("text/html")
    assert "Embedded: commands are calls in this process" in overview.text
    assert "ShippingFailed" in overview.text
    listed = await api.get("/ui/sagas", params={"status": "FAILED", "failed_step": ""})
    assert listed.status_code == 200 and oid in listed.text
    page = await api.get(f"/ui/sagas/{oid}")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert page.text.index("payment.cancel_payment") < page.text.index("order.cancel_order")
    for name, kind in (("console.css", "text/css"), ("console.js", "text/javascript")):
        served = await api.get(f"/ui/static/{name}")
        assert served.status_code == 200 and served.headers["content-type"].startswith(kind)


async def test_bad_console_input_gets_a_4xx_with_a_json_body(api: httpx.AsyncClient) -> None:
    oid = await failed_saga(api)
    refused = {
        "status": await api.get("/ui/sagas", params={"status": "LOST"}),
        "time": await api.get("/ui/sagas", params={"created_after": "yesterday"}),
        "cursor": await api.get("/ui/sagas", params={"cursor": "zz"}),
        "no reason": await api.post(f"/ui/sagas/{oid}/retry", content="reason=+", headers=FORM),
        "no form": await api.post(f"/ui/sagas/{oid}/retry", json={"reason": "x"}),
        "bulk action": await api.post("/ui/bulk", content="action=drop", headers=FORM),
    }
    for what, response in refused.items():
        assert response.status_code == 422, (what, response.text)
        assert response.json()["error"] == "InvalidCommand", what
    unknown = await api.get("/ui/sagas/no-such-order")
    assert unknown.status_code == 404 and unknown.json()["error"] == "SagaUnknown"
    assert (await api.get("/ui/static/other.js")).status_code == 404
    # An action that does not apply: the saga's page again, saying why, with a 409.
    finished = await api.post(f"/ui/sagas/{oid}/retry", content="reason=again", headers=FORM)
    assert finished.status_code == 409 and "Refused:" in finished.text


async def test_a_bulk_action_confirms_how_many_sagas_it_touches_before_it_acts(
    api: httpx.AsyncClient,
) -> None:
    oids = [await failed_saga(api) for _ in range(2)]
    selection = "&".join(f"order_id={oid}" for oid in oids)
    confirm = await api.post("/ui/bulk", content=f"action=retry&{selection}", headers=FORM)
    assert confirm.status_code == 200 and "Retry 2 sagas?" in confirm.text
    done = await api.post(
        "/ui/bulk", content=f"action=retry&{selection}&reason=now&confirm=yes", headers=FORM
    )
    assert done.status_code == 200 and "Retry: 0 of 2 accepted" in done.text
    assert done.text.count("refused:") == 2  # finished sagas: retry does not apply
