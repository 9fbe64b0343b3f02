"""Changing a workflow under recorded histories: input digests, ``ctx.patched`` and its
retirement, and the offline replayer that tells a deploy which histories the new code breaks."""

from __future__ import annotations

import importlib.util
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from engine_unit_kit import CrashAfter, order, rig

from contracts import catalogue as ops
from contracts.commands import (
    ArrangeShipping,
    CreateOrder,
    OrderPlaced,
    OrderRef,
    ProcessPayment,
    ReserveStock,
    ScreenOrder,
)
from engine import WorkflowContext, workflow
from engine.adapters.memory_transport import Fault
from engine.errors import WorkflowDefinitionError
from engine.history import EventType
from engine.replay import history_file, read_history_file, replay
from engine.testing import run_until_idle
from workflows import place_order, place_order_declarative
from workflows.order_saga import REVIEW_AMOUNT

ET = EventType
DEPLOYED = [place_order, place_order_declarative]


async def recorded(fault: str) -> tuple[str, list[Any]]:
    """One order saga's history, run to its end on today's code under ``fault``."""
    r = rig()
    if fault in ("stock", "payment", "shipping"):
        target = {
            "stock": "inventory.reserve_stock",
            "payment": "payment.process_payment",
            "shipping": "shipping.arrange_shipping",
        }[fault]
        r.services.refuse.add(target)
    elif fault == "retried":
        r.transport.inject("payment.process_payment", Fault("transient", times=2))
    await r.engine.start(place_order, order(), workflow_id="o-1")
    if fault == "cancel":
        await r.engine.cancel("o-1")
    await run_until_idle(r.engine)
    return "o-1", await r.engine.history("o-1")


@pytest.mark.parametrize("fault", ["none", "stock", "payment", "shipping", "retried", "cancel"])
async def test_histories_of_todays_code_replay_as_matching(fault: str) -> None:
    workflow_id, events = await recorded(fault)
    replayed = await replay(DEPLOYED, events, workflow_id=workflow_id)
    assert replayed.matching, replayed.divergence
    assert replayed.events == len(events)


async def test_a_history_file_round_trips() -> None:
    workflow_id, events = await recorded("shipping")
    assert read_history_file(history_file(workflow_id, events)) == (workflow_id, events)


