"""The README's second saga runs on the engine: completed, and compensated when its last step
is refused."""

from __future__ import annotations

from typing import Any

from engine import Engine
from engine.adapters import InMemoryHistoryStore
from engine.clock import FakeClock
from engine.testing import FakeServices, run_until_idle
from workflows.restock import CANCEL_PURCHASE, PURCHASE_BOOKS, RECEIVE_BOOKS, Restock, restock

COMMAND = Restock(restock_id="r-1", book_id=3, quantity=20, supplier="Kinokuniya")


def received(payload: dict[str, Any]) -> dict[str, Any]:
    return {"restock_id": payload["restock_id"], "book_id": payload["book_id"], "available": 25}


def services() -> FakeServices:
    return FakeServices(
        {PURCHASE_BOOKS.name: CANCEL_PURCHASE.name, RECEIVE_BOOKS.name: None},
        reply={
            PURCHASE_BOOKS.name: {"restock_id": "r-1", "cost": "240.00"},
            RECEIVE_BOOKS.name: received,
        },
    )


async def run(fakes: FakeServices) -> Engine:
    clock = FakeClock()
    engine = Engine(InMemoryHistoryStore(), fakes.transport(clock), clock=clock)
    await engine.start(restock, COMMAND, workflow_id=COMMAND.restock_id)
    await run_until_idle(engine)
    return engine


async def test_a_restock_buys_then_receives_and_returns_the_stock() -> None:
    fakes = services()
    engine = await run(fakes)
    status = await engine.status("r-1")
    assert status.status == "COMPLETED"
    assert status.result == {"restock_id": "r-1", "book_id": 3, "available": 25}
    assert fakes.for_saga("r-1") == [("do", PURCHASE_BOOKS.name), ("do", RECEIVE_BOOKS.name)]


async def test_a_refused_receipt_cancels_the_purchase() -> None:
    fakes = services()
    fakes.refuse.add(RECEIVE_BOOKS.name)
    engine = await run(fakes)
    status = await engine.status("r-1")
    assert status.status == "FAILED"
    assert fakes.for_saga("r-1") == [("do", PURCHASE_BOOKS.name), ("undo", PURCHASE_BOOKS.name)]
    history = await engine.history("r-1")
    scheduled = next(e for e in history if e.step == PURCHASE_BOOKS.name)
    assert scheduled.payload["compensation"]["payload"] == {"restock_id": "r-1"}
