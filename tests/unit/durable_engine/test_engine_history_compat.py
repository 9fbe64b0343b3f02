"""Histories written before the steps were typed still replay on the typed order workflow.

``histories_before_typed_steps.json`` holds two sagas recorded by the order workflow as it was
when steps were called by name with dicts (commit 7763932, real activities on SQLite, one
saga completed and one compensated because shipping to US is refused). Each test cuts one of
them short, as a crash would, and lets the typed workflow of today take it over: recorded
steps are answered from history (their replies validated into today's result models), never
sent again, and the compensations run are the ones history registered.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from contracts.examples import ORDER_STEPS, order_replies
from engine import Engine
from engine.adapters import InMemoryHistoryStore
from engine.clock import FakeClock
from engine.history import Event, EventType, SagaRecord
from engine.testing import FakeServices, run_until_idle
from workflows import place_order

RECORDED = json.loads((Path(__file__).parent / "histories_before_typed_steps.json").read_text())
# What order.create_order answered when the histories were recorded; the fakes answer alike.
TOTAL = RECORDED["rec-completed"][2]["payload"]["result"]["total_amount"]


def events_of(saga: str) -> list[Event]:
    return [
        Event(**{**row, "created_at": datetime.fromisoformat(row["created_at"])})
        for row in RECORDED[saga]
    ]


async def take_over(saga: str, cut: int) -> tuple[Engine, list[tuple[str, Any]], list[Event]]:
    """The first ``cut`` events of ``saga``, left by a crashed owner, resumed by today's code;
    with every command it sent, in order, as ``(target, payload)``."""
    events = events_of(saga)[:cut]
    started = events[0]
    clock = FakeClock(started.created_at)
    store = InMemoryHistoryStore()
    record = SagaRecord(
        saga_id=f"{saga}-id",
        workflow_id=saga,
        workflow_name=started.payload["workflow"],
        status="STARTED",
        input=started.payload["input"],
        version=1,
        created_at=started.created_at,
        updated_at=started.created_at,
    )
    await store.create(record, events)
    services = FakeServices(dict(ORDER_STEPS), reply=dict(order_replies(TOTAL)))
    transport = services.transport(clock)
    sent: list[tuple[str, Any]] = []
    original = transport.request

    async def spy(service: str, method: str, payload: dict[str, Any], **kw: Any) -> Any:
        sent.append((f"{service}.{method}", payload))
        return await original(service, method, payload, **kw)

    transport.request = spy  # type: ignore[method-assign]
    engine = Engine(store, transport, clock=clock, owner_id="today", workflows=[place_order])
    await run_until_idle(engine)
    return engine, sent, events


def targets(sent: list[tuple[str, Any]]) -> list[str]:
    return [target for target, _ in sent]


def recorded_steps(events: list[Event], kind: str) -> list[str | None]:
    return [e.step for e in events if e.type == kind]


@pytest.mark.parametrize("cut", range(2, len(RECORDED["rec-completed"])))
async def test_a_completed_saga_cut_anywhere_resumes_without_re_sending_a_recorded_step(
    cut: int,
) -> None:
    engine, sent, kept = await take_over("rec-completed", cut)
    status = await engine.status("rec-completed")
    assert status.status == "COMPLETED"
    assert not set(recorded_steps(kept, EventType.STEP_COMPLETED)) & set(targets(sent))
    assert len(targets(sent)) == len(set(targets(sent)))  # nothing sent twice either
    assert status.result["order_id"] == "rec-completed"
    assert status.result["total_amount"] == TOTAL


async def test_the_payment_sent_after_a_recorded_order_carries_the_recorded_total() -> None:
    events = events_of("rec-completed")
    cut = next(i for i, e in enumerate(events) if e.step == "inventory.reserve_stock") + 2
    assert events[cut - 1].type == EventType.STEP_COMPLETED
    _, sent, _ = await take_over("rec-completed", cut)
    assert targets(sent) == [
        "payment.process_payment",
        "shipping.arrange_shipping",
        "order.complete_order",
    ]
    assert sent[0][1] == {"order_id": "rec-completed", "customer_id": 1, "amount": TOTAL}


async def test_a_saga_cut_after_its_refused_step_compensates_what_history_registered() -> None:
    events = events_of("rec-compensated")
    cut = next(i for i, e in enumerate(events) if e.type == EventType.STEP_FAILED) + 1
    engine, sent, kept = await take_over("rec-compensated", cut)
    assert (await engine.status("rec-compensated")).status == "FAILED"
    registered = {
        e.payload["compensation"]["target"]: e.payload["compensation"]["payload"]
        for e in kept
        if e.type == EventType.STEP_SCHEDULED and e.payload.get("compensation")
    }
    assert sent == [
        ("payment.cancel_payment", registered["payment.cancel_payment"]),
        ("inventory.release_stock", registered["inventory.release_stock"]),
        ("order.cancel_order", registered["order.cancel_order"]),
    ]


def test_the_recorded_histories_are_the_ones_described() -> None:
    def kinds(saga: str) -> list[Any]:
        return [row["type"] for row in RECORDED[saga]]

    assert kinds("rec-completed")[-1] == EventType.WORKFLOW_COMPLETED
    assert kinds("rec-compensated")[-1] == EventType.WORKFLOW_FAILED
    assert EventType.COMPENSATION_COMPLETED in kinds("rec-compensated")
