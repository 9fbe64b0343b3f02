"""The seed's nine scenarios, written once and run against both patterns.

Each pattern's end-to-end module subclasses :class:`SeedScenarios` with its :class:`Style`
(``class TestSeedScenarios(SeedScenarios): style = ORCHESTRATION``) and provides the fixtures
``api`` (a client of the pattern's entry service) and ``shop`` on its own deployment. A style
says how an order starts and ends in that pattern, which status a compensated order ends in,
and how the pattern shows which refusal undid an order (the orchestrator's failure reason and
history; the choreography's events).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

import httpx
import sqlalchemy as sa
from choreography_support import finished as order_finished
from choreography_support import run_all as orders_run_all
from choreography_support import start as order_start
from conftest import until
from processes import Deployment
from shop import JP, US, Shop, order

from choreography_pattern import events as ev

Body = dict[str, Any]


@dataclass(frozen=True)
class Style:
    """How one pattern is driven and what it shows (see the module docstring)."""

    name: str
    failed: str
    start: Callable[[httpx.AsyncClient, Body], Awaitable[str]]
    finished: Callable[[httpx.AsyncClient, str], Awaitable[Body]]
    run_all: Callable[[httpx.AsyncClient, Shop, list[Body], float], Awaitable[dict[str, str]]]
    # (api, order id, final body) -> every forward step took effect, as the pattern shows it
    every_step: Callable[[httpx.AsyncClient, str, Body], Awaitable[None]]
    # (api, order id, final body, "stock" | "payment" | "shipping") -> that refusal undid it
    undone_by: Callable[[httpx.AsyncClient, str, Body, str], Awaitable[None]]


# orchestration ------------------------------------------------------------------------------


async def saga_start(api: httpx.AsyncClient, body: Body) -> str:
    response = await api.post("/saga/start", json=body)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/saga/{response.json()['order_id']}/status"
    return str(response.json()["order_id"])


async def saga_status(api: httpx.AsyncClient, oid: str) -> str:
    return str((await api.get(f"/saga/{oid}/status")).json()["status"])


async def saga_history(api: httpx.AsyncClient, oid: str) -> list[dict[str, Any]]:
    response = await api.get(f"/saga/{oid}/history")
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()
    return events


async def attempted_past_its_deadline(
    api: httpx.AsyncClient, oid: str, step: str, timeout: float
) -> None:
    """Wait until the saga's history shows a failed attempt of ``step`` after its deadline."""
    deadline = datetime.fromisoformat((await saga_history(api, oid))[0]["payload"]["deadline"])

    async def attempted() -> bool:
        return any(
            e["step"] == step
            and e["type"] in ("StepTimedOut", "StepRetrying")
            and datetime.fromisoformat(e["created_at"]).replace(tzinfo=None) > deadline
            for e in await saga_history(api, oid)
        )

    await until(attempted, timeout=timeout)


@contextlib.asynccontextmanager
async def paid_with_shipping_held(
    api: httpx.AsyncClient,
    shop: Shop,
    deployment: Deployment,
    *,
    price: str = "10.00",
    balance: str = "100.00",
) -> AsyncIterator[tuple[str, int, int]]:
    """A saga paid for while the shipping service is stopped, so that arranging shipping waits;
    shipping goes on when the block ends. One copy of a new book at ``price`` (5 in stock) for
    a new customer holding ``balance``. Yields (order id, book, customer)."""
    book, customer = shop.book(price, 5), shop.customer(balance)
    deployment.pause("shipping")
    try:
        oid = await saga_start(api, order(customer, (book, 1)))

        async def paid() -> bool:
            return await saga_status(api, oid) == "PAYMENT_COMPLETED"

        await until(paid, timeout=20)
        yield oid, book, customer
    finally:
        deployment.resume("shipping")


async def held_past_the_pivot(
    api: httpx.AsyncClient, shop: Shop, deployment: Deployment
) -> tuple[str, int, int]:
    """A saga whose shipping is arranged while the order service is stopped, so that
    completing the order waits. Returns (order id, book, customer); order stays paused."""
    async with paid_with_shipping_held(api, shop, deployment) as held:
        deployment.pause("order")
    oid = held[0]

    async def shipped() -> bool:
        return await saga_status(api, oid) == "SHIPPING_ARRANGED"

    await until(shipped, timeout=20)
    return held


async def parked_saga(
    api: httpx.AsyncClient, shop: Shop, deployment: Deployment, sql: sa.Engine
) -> tuple[str, int, int]:
    """A saga parked because its history no longer matches the workflow: the orchestrator is
    killed while shipping waits, the recorded step is renamed (as a deploy of other code would
    see it), and the restarted orchestrator parks the saga. Returns (order id, book,
    customer)."""
    async with paid_with_shipping_held(api, shop, deployment) as (oid, book, customer):
        deployment.kill("orchestrator")
        rename_step(sql, oid, "shipping.arrange_shipping", "shipping.arrange_courier")
    deployment.restart("orchestrator")

    async def parked() -> bool:
        return await saga_status(api, oid) == "PARKED"

    await until(parked, timeout=30)
    return oid, book, customer


