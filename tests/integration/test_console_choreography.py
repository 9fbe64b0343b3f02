"""The order service's console in the choreography, in a real browser, against the four
services on MariaDB and Redis: a failed order's events in the order they were seen, who
emitted each and what its failure called for (SPEC §8, "Console")."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from browser import accessible, browser_page, press, require_chromium
from choreography_support import choreography_deployment, finished, start
from conftest import until
from playwright.async_api import expect
from processes import Deployment
from shop import Shop, order

pytestmark = [pytest.mark.mysql, pytest.mark.redis, pytest.mark.slow]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    require_chromium()
    with choreography_deployment(
        "console_choreography",
        tmp_path_factory.mktemp("console-choreography"),
        base_port=30200,
        namespace=f"console_{uuid.uuid4().hex[:8]}",
    ) as deployment:
        yield deployment


async def test_a_failed_orders_page_shows_its_events_in_order_with_their_emitters_and_compensations(
    api: httpx.AsyncClient, shop: Shop, deployment: Deployment
) -> None:
    book, customer = shop.book("10.00", 5), shop.customer("5.00")
    oid = await start(api, order(customer, (book, 1)))
    assert (await finished(api, oid))["status"] == "CANCELLED"

    async def every_event() -> list[tuple[str, str]] | None:
        # The order service logs its own OrderCancelled just after it cancels the order.
        events = (await api.get(f"/orders/{oid}")).json()["events"]
        seen = [(e["type"], e["producer"]) for e in events]
        return seen if ("OrderCancelled", "order") in seen else None

    seen = await until(every_event)
    assert ("PaymentFailed", "payment") in seen and ("StockReleased", "inventory") in seen
    async with browser_page(deployment.url("order")) as page:
        await page.goto("/ui")
        await expect(page).to_have_title("Orders · CloudMart console")
        await accessible(page)
        await press(page, page.get_by_role("link", name=oid))
        await expect(page.get_by_role("heading", level=1)).to_have_text(f"Order {oid}")
        await expect(page.locator("#order-status")).to_have_text("CANCELLED")
        rows = page.locator("table.events tbody tr")
        types = rows.locator(".event-type")
        await expect(types).to_have_count(len(seen))
        for row, (event_type, _producer) in enumerate(seen):
            await expect(types.nth(row)).to_contain_text(event_type)
        await expect(rows.locator(".producer")).to_have_text([p for _, p in seen])
        failure = rows.nth(seen.index(("PaymentFailed", "payment")))
        await expect(failure).to_contain_text("StockReleased seen")
        compensation = rows.nth(seen.index(("StockReleased", "inventory")))
        await expect(compensation).to_contain_text("undoes for PaymentFailed")
        await accessible(page)
    shop.check([oid])