@workflow(name="pay")
async def pay(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
    await ctx.step("order.create_order", {"order_id": data["order_id"]})
    await ctx.step("payment.process_payment", {"order_id": data["order_id"], "amount": "20.00"})
    return {}


@workflow(name="pay")
async def pay_more(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
    await ctx.step("order.create_order", {"order_id": data["order_id"]})
    await ctx.step("payment.process_payment", {"order_id": data["order_id"], "amount": "25.00"})
    return {}


async def test_a_changed_step_input_parks_the_saga_naming_the_field_and_replay_reports_it() -> None:
    r = rig(crash=CrashAfter(3))  # start; create scheduled; payment scheduled (+ create done)
    await r.engine.start(pay, {"order_id": "o-1"}, workflow_id="o-1")
    await run_until_idle(r.engine, recover=False)
    events = await r.engine.history("o-1")
    replayed = await replay([pay_more], events, workflow_id="o-1")
    assert not replayed.matching
    assert replayed.divergence is not None
    assert "position 1" in replayed.divergence
    assert "amount: history '20.00', code '25.00'" in replayed.divergence
    assert (await replay([pay], events, workflow_id="o-1")).matching

    r.clock.advance(60)
    changed = r.new_engine("changed", workflows=[pay_more])
    await run_until_idle(changed)
    status = await changed.status("o-1")
    assert status.status == "PARKED"
    assert "amount: history '20.00', code '25.00'" in (status.failure_reason or "")
    assert r.services.calls["payment.process_payment"] == 0  # the new code sends nothing


@workflow(name="shop")
async def shop_v1(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
    await ctx.step("order.create_order", data, compensate="order.cancel_order")
    await ctx.step("payment.process_payment", data, compensate="payment.cancel_payment")
    return {"version": 1}


@workflow(name="shop")
async def shop_v2(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
    await ctx.step("order.create_order", data, compensate="order.cancel_order")
    if ctx.patched("stock-first"):
        await ctx.step("inventory.reserve_stock", data, compensate="inventory.release_stock")
    await ctx.step("payment.process_payment", data, compensate="payment.cancel_payment")
    return {"version": 2}


@workflow(name="shop")
async def shop_v3(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
    await ctx.step("order.create_order", data, compensate="order.cancel_order")
    ctx.deprecate_patch("stock-first")
    await ctx.step("inventory.reserve_stock", data, compensate="inventory.release_stock")
    await ctx.step("payment.process_payment", data, compensate="payment.cancel_payment")
    return {"version": 3}


@workflow(name="shop")
async def shop_v4(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
    await ctx.step("order.create_order", data, compensate="order.cancel_order")
    await ctx.step("inventory.reserve_stock", data, compensate="inventory.release_stock")
    await ctx.step("payment.process_payment", data, compensate="payment.cancel_payment")
    return {"version": 4}


async def crashed_v1_saga(commits: int) -> Any:
    r = rig(crash=CrashAfter(commits))
    await r.engine.start(shop_v1, {"order_id": "o-1"}, workflow_id="o-1")
    await run_until_idle(r.engine, recover=False)
    r.clock.advance(60)
    return r


async def test_a_v1_saga_past_the_patch_point_finishes_as_v1_on_v2_code() -> None:
    r = await crashed_v1_saga(3)  # payment already scheduled by v1
    v2 = r.new_engine("v2", workflows=[shop_v2])
    await run_until_idle(v2)
    status = await v2.status("o-1")
    assert status.status == "COMPLETED"
    assert [s.name for s in status.steps] == ["order.create_order", "payment.process_payment"]
    assert r.services.calls["inventory.reserve_stock"] == 0


async def test_a_v1_saga_before_the_patch_point_and_a_new_saga_take_the_new_branch() -> None:
    r = await crashed_v1_saga(2)  # only create_order scheduled by v1
    v2 = r.new_engine("v2", workflows=[shop_v2])
    await v2.start(shop_v2, {"order_id": "o-2"}, workflow_id="o-2")
    await run_until_idle(v2)
    for workflow_id in ("o-1", "o-2"):
        steps = [s.name for s in (await v2.status(workflow_id)).steps]
        assert steps == ["order.create_order", "inventory.reserve_stock", "payment.process_payment"]
        markers = [e.step for e in await v2.history(workflow_id) if e.type == ET.MARKER]
        assert markers == ["patch:stock-first"]


async def test_a_retired_patch_replays_old_markers_and_its_removal_is_caught_by_replay() -> None:
    r = rig()
    await r.engine.start(shop_v2, {"order_id": "o-2"}, workflow_id="o-2")
    await run_until_idle(r.engine)
    v2_history = await r.engine.history("o-2")
    assert (await replay([shop_v3], v2_history, workflow_id="o-2")).matching
    removed = await replay([shop_v4], v2_history, workflow_id="o-2")
    assert not removed.matching
    assert "MarkerRecorded patch:stock-first" in (removed.divergence or "")

    v3 = r.new_engine("v3")
    await v3.start(shop_v3, {"order_id": "o-3"}, workflow_id="o-3")  # a new run on v3
    await run_until_idle(v3)
    v3_history = await v3.history("o-3")
    assert not [e for e in v3_history if e.type == ET.MARKER]
    assert (await replay([shop_v4], v3_history, workflow_id="o-3")).matching


async def test_replay_sends_and_writes_nothing_and_knows_an_unknown_workflow() -> None:
    r = rig(crash=CrashAfter(2))
    await r.engine.start(pay, {"order_id": "o-1"}, workflow_id="o-1")
    await run_until_idle(r.engine, recover=False)
    events = await r.engine.history("o-1")
    calls, commits = len(r.transport.calls), r.store.commits
    assert (await replay([pay], events, workflow_id="o-1")).matching  # stops at the live edge
    assert (len(r.transport.calls), r.store.commits) == (calls, commits)
    unknown = await replay([shop_v1], events, workflow_id="o-1")
    assert unknown.divergence == "no workflow named 'pay' is deployed"


@pytest.mark.parametrize(
    ("call", "advice"),
    [
        ("datetime.now()", "ctx.now()"),
        ("datetime.datetime.utcnow()", "ctx.now()"),
        ("time.time()", "ctx.now()"),
        ("random.random()", "ctx.uuid()"),
        ("uuid.uuid4()", "ctx.uuid()"),
        ("asyncio.sleep(1)", "ctx.sleep()"),
        ("open('orders.csv')", "a step (ctx.step)"),
        ("httpx.get('http://x')", "a step (ctx.step)"),
    ],
)
def test_a_workflow_that_calls_what_replay_cannot_repeat_is_refused_with_its_line(
    call: str, advice: str, tmp_path: Path
) -> None:
    module = tmp_path / "impure_workflow.py"
    module.write_text(
        "import asyncio, datetime, random, time, uuid, httpx\n"
        "from engine import workflow\n"
        "@workflow\n"
        "async def impure(ctx, data):\n"
        "    await ctx.step('order.create_order', data)\n"
        f"    value = {call}\n"
        "    return {}\n"
    )
    spec = importlib.util.spec_from_file_location("impure_workflow", module)
    assert spec is not None and spec.loader is not None
    with pytest.raises(WorkflowDefinitionError) as refused:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    message = str(refused.value)
    assert f"calls {call.split('(')[0]}()" in message
    assert f"{module}:6;" in message  # the line of the call
    assert advice in message


def test_the_deployed_workflows_pass_the_determinism_check() -> None:
    from workflows.restock import restock  # noqa: F401 (decorating it ran the check)

    for wf in (*DEPLOYED, shop_v2, shop_v3):
        assert wf.__workflow_name__  # type: ignore[attr-defined]


# The order saga's v2: a fraud screening before payment, for large orders only ---------------

LARGE = "12000.00"  # at or above the review amount: v2 screens it


def test_the_review_amount_is_above_what_the_small_orders_of_the_tests_come_to() -> None:
    assert Decimal("12.50") < REVIEW_AMOUNT <= Decimal(LARGE)


def kinds(events: list[Any]) -> list[tuple[str, str | None]]:
    return [(e.type, e.step) for e in events if e.type in (ET.STEP_SCHEDULED, ET.MARKER)]


async def v1_saga_crashed_after(commits: int, *, total: str = LARGE) -> Any:
    """A v1 order saga of ``total``, its orchestrator gone after ``commits`` history writes."""
    import order_saga_v1

    r = rig(crash=CrashAfter(commits), total=total)
    await r.engine.start(order_saga_v1.place_order, order(), workflow_id="o-1")
    await run_until_idle(r.engine, recover=False)
    r.clock.advance(60)
    return r


async def test_a_v1_order_saga_paid_for_finishes_as_v1_on_v2_code() -> None:
    r = await v1_saga_crashed_after(4)  # v1 scheduled the payment (reserve done)
    v2 = r.new_engine("v2", workflows=DEPLOYED)
    await run_until_idle(v2)
    assert (await v2.status("o-1")).status == "COMPLETED"
    history = await v2.history("o-1")
    assert ("StepScheduled", "payment.screen_order") not in kinds(history)
    assert not [e for e in history if e.type == ET.MARKER]
    assert r.services.calls["payment.screen_order"] == 0


async def test_a_v1_order_saga_short_of_the_patch_point_and_a_new_one_are_screened() -> None:
    r = await v1_saga_crashed_after(2)  # v1 scheduled only create_order
    v2 = r.new_engine("v2", workflows=DEPLOYED)
    await v2.start(place_order, order("o-2"), workflow_id="o-2")
    await run_until_idle(v2)
    for workflow_id in ("o-1", "o-2"):
        assert (await v2.status(workflow_id)).status == "COMPLETED"
        assert kinds(await v2.history(workflow_id)) == [
            ("StepScheduled", "order.create_order"),
            ("StepScheduled", "inventory.reserve_stock"),
            ("MarkerRecorded", "patch:fraud-check"),
            ("StepScheduled", "payment.screen_order"),
            ("StepScheduled", "payment.process_payment"),
            ("StepScheduled", "shipping.arrange_shipping"),
            ("StepScheduled", "order.complete_order"),
        ]
    assert r.services.calls["payment.screen_order"] == 2


async def test_an_ordinary_order_on_v2_records_what_v1_did_and_replays_on_v1() -> None:
    import order_saga_v1

    r = rig()  # 12.50: below the review amount
    await r.engine.start(place_order, order(), workflow_id="o-1")
    await run_until_idle(r.engine)
    history = await r.engine.history("o-1")
    assert not [e for e in history if e.type == ET.MARKER]
    assert r.services.calls["payment.screen_order"] == 0
    assert (await replay(list(order_saga_v1.WORKFLOWS), history, workflow_id="o-1")).matching


async def test_a_screening_refused_compensates_the_saga_as_a_refused_payment_does() -> None:
    r = rig(total=LARGE)
    r.services.refuse.add("payment.screen_order")
    await r.engine.start(place_order, order(), workflow_id="o-1")
    await run_until_idle(r.engine)
    status = await r.engine.status("o-1")
    assert status.status == "FAILED"
    assert (status.failure_reason or "").startswith("payment.screen_order failed")
    undone = [e.step for e in await r.engine.history("o-1") if e.type == ET.COMPENSATION_COMPLETED]
    assert undone == ["inventory.release_stock", "order.cancel_order"]
    assert r.services.calls["payment.process_payment"] == 0
    assert r.services.effective("o-1") == []


@workflow(name="place_order")
async def place_order_retired(ctx: WorkflowContext, order: CreateOrder) -> OrderPlaced:
    """The order saga once the patch is retired (the README's next deploy after v2)."""
    created = await ctx.step(ops.CREATE_ORDER, order)
    await ctx.step(ops.RESERVE_STOCK, ReserveStock(order_id=order.order_id, items=order.items))
    if created.total_amount >= REVIEW_AMOUNT:
        ctx.deprecate_patch("fraud-check")
        await ctx.step(
            ops.SCREEN_ORDER,
            ScreenOrder(
                order_id=order.order_id,
                customer_id=order.customer_id,
                amount=created.total_amount,
            ),
        )
    payment = await ctx.step(
        ops.PROCESS_PAYMENT,
        ProcessPayment(
            order_id=order.order_id, customer_id=order.customer_id, amount=created.total_amount
        ),
    )
    shipment = await ctx.step(
        ops.ARRANGE_SHIPPING,
        ArrangeShipping(order_id=order.order_id, address=order.shipping_address),
        pivot=True,
    )
    await ctx.step(ops.COMPLETE_ORDER, OrderRef(order_id=order.order_id))
    return OrderPlaced(
        order_id=order.order_id,
        total_amount=created.total_amount,
        payment=payment,
        shipment=shipment,
    )


async def test_retiring_the_fraud_patch_is_refused_while_a_paid_v1_saga_is_in_flight() -> None:
    r = await v1_saga_crashed_after(4)  # v1 paid for it, unscreened
    v1_history = await r.engine.history("o-1")
    blocked = await replay([place_order_retired], v1_history, workflow_id="o-1")
    assert not blocked.matching
    assert "payment.screen_order" in (blocked.divergence or "")
    assert "history holds StepScheduled payment.process_payment" in (blocked.divergence or "")

    v2 = rig(total=LARGE)  # a saga screened by v2 still replays once the patch is retired
    await v2.engine.start(place_order, order("o-2"), workflow_id="o-2")
    await run_until_idle(v2.engine)
    screened = await v2.engine.history("o-2")
    assert (await replay([place_order_retired], screened, workflow_id="o-2")).matching


def test_every_call_replay_cannot_repeat_is_found_with_its_line_in_source_order() -> None:
    import time
    import uuid

    from engine.workflow import nondeterministic_calls

    async def helper(ctx: Any, data: Any) -> None:
        data["id"] = str(uuid.uuid4())
        data["at"] = time.time()

    first = helper.__code__.co_firstlineno
    found = nondeterministic_calls(helper)
    assert [(c.call, c.line - first, c.use) for c in found] == [
        ("uuid.uuid4", 1, "ctx.uuid()"),
        ("time.time", 2, "ctx.now()"),
    ]
    assert {c.filename for c in found} == {__file__}
    assert nondeterministic_calls(place_order) == []
