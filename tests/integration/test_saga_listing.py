"""``GET /saga`` and ``GET /saga/stats`` on the orchestrator app in one process (SQLite and
MariaDB): the filters, the pages, the counts, the refusals and what the OpenAPI document says."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import mysql_database_url
from rest_support import VALID_ADDRESS, assert_error, prepared_database, running, settings_for

from services.orchestrator.main import build_app


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mysql)])
async def api(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    sqlite = tmp_path / "orchestrator.db"
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{sqlite}"
    else:
        url = mysql_database_url("cloudmart_test_list_api")
    async with prepared_database(url):
        pass
    settings = settings_for(None if request.param == "sqlite" else url, sqlite_path=str(sqlite))
    async with running(build_app(settings)) as client:
        yield client


async def finished(api: httpx.AsyncClient, *, country: str = "JP") -> dict[str, Any]:
    body = {
        "customer_id": 1,
        "items": [{"book_id": 1, "quantity": 1}],
        "shipping_address": {**VALID_ADDRESS, "country": country},
    }
    started = await api.post("/saga/start", json=body)
    assert started.status_code == 202, started.text
    order_id = started.json()["order_id"]
    saga: dict[str, Any] = (await api.get(f"/saga/{order_id}/status", params={"wait": 10})).json()
    assert saga["status"] in ("COMPLETED", "FAILED"), saga
    return saga


async def listing(api: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await api.get("/saga", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def order_ids(page: dict[str, Any]) -> list[str]:
    return [saga["order_id"] for saga in page["sagas"]]


async def test_the_filters_select_sagas_newest_first(api: httpx.AsyncClient) -> None:
    completed = [await finished(api) for _ in range(2)]
    failed = await finished(api, country="US")
    newest_first = [failed["order_id"], completed[1]["order_id"], completed[0]["order_id"]]

    everything = await listing(api)
    assert order_ids(everything) == newest_first
    assert everything["next_cursor"] is None
    assert everything["sagas"][0]["steps"] == []  # a listing carries no steps

    assert order_ids(await listing(api, status="COMPLETED")) == newest_first[1:]
    both = await listing(api, status=["FAILED", "COMPLETED"])
    assert order_ids(both) == newest_first
    assert order_ids(await listing(api, status="PARKED")) == []
    assert order_ids(await listing(api, needs_operator="false")) == newest_first
    assert order_ids(await listing(api, needs_operator="true")) == []
    assert order_ids(await listing(api, workflow="place_order")) == newest_first
    assert order_ids(await listing(api, workflow="restock")) == []
    shipping = await listing(api, failed_step="shipping.arrange_shipping")
    assert order_ids(shipping) == [failed["order_id"]]
    assert order_ids(await listing(api, failed_step="payment.process_payment")) == []
    prefix = failed["order_id"][:12]
    assert order_ids(await listing(api, order_id=prefix)) == [failed["order_id"]]

    # created_after is inclusive, created_before exclusive; any RFC 3339 offset.
    second = datetime.fromisoformat(completed[1]["created_at"])
    tokyo = second.astimezone(timezone(timedelta(hours=9))).isoformat()
    assert order_ids(await listing(api, created_after=tokyo)) == newest_first[:2]
    assert order_ids(await listing(api, created_before=tokyo)) == newest_first[2:]
    later = (second + timedelta(days=1)).isoformat()
    assert order_ids(await listing(api, created_after=later)) == []


async def test_following_next_cursor_lists_every_saga_once_while_new_ones_start(
    api: httpx.AsyncClient,
) -> None:
    for _ in range(5):
        await finished(api)
    expected = order_ids(await listing(api))
    seen: list[str] = []
    new: list[str] = []
    page = await listing(api, limit=2)
    while True:
        seen.extend(order_ids(page))
        if page["next_cursor"] is None:
            break
        # Newer than every page handed out: never on a later one.
        new.append((await finished(api))["order_id"])
        page = await listing(api, limit=2, cursor=page["next_cursor"])
    assert seen == expected
    assert len(new) == 2  # pages of 2, 2 and 1
    assert order_ids(await listing(api)) == new[::-1] + expected


async def test_stats_count_sagas_by_status_and_the_operator_flag(api: httpx.AsyncClient) -> None:
    empty = await api.get("/saga/stats")
    assert empty.status_code == 200, empty.text
    assert empty.json() == {"by_status": {}, "needs_operator": 0}
    await finished(api)
    await finished(api)
    await finished(api, country="US")
    stats = (await api.get("/saga/stats")).json()
    assert stats == {"by_status": {"COMPLETED": 2, "FAILED": 1}, "needs_operator": 0}


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"created_after": "yesterday"}, "created_after"),
        ({"created_after": "2026-12-03T10:00:00"}, "created_after"),  # no offset
        ({"created_before": "2026-02-30T10:00:00Z"}, "created_before"),
        ({"created_before": "2026-12-03T10:00:00+24:00"}, "created_before"),
        ({"limit": 501}, "limit"),
        ({"limit": 0}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "00" * 7}, "cursor"),
        ({"status": "BOGUS"}, "status"),
        ({"needs_operator": "maybe"}, "needs_operator"),
        ({"order_id": "a%"}, "order_id"),
        ({"workflow": "x" * 101}, "workflow"),
        ({"failed_step": "a b"}, "failed_step"),
    ],
)
async def test_bad_parameters_are_a_422_naming_the_parameter(
    api: httpx.AsyncClient, params: dict[str, Any], parameter: str
) -> None:
    body = assert_error(await api.get("/saga", params=params), 422)
    assert body["error"] == "validation_error"
    errors = body["details"]["errors"]
    assert [e["loc"][:2] for e in errors] == [["query", parameter]], errors
    assert errors[0]["msg"]


async def test_a_bad_time_says_what_a_good_one_looks_like(api: httpx.AsyncClient) -> None:
    body = assert_error(await api.get("/saga", params={"created_after": "today"}), 422)
    assert "RFC 3339" in body["details"]["errors"][0]["msg"]


async def test_the_openapi_document_describes_the_listing_and_the_counts(
    api: httpx.AsyncClient,
) -> None:
    paths = (await api.get("/openapi.json")).json()["paths"]
    listed = paths["/saga"]["get"]
    params = {p["name"]: p for p in listed["parameters"]}
    assert set(params) == {
        "status",
        "needs_operator",
        "failed_step",
        "workflow",
        "created_after",
        "created_before",
        "order_id",
        "limit",
        "cursor",
    }
    assert all(p.get("description") for p in params.values()), params
    assert params["limit"]["schema"]["maximum"] == 500
    assert any(s.get("format") == "date-time" for s in params["created_after"]["schema"]["anyOf"])
    assert params["status"]["schema"]["anyOf"][0]["type"] == "array"
    page = listed["responses"]["200"]["content"]["application/json"]["schema"]
    assert page == {"$ref": "#/components/schemas/SagaPage"}
    stats = paths["/saga/stats"]["get"]
    assert stats["summary"]
    assert stats["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SagaStats"
    }