def rename_step(sql: sa.Engine, oid: str, old: str, new: str) -> None:
    with sql.begin() as conn:
        renamed = conn.execute(
            sa.text(
                "UPDATE saga_step_logs SET step_name = :new WHERE step_name = :old AND saga_id ="
                " (SELECT saga_id FROM saga_instances WHERE order_id = :oid)"
            ),
            {"new": new, "old": old, "oid": oid},
        ).rowcount
    assert renamed >= 1


async def saga_finished(api: httpx.AsyncClient, order_id: str, timeout: float = 30) -> Body:
    async def terminal() -> Body | None:
        body: Body = (await api.get(f"/saga/{order_id}/status", params={"wait": 5})).json()
        return body if body["status"] in ("COMPLETED", "FAILED") else None

    return await until(terminal, timeout=timeout, interval=0.01)


async def sagas_run_all(
    api: httpx.AsyncClient, _shop: Shop, bodies: list[Body], timeout: float
) -> dict[str, str]:
    ids = await asyncio.gather(*(saga_start(api, body) for body in bodies))
    sagas = await asyncio.gather(*(saga_finished(api, oid, timeout) for oid in ids))
    return {saga["order_id"]: saga["status"] for saga in sagas}


async def saga_every_step(_api: httpx.AsyncClient, _oid: str, body: Body) -> None:
    assert [s["state"] for s in body["steps"]] == ["COMPLETED"] * 5


_REFUSALS = {"stock": "StockUnavailable", "payment": "PaymentFailed", "shipping": "ShippingFailed"}
_UNDONE = {
    "stock": ["order.cancel_order"],
    "payment": ["inventory.release_stock", "order.cancel_order"],
    "shipping": ["payment.cancel_payment", "inventory.release_stock", "order.cancel_order"],
}


async def saga_undone_by(api: httpx.AsyncClient, oid: str, body: Body, refusal: str) -> None:
    assert _REFUSALS[refusal] in body["failure_reason"]
    history = (await api.get(f"/saga/{oid}/history")).json()
    undone = [e["step"] for e in history if e["type"] == "CompensationCompleted"]
    assert undone == _UNDONE[refusal]  # in reverse order of the steps that ran


ORCHESTRATION = Style(
    name="orchestration",
    failed="FAILED",
    start=saga_start,
    finished=saga_finished,
    run_all=sagas_run_all,
    every_step=saga_every_step,
    undone_by=saga_undone_by,
)


# choreography -------------------------------------------------------------------------------


async def events_every_step(api: httpx.AsyncClient, oid: str, _body: Body) -> None:
    # The order service logs every event it sees; its handlers run concurrently, so the order
    # can complete before its own OrderCreated is logged: wait for all five.
    expected = {
        ev.ORDER_CREATED,
        ev.STOCK_RESERVED,
        ev.PAYMENT_COMPLETED,
        ev.SHIPPING_ARRANGED,
        ev.ORDER_COMPLETED,
    }

    async def all_seen() -> Body | None:
        current: Body = (await api.get(f"/orders/{oid}")).json()
        return current if expected <= {e["type"] for e in current["events"]} else None

    body: Body = await until(all_seen, timeout=10)
    assert {e["producer"] for e in body["events"]} >= {"order", "inventory", "payment", "shipping"}


_EVENTS = {
    "stock": {ev.STOCK_UNAVAILABLE, ev.PAYMENT_CANCELLED},
    "payment": {ev.PAYMENT_FAILED, ev.STOCK_RELEASED},
    "shipping": {ev.SHIPPING_FAILED, ev.PAYMENT_REFUNDED, ev.STOCK_RELEASED},
}


async def events_undone_by(_api: httpx.AsyncClient, _oid: str, body: Body, refusal: str) -> None:
    assert _EVENTS[refusal] <= {e["type"] for e in body["events"]}


CHOREOGRAPHY = Style(
    name="choreography",
    failed="CANCELLED",
    start=order_start,
    finished=order_finished,
    run_all=orders_run_all,
    every_step=events_every_step,
    undone_by=events_undone_by,
)


# the scenarios ------------------------------------------------------------------------------


