"""The orchestrator's operator console in a real browser (Debian's Chromium driven by
Playwright), against real processes on MariaDB and RabbitMQ (SPEC §8, "Console").

Every page visited is checked for the basics of accessibility: a title, the header, navigation
and main landmarks, every action a button with a name, every field labelled, and no handler a
keyboard cannot reach; every link, box and button here is used from the keyboard. The last
test photographs the overview and a compensated saga for the README.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from browser import accessible, browser_page, press, require_chromium, type_into
from conftest import until
from playwright.async_api import expect
from processes import Deployment, deployed
from seed_scenarios import parked_saga, rename_step, saga_history, saga_start
from seed_scenarios import saga_finished as finished
from shop import US, Shop, order

pytestmark = [pytest.mark.mysql, pytest.mark.rabbitmq, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    require_chromium()
    with deployed(
        "orchestration",
        "console_browser",
        tmp_path_factory.mktemp("console"),
        base_port=30100,
        namespace=f"console_{uuid.uuid4().hex[:8]}",
        CLOUDMART_REQUEST_TIMEOUT="2",
        CLOUDMART_LEASE_SECONDS="3",
        CLOUDMART_COMPENSATION_ALERT_ATTEMPTS="2",
    ) as deployment:
        yield deployment


async def test_the_overview_leads_to_a_saga_failed_at_payment_compensated_release_stock_then_cancel(
    api: httpx.AsyncClient, shop: Shop, deployment: Deployment
) -> None:
    book, customer = shop.book("10.00", 5), shop.customer("5.00")
    oid = await saga_start(api, order(customer, (book, 1)))
    assert (await finished(api, oid))["status"] == "FAILED"
    async with browser_page(deployment.url("orchestrator")) as page:
        await page.goto("/ui")
        await expect(page).to_have_title(re.compile("^Overview"))
        await accessible(page)
        dead = page.get_by_role("region", name="Dead letters").locator("tbody tr")
        await expect(dead).to_have_count(4)  # one queue per service, as dead-letters list reads
        await expect(dead.first).to_contain_text(f"{deployment.namespace}.order.dead")
        failures = page.get_by_role("region", name="Recent failures")
        await press(page, failures.get_by_role("link", name="payment.process_payment"))
        await expect(page).to_have_url(
            re.compile(r"/ui/sagas\?failed_step=payment\.process_payment")
        )
        await accessible(page)
        await press(page, page.get_by_role("link", name=oid))
        await expect(page.get_by_role("heading", level=1)).to_have_text(f"Saga {oid}")
        forward = page.get_by_role("list", name=re.compile("^Forward steps"))
        await expect(forward.locator("h3")).to_have_text(
            ["order.create_order", "inventory.reserve_stock", "payment.process_payment"]
        )
        await expect(forward.get_by_role("listitem").nth(2)).to_contain_text("PaymentFailed")
        compensations = page.get_by_role("list", name=re.compile("^Compensations"))
        await expect(compensations.locator("h3")).to_have_text(
            ["inventory.release_stock", "order.cancel_order"]
        )
        await expect(compensations.get_by_role("listitem").first).to_contain_text("COMPENSATED")
        await accessible(page)
    shop.check([oid])


async def test_the_saga_list_shows_a_new_saga_without_being_reloaded(
    api: httpx.AsyncClient, shop: Shop, deployment: Deployment
) -> None:
    book, customer = shop.book("10.00", 5), shop.customer("100.00")
    async with browser_page(deployment.url("orchestrator")) as page:
        await page.goto("/ui/sagas")
        await expect(page).to_have_title(re.compile("^Sagas"))
        loaded = await page.evaluate("performance.timeOrigin")
        oid = await saga_start(api, order(customer, (book, 1)))
        row = page.locator("#saga-rows tr", has=page.get_by_role("link", name=oid))
        await expect(row).to_contain_text("COMPLETED")
        assert await page.evaluate("performance.timeOrigin") == loaded  # the same document
    await finished(api, oid)
    shop.check([oid])


async def test_a_parked_saga_resumed_from_its_page_with_a_reason_completes(
    api: httpx.AsyncClient, shop: Shop, deployment: Deployment, sql: sa.Engine
) -> None:
    oid, book, _customer = await parked_saga(api, shop, deployment, sql)
    rename_step(sql, oid, "shipping.arrange_courier", "shipping.arrange_shipping")
    async with browser_page(deployment.url("orchestrator")) as page:
        await page.goto(f"/ui/sagas/{oid}")
        await expect(page.locator("#saga-status")).to_have_text("PARKED")
        actions = page.get_by_role("form", name="Operator actions")
        await expect(actions.get_by_role("button")).to_have_text(["Resume", "Compensate"])
        await accessible(page)
        await type_into(page, actions.get_by_label("Reason"), "v1 redeployed")
        await press(page, actions.get_by_role("button", name="Resume"))
        # The page follows the saga (live refresh) until it completes.
        await expect(page.locator("#saga-status")).to_have_text("COMPLETED")
        await page.reload()
        history = page.locator("table.history tbody tr", has_text="OperatorAction")
        await expect(history).to_have_count(1)
        await press(page, history.get_by_text("payload"))
        await expect(history.locator("pre")).to_contain_text('"reason": "v1 redeployed"')
        await accessible(page)
    actions_recorded = [
        e["payload"] for e in await saga_history(api, oid) if e["type"] == "OperatorAction"
    ]
    assert [(a["action"], a["reason"]) for a in actions_recorded] == [("resume", "v1 redeployed")]
    assert shop.stock_of(book) == (4, 0)
    shop.check([oid])


async def flagged_past_the_pivot(
    api: httpx.AsyncClient, shop: Shop, deployment: Deployment, count: int
) -> list[str]:
    """``count`` sagas whose shipping is arranged while the order service is paused, so that
    completing each order keeps failing until the sagas are flagged for an operator. The
    order service stays paused."""
    book, customer = shop.book("10.00", 10), shop.customer("100.00")
    deployment.pause("shipping")
    try:
        oids = [await saga_start(api, order(customer, (book, 1))) for _ in range(count)]

        async def paid() -> bool:
            bodies = [(await api.get(f"/saga/{oid}/status")).json() for oid in oids]
            return all(b["status"] == "PAYMENT_COMPLETED" for b in bodies)

        await until(paid, timeout=20)
        deployment.pause("order")
    finally:
        deployment.resume("shipping")

    async def flagged() -> bool:
        bodies = [(await api.get(f"/saga/{oid}/status")).json() for oid in oids]
        return all(b["status"] == "SHIPPING_ARRANGED" and b["needs_operator"] for b in bodies)

    await until(flagged, timeout=30)
    return oids


async def retries(api: httpx.AsyncClient, oid: str) -> list[str]:
    """The reasons of the operator's retries in the saga's history."""
    history = await saga_history(api, oid)
    return [
        e["payload"]["reason"]
        for e in history
        if e["type"] == "OperatorAction" and e["payload"]["action"] == "retry"
    ]


async def test_three_flagged_sagas_selected_in_the_list_are_retried_in_bulk(
    api: httpx.AsyncClient, shop: Shop, deployment: Deployment
) -> None:
    try:
        oids = await flagged_past_the_pivot(api, shop, deployment, 3)
        async with browser_page(deployment.url("orchestrator")) as page:
            await page.goto("/ui/sagas?needs_operator=true")
            await accessible(page)
            for oid in oids:
                await press(page, page.get_by_role("checkbox", name=f"Select saga {oid}"), "Space")
            await press(page, page.get_by_role("button", name="Retry selected"))
            await expect(page.get_by_role("heading", level=1)).to_have_text("Retry 3 sagas?")
            await accessible(page)
            await type_into(page, page.get_by_label("Reason"), "order service back")
            await press(page, page.get_by_role("button", name="Retry 3 sagas"))
            await expect(page.get_by_role("heading", level=1)).to_have_text(
                "Retry: 3 of 3 accepted"
            )
            await accessible(page)

        async def recorded() -> bool:
            return all([await retries(api, oid) for oid in oids])

        # Each retry is recorded before the attempt it causes (with the order service still
        # paused, that attempt times out too); the one after it, once the service is back,
        # succeeds and clears the flag.
        await until(recorded, timeout=20)
        assert [await retries(api, oid) for oid in oids] == [["order service back"]] * 3
    finally:
        deployment.resume("order")
    for oid in oids:
        saga = await finished(api, oid)
        assert (saga["status"], saga["needs_operator"]) == ("COMPLETED", False), saga
    shop.check(oids)


async def test_in_prod_the_console_asks_for_the_key_once_and_no_page_or_url_holds_it(
    api: httpx.AsyncClient, shop: Shop, deployment: Deployment
) -> None:
    book, customer = shop.book("10.00", 5), shop.customer("100.00")
    oid = await saga_start(api, order(customer, (book, 1)))
    await finished(api, oid)
    key = f"console-key-{uuid.uuid4().hex}"
    deployment.start("orchestrator-2", env={"CLOUDMART_ENV": "prod", "CLOUDMART_API_KEY": key})
    try:
        url = deployment.url("orchestrator-2")
        async with httpx.AsyncClient(base_url=url) as prod:
            for path in ("/ui", "/ui/sagas", f"/ui/sagas/{oid}"):
                refused = await prod.get(path)
                assert refused.status_code == 401, path
                assert refused.headers["content-type"].startswith("text/html")
                assert 'id="key-form"' in refused.text
                assert oid not in refused.text and "Hanako" not in refused.text
            wrong = await prod.get(f"/ui/sagas/{oid}", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and oid not in wrong.text
            assert (await prod.get("/ui/static/console.js")).status_code == 200
            shown = await prod.get(f"/ui/sagas/{oid}", headers={"Authorization": f"Bearer {key}"})
            assert shown.status_code == 200 and "Hanako" in shown.text
            assert key not in shown.text

        async with browser_page(url) as page:
            sent: list[tuple[str, str | None]] = []
            page.on("request", lambda r: sent.append((r.url, r.headers.get("authorization"))))
            await page.goto("/ui/sagas")
            await expect(page).to_have_title(re.compile("^API key"))
            await accessible(page)
            await type_into(page, page.get_by_label("API key"), key)
            await press(page, page.get_by_role("button", name="Use this key"))
            await expect(page).to_have_title(re.compile("^Sagas"))
            # A form sent with the key (GET: the filter; POST: a bulk action, confirmed).
            await type_into(page, page.get_by_label("Order id starts with"), oid)
            await press(page, page.get_by_role("button", name="Filter"))
            await expect(page).to_have_url(re.compile(f"order_id={oid}"))
            await expect(page.locator("#saga-rows tr")).to_have_count(1)
            await press(page, page.get_by_role("checkbox", name=f"Select saga {oid}"), "Space")
            await press(page, page.get_by_role("button", name="Retry selected"))
            await expect(page.get_by_role("heading", level=1)).to_have_text("Retry 1 saga?")
            await type_into(page, page.get_by_label("Reason"), "try it")
            await press(page, page.get_by_role("button", name="Retry 1 saga"))
            await expect(page.get_by_role("heading", level=1)).to_have_text(
                "Retry: 0 of 1 accepted"
            )
            await expect(page.get_by_role("table")).to_contain_text("refused")
            await press(page, page.get_by_role("link", name=oid))
            await expect(page.get_by_role("heading", level=1)).to_have_text(f"Saga {oid}")
            await expect(page.locator("#saga-status")).to_have_text("COMPLETED")
            await accessible(page)
            await press(page, page.get_by_role("link", name="Overview"))
            await expect(page).to_have_title(re.compile("^Overview"))
            assert key not in await page.content()
            assert await page.evaluate("sessionStorage.getItem('cloudmart.apiKey')") == key
            pages = [(u, auth) for u, auth in sent if "/ui" in u and "/ui/static/" not in u]
            assert all(key not in u for u, _ in sent)
            assert pages[0][1] is None  # the first navigation: the key prompt
            assert {auth for _, auth in pages[1:]} == {f"Bearer {key}"}
            assert len(pages) >= 7

            await page.evaluate("sessionStorage.setItem('cloudmart.apiKey', 'wrong')")
            await page.reload()
            await expect(page.locator("#key-message")).to_contain_text("refused")
            assert await page.evaluate("sessionStorage.getItem('cloudmart.apiKey')") is None
        assert key not in deployment.log("orchestrator-2", tail=None)
    finally:
        deployment.kill("orchestrator-2")


async def test_the_overview_and_a_compensated_saga_are_photographed_for_the_readme(
    api: httpx.AsyncClient, shop: Shop, deployment: Deployment
) -> None:
    book, rich, poor = shop.book("12.00", 50), shop.customer("500.00"), shop.customer("1.00")
    bodies: list[dict[str, Any]] = [order(rich, (book, 1)) for _ in range(4)]
    bodies += [order(poor, (book, 1)), order(rich, (book, 60)), order(rich, (book, 2), address=US)]
    oids = [await saga_start(api, body) for body in bodies]
    sagas = [await finished(api, oid) for oid in oids]
    compensated = sagas[-1]
    assert compensated["status"] == "FAILED" and compensated["failed_step"] == (
        "shipping.arrange_shipping"
    )
    overview, saga = ROOT / "docs" / "console-overview.png", ROOT / "docs" / "console-saga.png"
    overview.parent.mkdir(exist_ok=True)
    async with browser_page(deployment.url("orchestrator")) as page:
        await page.goto("/ui")
        await expect(page.get_by_role("region", name="Recent failures")).to_contain_text(
            "ShippingFailed"
        )
        await page.screenshot(path=str(overview), full_page=True)
        await page.goto(f"/ui/sagas/{compensated['order_id']}")
        compensations = page.get_by_role("list", name=re.compile("^Compensations"))
        await expect(compensations.locator("h3")).to_have_count(3)
        await page.screenshot(path=str(saga), full_page=True)
    for picture in (overview, saga):
        assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shop.check(oids)


def test_the_console_bench_fills_the_database_and_times_every_kind_of_page(
    deployment: Deployment, tmp_path: Path
) -> None:
    out = tmp_path / "console.json"
    url = deployment.url("orchestrator")
    done = subprocess.run(
        [sys.executable, "-m", "cloudmart", "bench", "console", "--url", url,
         "--sagas", "600", "--requests", "20", "--out", str(out)],
        env=deployment.env(), cwd=tmp_path, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    timings = json.loads(out.read_text())
    pages = {t["page"] for t in timings}
    assert {"overview", "list", "saga page (copy)", "saga page (original)"} <= pages
    assert "list, after 500 sagas" in pages
    assert all(0 < t["p50_ms"] <= t["p95_ms"] <= t["max_ms"] for t in timings)
    assert "| overview | 20 |" in done.stdout
