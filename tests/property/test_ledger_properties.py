"""Property: whatever the interleaving, the ledger and the rows agree.

Random interleavings of the operations that move money and stock over a few orders —
reservations, payments, shipments and completions, their compensations (releases, refunds,
cancels) in any order, restocks and top-ups — where any command may be delivered again with
the same key (a crash between commit and reply), right after or concurrently with the first
delivery, or much later. Refusals (short stock or balance, a country not served, a shipped
reservation, a tombstone, a reused key) are part of the game. Invariants, on SQLite and on
MariaDB: ``cloudmart check``'s ``ledger`` rule finds nothing, and each customer's
``balance + captured payments`` and each book's ``available + reserved + shipped`` equal what
they opened with plus the top-ups and restocks that took effect (counted from the replies, not
from the ledger).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import mysql_database_url
from domain_data import JP, clean, order
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from activities import (
    Database,
    arrange_shipping,
    cancel_order,
    cancel_payment,
    cancel_shipping,
    complete_order,
    create_order,
    process_payment,
    refund_payment,
    release_stock,
    reserve_stock,
    restock,
    top_up,
)
from activities.errors import DomainError
from cloudmart.check import check_connection
from cloudmart.check.rules import MONEY_TOTALS, STOCK_TOTALS
from cloudmart.schema import create_schema
from contracts.commands import (
    ArrangeShipping,
    OrderRef,
    OrderView,
    ProcessPayment,
    ReserveStock,
    Restock,
    TopUp,
)

BOOKS = (1, 2, 3)  # tests/domain_data.py: 10, 5 and 50 units
CUSTOMERS = (1, 2)  # 10000.00 and 500.00
ORDER_STEPS = (
    "reserve",
    "pay",
    "ship",
    "complete",
    "cancel_shipping",
    "release",
    "refund",
    "cancel_payment",
    "cancel_order",
)
DELIVERIES = ("once", "again", "together")  # a duplicate after the reply, or at the same time


@dataclasses.dataclass(frozen=True)
class Plan:
    orders: list[tuple[int, list[tuple[int, int]], bool]]  # customer, items, served country
    actions: list[tuple[Any, ...]]


FORWARD = ("reserve", "pay", "ship", "complete")
UNDO = {"ship": "cancel_shipping", "reserve": "release"}


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    """Each order's saga (a prefix of its forward steps, then maybe its compensations in
    reverse), the sagas interleaved at random, with stray steps, restocks, top-ups and late
    redeliveries mixed in; any delivery may be doubled."""
    n = draw(st.integers(1, 4))
    orders = [
        (
            draw(st.sampled_from(CUSTOMERS)),
            draw(
                st.lists(
                    st.tuples(st.sampled_from(BOOKS), st.integers(1, 4)),
                    min_size=1,
                    max_size=3,
                    unique_by=lambda item: item[0],
                )
            ),
            draw(st.sampled_from([True, True, True, False])),  # served country, mostly
        )
        for _ in range(n)
    ]
    delivery = st.sampled_from(DELIVERIES)
    scripts: list[list[tuple[Any, ...]]] = []
    for index in range(n):
        done = list(FORWARD[: draw(st.integers(0, 4))])
        script = [("step", index, name, draw(delivery)) for name in done]
        if "complete" not in done and draw(st.booleans()):
            refund = draw(st.sampled_from(["refund", "cancel_payment"]))
            undo = [UNDO.get(name, refund) for name in reversed(done)] + ["cancel_order"]
            script += [("step", index, name, draw(delivery)) for name in undo]
        scripts.append(script)
    stray = st.tuples(
        st.just("step"), st.integers(0, n - 1), st.sampled_from(ORDER_STEPS), delivery
    )
    stock_in = st.tuples(
        st.just("restock"),
        st.integers(0, 3),  # the key: a reused key with another body is refused
        st.sampled_from(BOOKS),
        st.integers(1, 5),
        delivery,
    )
    money_in = st.tuples(
        st.just("top_up"),
        st.integers(0, 3),
        st.sampled_from(CUSTOMERS),
        st.sampled_from([Decimal("0.01"), Decimal("12.50"), Decimal("3000.00")]),
        delivery,
    )
    redeliver = st.tuples(st.just("redeliver"), st.integers(0, 1000))
    extra = draw(st.lists(st.one_of(stray, stock_in, money_in, redeliver), max_size=8))
    # The interleaving: which script (or the extras, -1) the next action comes from.
    turns = [i for i, script in enumerate(scripts) for _ in script] + [-1] * len(extra)
    actions: list[tuple[Any, ...]] = []
    for turn in draw(st.permutations(turns)):
        actions.append(extra.pop() if turn < 0 else scripts[turn].pop(0))
    return Plan(orders, actions)


@dataclasses.dataclass
class Run:
    """What the replies said took effect, to hold the rows to without reading the ledger."""

    db: Database
    views: list[OrderView] = dataclasses.field(default_factory=list)
    restocked: dict[int, int] = dataclasses.field(default_factory=dict)
    topped_up: dict[int, Decimal] = dataclasses.field(default_factory=dict)
    applied: set[str] = dataclasses.field(default_factory=set)
    sent: list[Callable[[], Awaitable[Any]]] = dataclasses.field(default_factory=list)

    async def deliver(self, command: Callable[[], Awaitable[Any]], how: str) -> list[Any]:
        """Run ``command`` (again when the first reply is 'lost'); the replies, or the
        refusals, of each delivery."""
        self.sent.append(command)
        if how == "together":
            return list(await asyncio.gather(_outcome(command), _outcome(command)))
        replies = [await _outcome(command)]
        if how == "again":
            replies.append(await _outcome(command))
        return replies


async def _outcome(command: Callable[[], Awaitable[Any]]) -> Any:
    try:
        return await command()
    except DomainError as refusal:
        return refusal


def _step(run: Run, index: int, name: str) -> Callable[[], Awaitable[Any]]:
    db, view = run.db, run.views[index]
    oid, ref = view.order_id, OrderRef(order_id=view.order_id)
    forward: dict[str, Callable[[], Awaitable[Any]]] = {
        "reserve": lambda: reserve_stock(db, ReserveStock(order_id=oid, items=view.items)),
        "pay": lambda: process_payment(
            db,
            ProcessPayment(order_id=oid, customer_id=view.customer_id, amount=view.total_amount),
        ),
        "ship": lambda: arrange_shipping(
            db, ArrangeShipping(order_id=oid, address=view.shipping_address)
        ),
        "complete": lambda: complete_order(db, ref),
    }
    undo = {
        "cancel_shipping": cancel_shipping,
        "release": release_stock,
        "refund": refund_payment,
        "cancel_payment": cancel_payment,
        "cancel_order": cancel_order,
    }
    if name in forward:
        return forward[name]
    compensation = undo[name]
    return lambda: compensation(db, ref)


async def play(db: Database, plan: Plan) -> Run:
    run = Run(db)
    for i, (customer, items, served) in enumerate(plan.orders):
        address = JP if served else JP.model_copy(update={"country": "US"})
        placed = order(f"o-{i}", *items, customer_id=customer, address=address)
        run.views.append(await create_order(db, placed))
    for action in plan.actions:
        kind = action[0]
        if kind == "step":
            _, index, name, how = action
            await run.deliver(_step(run, index, name), how)
        elif kind == "restock":
            _, key, book, quantity, how = action
            command = Restock(request_id=f"r-{key}", book_id=book, quantity=quantity)
            replies = await run.deliver(lambda c=command: restock(db, c), how)
            if command.request_id not in run.applied and any(
                not isinstance(r, DomainError) for r in replies
            ):
                run.applied.add(command.request_id)
                run.restocked[book] = run.restocked.get(book, 0) + quantity
        elif kind == "top_up":
            _, key, customer, amount, how = action
            paid = TopUp(request_id=f"t-{key}", customer_id=customer, amount=amount)
            replies = await run.deliver(lambda c=paid: top_up(db, c), how)
            if paid.request_id not in run.applied and any(
                not isinstance(r, DomainError) for r in replies
            ):
                run.applied.add(paid.request_id)
                run.topped_up[customer] = run.topped_up.get(customer, Decimal(0)) + amount
        elif run.sent:  # a command delivered before comes again, late
            await _outcome(run.sent[action[1] % len(run.sent)])
    return run


def verify(sync: sa.Engine, run: Run, opened: tuple[dict[int, int], dict[int, Decimal]]) -> None:
    with sync.connect() as conn:
        report = check_connection(conn, grace_seconds=3600.0)
        stock = {int(r.book_id): int(r.total) for r in conn.execute(sa.text(STOCK_TOTALS))}
        money = {
            int(r.customer_id): Decimal(str(r.total)).quantize(Decimal("0.01"))
            for r in conn.execute(sa.text(MONEY_TOTALS))
        }
    ledger = [str(v) for v in report.violations if v.rule in ("ledger", "stock", "money")]
    assert ledger == [], ledger
    units, balances = opened
    assert stock == {b: units[b] + run.restocked.get(b, 0) for b in units}
    assert money == {c: balances[c] + run.topped_up.get(c, Decimal(0)) for c in balances}


OPENED = ({1: 10, 2: 5, 3: 50}, {1: Decimal("10000.00"), 2: Decimal("500.00")})


def _sync_url(url: str) -> str:
    return url.replace("+aiosqlite", "").replace("+aiomysql", "+pymysql")


async def _example(url: str, plan: Plan, sync: sa.Engine) -> None:
    db = Database.from_url(url, **({} if url.startswith("sqlite") else {"pool_size": 4}))
    try:
        await clean(db)
        run = await play(db, plan)
    finally:
        await db.dispose()
    verify(sync, run, OPENED)


def _prepare(url: str) -> None:
    async def go() -> None:
        db = Database.from_url(url)
        try:
            await create_schema(db.engine)
        finally:
            await db.dispose()

    asyncio.run(go())


@pytest.fixture(params=["sqlite", pytest.param("mysql", marks=pytest.mark.mysql)])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("ledger") / "ledger.db"
        url = f"sqlite+aiosqlite:///{path}"
    else:
        url = mysql_database_url("cloudmart_test_ledger_property")
    _prepare(url)
    return url


def test_the_ledger_and_the_rows_agree_under_any_interleaving(database_url: str) -> None:
    sync = sa.create_engine(_sync_url(database_url))

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(plan=plans())
    def holds(plan: Plan) -> None:
        asyncio.run(_example(database_url, plan, sync))

    try:
        holds()
    finally:
        sync.dispose()