class SeedScenarios:
    """The seed's scenarios; a subclass names its :class:`Style`."""

    style: ClassVar[Style]

    async def test_one_item_order_completes_with_every_effect(
        self, api: httpx.AsyncClient, shop: Shop
    ) -> None:
        book, customer = shop.book("1200.00", 10), shop.customer("5000.00")
        oid = await self.style.start(api, order(customer, (book, 2)))
        body = await self.style.finished(api, oid)
        assert body["status"] == "COMPLETED"
        await self.style.every_step(api, oid, body)
        assert shop.stock_of(book) == (8, 0)
        assert shop.balance_of(customer) == Decimal("2600.00")
        shop.check([oid])

    async def test_multi_item_order_completes(self, api: httpx.AsyncClient, shop: Shop) -> None:
        books = [shop.book(p, 5) for p in ("100.00", "250.50", "9.99")]
        customer = shop.customer("10000.00")
        oid = await self.style.start(
            api, order(customer, (books[0], 1), (books[1], 2), (books[2], 3))
        )
        assert (await self.style.finished(api, oid))["status"] == "COMPLETED"
        assert shop.balance_of(customer) == Decimal("10000.00") - Decimal("630.97")
        shop.check([oid])

    async def test_stock_shortage_undoes_the_order_with_nothing_reserved_and_no_money_moved(
        self, api: httpx.AsyncClient, shop: Shop
    ) -> None:
        book, customer = shop.book("100.00", 1), shop.customer("1000.00")
        oid = await self.style.start(api, order(customer, (book, 2)))
        body = await self.style.finished(api, oid)
        assert body["status"] == self.style.failed
        await self.style.undone_by(api, oid, body, "stock")
        assert shop.stock_of(book) == (1, 0)
        assert shop.balance_of(customer) == Decimal("1000.00")
        shop.check([oid])

    async def test_payment_failure_releases_the_stock(
        self, api: httpx.AsyncClient, shop: Shop
    ) -> None:
        book, customer = shop.book("800.00", 3), shop.customer("500.00")
        oid = await self.style.start(api, order(customer, (book, 1)))
        body = await self.style.finished(api, oid)
        assert body["status"] == self.style.failed
        await self.style.undone_by(api, oid, body, "payment")
        assert shop.stock_of(book) == (3, 0)
        assert shop.balance_of(customer) == Decimal("500.00")
        shop.check([oid])

    async def test_shipping_failure_returns_money_and_stock_with_no_live_shipment(
        self, api: httpx.AsyncClient, shop: Shop
    ) -> None:
        book, customer = shop.book("300.00", 4), shop.customer("1000.00")
        oid = await self.style.start(api, order(customer, (book, 2), address=US))
        body = await self.style.finished(api, oid)
        assert body["status"] == self.style.failed
        await self.style.undone_by(api, oid, body, "shipping")
        assert shop.stock_of(book) == (4, 0)
        assert shop.balance_of(customer) == Decimal("1000.00")
        live = "SELECT COUNT(*) FROM shipments WHERE order_id = :o AND status = 'ARRANGED'"
        assert shop.count(live, o=oid) == 0
        shop.check([oid])

    async def test_partial_failure_one_book_short_reserves_none_of_the_order(
        self, api: httpx.AsyncClient, shop: Shop
    ) -> None:
        plenty, scarce = shop.book("10.00", 50), shop.book("20.00", 1)
        customer = shop.customer("1000.00")
        oid = await self.style.start(api, order(customer, (plenty, 5), (scarce, 2)))
        assert (await self.style.finished(api, oid))["status"] == self.style.failed
        assert shop.stock_of(plenty) == (50, 0)
        assert shop.stock_of(scarce) == (1, 0)
        assert shop.balance_of(customer) == Decimal("1000.00")
        shop.check([oid])

    async def test_120_orders_for_30_copies_complete_exactly_30(
        self, api: httpx.AsyncClient, shop: Shop
    ) -> None:
        book, customer = shop.book("1.00", 30), shop.customer("100000.00")
        bodies = [order(customer, (book, 1)) for _ in range(120)]
        statuses = await self.style.run_all(api, shop, bodies, 120)
        assert list(statuses.values()).count("COMPLETED") == 30
        assert shop.stock_of(book) == (0, 0)
        shop.check(list(statuses))

    async def test_60_orders_by_one_customer_whose_balance_covers_20(
        self, api: httpx.AsyncClient, shop: Shop
    ) -> None:
        book, customer = shop.book("50.00", 1000), shop.customer("1000.00")
        bodies = [order(customer, (book, 1)) for _ in range(60)]
        statuses = await self.style.run_all(api, shop, bodies, 120)
        assert list(statuses.values()).count("COMPLETED") == 20
        assert shop.balance_of(customer) == Decimal("0.00")
        shop.check(list(statuses))

    async def test_200_orders_at_once_across_books_and_customers_all_end_and_conserve(
        self, api: httpx.AsyncClient, shop: Shop
    ) -> None:
        books = [shop.book(f"{10 + i}.00", 40) for i in range(8)]
        customers = [shop.customer("600.00") for _ in range(25)]
        bodies = [
            order(
                customers[i % 25],
                (books[i % 8], 1 + i % 3),
                (books[(i + 3) % 8], 1),
                address=US if i % 17 == 0 else JP,
            )
            for i in range(200)
        ]
        statuses = await self.style.run_all(api, shop, bodies, 180)
        assert len(statuses) == 200
        assert set(statuses.values()) == {"COMPLETED", self.style.failed}
        shop.check(list(statuses))
