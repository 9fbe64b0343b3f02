"""Engine behaviour on the in-memory store and transport with a fake clock."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest
from engine_unit_kit import FORWARD, CrashAfter, order, rig
from pydantic import ValidationError

import engine
from engine import RetryPolicy, WorkflowContext, workflow
from engine.adapters.memory_transport import Fault
from engine.errors import (
    SagaAlreadyFinished,
    SagaNotFound,
    WorkflowAlreadyStarted,
    WorkflowDefinitionError,
)
from engine.history import EventType
from engine.listing import SagaFilter
from engine.testing import run_until_idle
from workflows import place_order, place_order_declarative

HAPPY = [
    "STARTED",
    "ORDER_CREATED",
    "STOCK_RESERVED",
    "PAYMENT_COMPLETED",
    "SHIPPING_ARRANGED",
    "COMPLETED",
]


def test_public_api_is_pinned() -> None:
    assert engine.__all__ == [
        "Activity",
        "Engine",
        "EngineCounters",
        "RetryPolicy",
        "SagaHandle",
        "SagaStatus",
        "StepStatus",
        "WorkflowContext",
        "workflow",
    ]

    for name in engine.__all__:  # each says what it is in its first line (not a signature)
        doc = (getattr(engine, name).__doc__ or "").strip()
        assert doc and not doc.startswith(f"{name}("), name


async def test_happy_path_status_moves_through_every_milestone() -> None:
    r = rig()
    handle = await r.engine.start(place_order, order(), workflow_id="o-1")
    await run_until_idle(r.engine)
    assert r.statuses(handle.saga_id) == HAPPY
    status = await r.engine.status("o-1")
    assert status.status == "COMPLETED"
    assert [s.name for s in status.steps] == FORWARD
    assert all(s.state == "COMPLETED" and s.attempts == 1 for s in status.steps)
    assert status.result["total_amount"] == "12.50"


async def test_happy_path_costs_one_commit_per_step_plus_start_and_finish() -> None:
    r = rig()
    await r.engine.start(place_order, order(), workflow_id="o-1")
    await run_until_idle(r.engine)
    assert r.store.commits == len(FORWARD) + 2


async def test_idempotency_keys_are_workflow_id_and_method() -> None:
    r = rig()
    await r.engine.start(place_order, order(), workflow_id="o-1")
    await run_until_idle(r.engine)
    assert [c.idempotency_key for c in r.transport.calls] == [
        "o-1:create_order",
        "o-1:reserve_stock",
        "o-1:process_payment",
        "o-1:arrange_shipping",
        "o-1:complete_order",
    ]


async def test_step_payloads_follow_the_order_contract() -> None:
    r = rig()
    seen: dict[str, dict[str, Any]] = {}
    original = r.transport.request

    async def spy(service: str, method: str, payload: dict[str, Any], **kw: Any) -> Any:
        seen[f"{service}.{method}"] = payload
        return await original(service, method, payload, **kw)

    r.transport.request = spy  # type: ignore[method-assign]
    r.services.refuse.add("shipping.arrange_shipping")
    await r.engine.start(place_order, order(), workflow_id="o-1")
    await run_until_idle(r.engine)
    assert seen["order.create_order"] == order()
    assert seen["inventory.reserve_stock"] == {"order_id": "o-1", "items": order()["items"]}
    assert seen["payment.process_payment"] == {
        "order_id": "o-1",
        "customer_id": 1,
        "amount": "12.50",
    }
    assert seen["shipping.arrange_shipping"] == {
        "order_id": "o-1",
        "address": order()["shipping_address"],
    }
    for comp in ("order.cancel_order", "inventory.release_stock", "payment.cancel_payment"):
        assert seen[comp] == {"order_id": "o-1"}


async def test_business_failure_compensates_completed_steps_in_reverse_and_fails() -> None:
    r = rig()
    r.services.refuse.add("payment.process_payment")
    handle = await r.engine.start(place_order, order(), workflow_id="o-1")
    await run_until_idle(r.engine)
    assert r.services.for_saga("o-1") == [
        ("do", "order.create_order"),
        ("do", "inventory.reserve_stock"),
        ("undo", "inventory.reserve_stock"),
        ("undo", "order.create_order"),
    ]
    assert r.services.calls["payment.cancel_payment"] == 0  # refused: never took effect
    status = await r.engine.status("o-1")
    assert status.status == "FAILED"
    assert "payment.process_payment" in (status.failure_reason or "")
    assert r.statuses(handle.saga_id) == [
        "STARTED",
        "ORDER_CREATED",
        "STOCK_RESERVED",
        "COMPENSATION_STARTED",
        "FAILED",
    ]


async def test_business_errors_are_never_retried() -> None:
    r = rig()
    r.services.refuse.add("inventory.reserve_stock")
    await r.engine.start(place_order, order(), workflow_id="o-1")
    await run_until_idle(r.engine)
    assert r.services.calls["inventory.reserve_stock"] == 1
    assert r.engine.counters.step_retries == 0


async def test_transient_errors_are_retried_with_exponential_backoff() -> None:
    r = rig()
    r.transport.inject("inventory.reserve_stock", Fault("transient", times=3))
    await r.engine.start(place_order, order(), workflow_id="o-1")
    await run_until_idle(r.engine)
    history = await r.engine.history("o-1")
    retries = [e for e in history if e.type == EventType.STEP_RETRYING]
    waits = [
        (datetime.fromisoformat(e.payload["retry_at"]) - e.created_at).total_seconds()
        for e in retries
    ]
    assert waits == [0.2, 0.4, 0.8]
    status = await r.engine.status("o-1")
    assert status.status == "COMPLETED"
    assert status.steps[1].attempts == 4


async def test_exhausted_retries_count_the_step_as_possibly_done_and_compensate_it() -> None:
    r = rig()
    r.transport.inject("payment.process_payment", Fault("drop_reply", times=5))
    await r.engine.start(place_order, order(), workflow_id="o-1")
    await run_until_idle(r.engine)
    # The payment happened (its reply was lost 5 times): it must be refunded.
    assert r.services.for_saga("o-1")[-3:] == [
        ("undo", "payment.process_payment"),
        ("undo", "inventory.reserve_stock"),
        ("undo", "order.create_order"),
    ]
    assert r.services.executions[("o-1", "payment.process_payment")] == 1
    assert (await r.engine.status("o-1")).status == "FAILED"


@pytest.mark.parametrize("definition", [place_order, place_order_declarative])
async def test_the_step_after_the_pivot_is_retried_until_done_never_compensated(
    definition: Any,
) -> None:
    r = rig()
    # more lost replies than the step retry policy allows: the order may be completed already, and
    # shipping was arranged, so the saga can only go forward
    r.transport.inject("order.complete_order", Fault("drop_reply", times=8))
    await r.engine.start(definition, order(), workflow_id="o-1")
    await run_until_idle(r.engine)
    status = await r.engine.status("o-1")
    assert status.status == "COMPLETED"
    assert status.steps[-1].attempts == 9
    assert r.services.executions[("o-1", "order.complete_order")] == 1
    assert [kind for kind, _ in r.services.for_saga("o-1")] == ["do"] * 5


async def test_step_timeout_is_recorded_and_retried_with_the_same_key() -> None:
    r = rig(default_step_timeout=5.0)
    r.transport.inject("shipping.arrange_shipping", Fault("delay", seconds=60))
    await r.engine.start(place_order, order(), workflow_id="o-1")
    await run_until_idle(r.engine)
    r.clock.advance(120)  # the late delivery of the first attempt arrives now
    await r.transport.drain()
    history = await r.engine.history("o-1")
    assert [e.step for e in history if e.type == EventType.STEP_TIMED_OUT] == [
        "shipping.arrange_shipping"
    ]
    keys = [c.idempotency_key for c in r.transport.calls if c.method == "arrange_shipping"]
    assert set(keys) == {"o-1:arrange_shipping"}
    assert r.services.executions[("o-1", "shipping.arrange_shipping")] == 1
    assert (await r.engine.status("o-1")).status == "COMPLETED"


async def test_saga_deadline_stops_retrying_and_compensates() -> None:
    r = rig(saga_deadline=3.0)
    r.transport.inject("payment.process_payment", Fault("transient", times=100))
    await r.engine.start(place_order, order(), workflow_id="o-1")
    await run_until_idle(r.engine)
    status = await r.engine.status("o-1")
    assert status.status == "FAILED"
    assert status.failure_reason == "deadline exceeded"
    assert r.services.effective("o-1") == []
    assert r.clock.now() < datetime(2030, 1, 1, 0, 0, 4)


async def test_cancel_before_the_first_step_sends_nothing() -> None:
    r = rig()
    await r.engine.start(place_order, order(), workflow_id="o-1")
    await r.engine.cancel("o-1")
    await run_until_idle(r.engine)
    status = await r.engine.status("o-1")
    assert (status.status, status.failure_reason) == ("FAILED", "cancelled")
    assert list(r.transport.calls) == []


async def test_cancel_is_honoured_at_the_next_step_boundary() -> None:
    r = rig()
    forward = r.transport._handlers["inventory.reserve_stock"]

    async def reserve_then_cancel(payload: dict[str, Any]) -> dict[str, Any]:
        reply = await forward(payload)
        await r.engine.cancel("o-1")  # the caller goes away; the saga must still compensate
        return reply

    r.transport._handlers["inventory.reserve_stock"] = reserve_then_cancel
    await r.engine.start(place_order, order(), workflow_id="o-1")
    await run_until_idle(r.engine)
    assert r.services.calls["payment.process_payment"] == 0
    assert r.services.for_saga("o-1") == [
        ("do", "order.create_order"),
        ("do", "inventory.reserve_stock"),
        ("undo", "inventory.reserve_stock"),
        ("undo", "order.create_order"),
    ]
    history = await r.engine.history("o-1")
    assert EventType.CANCEL_REQUESTED in [e.type for e in history]
    assert (await r.engine.status("o-1")).failure_reason == "cancelled"


async def test_cancel_of_a_finished_or_unknown_saga_is_refused() -> None:
    r = rig()
    await r.engine.start(place_order, order(), workflow_id="o-1")
    await run_until_idle(r.engine)
    with pytest.raises(SagaAlreadyFinished):
        await r.engine.cancel("o-1")
    with pytest.raises(SagaNotFound):
        await r.engine.cancel("nope")


async def test_start_is_idempotent_per_workflow_id() -> None:
    r = rig()
    first = await r.engine.start(place_order, order(), workflow_id="o-1")
    again = await r.engine.start(place_order, order(), workflow_id="o-1")
    assert (again.saga_id, again.created, first.created) == (first.saga_id, False, True)
    with pytest.raises(WorkflowAlreadyStarted):
        await r.engine.start(place_order, order(customer_id=2), workflow_id="o-1")
    await run_until_idle(r.engine)
    assert r.services.executions[("o-1", "order.create_order")] == 1
    assert len((await r.engine.list()).sagas) == 1


async def test_compensation_is_retried_until_it_succeeds_and_flags_an_operator() -> None:
    r = rig(compensation_alert_attempts=3)
    r.services.refuse.add("shipping.arrange_shipping")
    r.services.comp_failures["inventory.release_stock"] = 5
    handle = await r.engine.start(place_order, order(), workflow_id="o-1")
    await run_until_idle(r.engine)
    flagged = [(s, op) for sid, s, op in r.projections if sid == handle.saga_id and op]
    assert flagged and all(s == "COMPENSATION_STARTED" for s, _ in flagged)
    assert r.engine.counters.operator_alerts == 1
    status = await r.engine.status("o-1")
    assert status.status == "FAILED"
    assert status.compensation_attempts == 5
    assert r.services.calls["inventory.release_stock"] == 6
    assert r.services.effective("o-1") == []


async def test_saga_never_fails_before_its_last_compensation_is_done() -> None:
    r = rig()
    r.services.refuse.add("payment.process_payment")
    r.services.comp_failures["order.cancel_order"] = 3
    handle = await r.engine.start(place_order, order(), workflow_id="o-1")
    await run_until_idle(r.engine)
    history = await r.engine.history("o-1")
    failed_at = next(e.seq for e in history if e.type == EventType.WORKFLOW_FAILED)
    comps = [e.seq for e in history if e.type == EventType.COMPENSATION_COMPLETED]
    assert max(comps) < failed_at
    assert r.statuses(handle.saga_id)[-2:] == ["COMPENSATION_STARTED", "FAILED"]


@workflow(name="two_steps")
async def two_steps(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
    await ctx.step("order.create_order", data, compensate="order.cancel_order")
    await ctx.step("inventory.reserve_stock", data, compensate="inventory.release_stock")
    return {}


async def test_changed_code_parks_the_saga_with_a_nondeterminism_error() -> None:
    crash = CrashAfter(3)  # start, step 1 scheduled, step 2 scheduled (+ step 1 completed)
    r = rig(crash=crash)
    await r.engine.start(two_steps, {"order_id": "o-1"}, workflow_id="o-1")
    await run_until_idle(r.engine, recover=False)
    assert crash.crashed

    @workflow(name="two_steps")
    async def two_steps_v2(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
        await ctx.step("order.create_order", data, compensate="order.cancel_order")
        await ctx.step("payment.process_payment", data, compensate="payment.cancel_payment")
        return {}

    r.clock.advance(60)
    successor = r.new_engine("unit-b", workflows=[two_steps_v2])
    await run_until_idle(successor)
    status = await successor.status("o-1")
    assert status.status == "PARKED"
    assert status.needs_operator
    assert "NondeterminismError" in (status.failure_reason or "")
    assert "inventory.reserve_stock" in (status.failure_reason or "")
    assert r.services.calls["payment.process_payment"] == 0


async def test_declarative_definition_runs_on_the_same_engine() -> None:
    r = rig()
    handle = await r.engine.start(place_order_declarative, order(), workflow_id="o-1")
    await run_until_idle(r.engine)
    assert r.statuses(handle.saga_id) == HAPPY
    assert [c.method for c in r.transport.calls] == [t.split(".")[1] for t in FORWARD]


async def test_declarative_definition_compensates_in_reverse() -> None:
    r = rig()
    r.services.refuse.add("shipping.arrange_shipping")
    await r.engine.start(place_order_declarative, order(), workflow_id="o-1")
    await run_until_idle(r.engine)
    assert [t for kind, t in r.services.for_saga("o-1") if kind == "undo"] == [
        "payment.process_payment",
        "inventory.reserve_stock",
        "order.create_order",
    ]


def test_workflow_decorator_rejects_functions_that_cannot_be_workflows() -> None:
    def not_async(ctx: WorkflowContext, data: Any) -> None: ...

    async def no_input(ctx: WorkflowContext) -> None: ...

    with pytest.raises(WorkflowDefinitionError):
        workflow(not_async)
    with pytest.raises(WorkflowDefinitionError):
        workflow(no_input)


def test_retry_policy_backoff_is_capped() -> None:
    policy = RetryPolicy(initial_interval=1, backoff=3, max_interval=5, max_attempts=None)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [1, 3, 5, 5]
    assert policy.allows(10**6)
    assert not RetryPolicy(max_attempts=2).allows(3)


@workflow(name="deterministic_helpers")
async def deterministic_helpers(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
    stamp = await ctx.now()
    token = await ctx.uuid()
    await ctx.sleep(30)
    await ctx.step("order.create_order", {"token": token}, compensate="order.cancel_order")
    return {"stamp": stamp.isoformat(), "token": token}


async def test_now_uuid_and_sleep_are_replayed_after_a_crash() -> None:
    crash = CrashAfter(2)  # start, then the timer's commit (carrying now/uuid) -> crash
    r = rig(crash=crash)
    await r.engine.start(deterministic_helpers, {}, workflow_id="o-1")
    await run_until_idle(r.engine, recover=False)
    before = await r.engine.history("o-1")
    markers = [e.payload["value"] for e in before if e.type == EventType.MARKER]
    r.clock.advance(31)  # the crashed owner's lease (30 s) expires
    successor = r.new_engine("unit-b", workflows=[deterministic_helpers])
    await run_until_idle(successor)
    status = await successor.status("o-1")
    assert status.status == "COMPLETED"
    assert [status.result["stamp"], status.result["token"]] == markers
    assert r.clock.now() >= datetime(2030, 1, 1, 0, 0, 30)


async def test_status_reports_steps_with_attempts_errors_and_timestamps() -> None:
    r = rig()
    r.transport.inject("payment.process_payment", Fault("transient", times=1))
    r.services.refuse.add("shipping.arrange_shipping")
    await r.engine.start(place_order, order(), workflow_id="o-1")
    await run_until_idle(r.engine)
    steps = {s.name: s for s in (await r.engine.status("o-1")).steps}
    assert steps["payment.process_payment"].attempts == 2
    assert steps["payment.process_payment"].state == "COMPENSATED"
    assert steps["shipping.arrange_shipping"].state == "FAILED"
    assert steps["shipping.arrange_shipping"].last_error["type"] == "BusinessError"
    assert steps["order.create_order"].scheduled_at is not None
    assert steps["order.create_order"].finished_at is not None
    listed = await r.engine.list(SagaFilter(statuses=("FAILED",)))
    assert [s.workflow_id for s in listed.sagas] == ["o-1"]


async def test_wait_returns_the_finished_status_of_a_saga_this_engine_drives() -> None:
    r = rig()
    await r.engine.start(place_order, order(), workflow_id="o-1")
    status = await r.engine.wait("o-1", timeout=5)
    assert status.status == "COMPLETED"


@pytest.mark.parametrize("fault", ["none", "refused", "retried_then_refused", "cancelled"])
async def test_a_finished_saga_is_answered_from_memory_exactly_as_the_store_has_it(
    fault: str,
) -> None:
    r = rig()
    if fault == "refused":
        r.services.refuse.add("payment.process_payment")
    elif fault == "retried_then_refused":
        r.transport.inject("payment.process_payment", Fault("transient", times=2))
        r.services.refuse.add("shipping.arrange_shipping")
    await r.engine.start(place_order, order(), workflow_id="o-1")
    if fault == "cancelled":
        await r.engine.cancel("o-1")
    await run_until_idle(r.engine)
    remembered = await r.engine.status("o-1")
    assert remembered.status == ("COMPLETED" if fault == "none" else "FAILED")
    # Another engine on the same store has nothing in memory: it reads the store.
    stored = await r.new_engine("reader").status("o-1")
    assert remembered == stored
    assert await r.engine.wait("o-1", timeout=1) == stored


async def test_wait_for_a_saga_this_engine_finished_reads_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    r = rig()
    await r.engine.start(place_order, order(), workflow_id="o-1")
    waiting = asyncio.ensure_future(r.engine.wait("o-1", timeout=5))
    await run_until_idle(r.engine)

    async def no_read(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the store was read")

    monkeypatch.setattr(r.store, "get", no_read)
    monkeypatch.setattr(r.store, "load", no_read)
    assert (await waiting).status == "COMPLETED"
    assert (await r.engine.wait("o-1", timeout=5)).status == "COMPLETED"


async def test_an_input_the_workflows_model_refuses_is_refused_at_start_with_nothing_written() -> (
    None
):
    r = rig()
    with pytest.raises(ValidationError):
        await r.engine.start(place_order, order("o-1", shipping_address={"country": "JP"}))
    assert await r.store.list() == []


async def test_the_engine_forgets_its_oldest_finished_sagas_past_its_cache() -> None:
    r = rig()
    engine_ = r.new_engine("small", finished_cache=2)
    for i in range(3):
        await engine_.start(place_order, order(f"o-{i}"), workflow_id=f"o-{i}")
    await run_until_idle(engine_)
    kept = [f"o-{i}" for i in range(3) if engine_.worker.finished(f"o-{i}") is not None]
    assert kept == ["o-1", "o-2"]
    assert (await engine_.status("o-0")).status == "COMPLETED"  # read from the store


async def test_wait_gives_up_after_its_timeout_with_the_current_status() -> None:
    r = rig()
    r.transport.inject("inventory.reserve_stock", Fault("delay", seconds=60))
    await r.engine.start(place_order, order(), workflow_id="o-1")
    status = await r.engine.wait("o-1", timeout=0.05)
    assert status.status not in ("COMPLETED", "FAILED")
    await run_until_idle(r.engine)
    assert (await r.engine.wait("o-1", timeout=0)).status in ("COMPLETED", "FAILED")


async def test_wait_for_an_unknown_saga_is_not_found() -> None:
    with pytest.raises(SagaNotFound):
        await rig().engine.wait("nope", timeout=1)


async def test_a_saga_being_started_is_not_claimed_by_its_own_engines_recovery() -> None:
    # The saga's row is committed before start() spawns its run: a recovery pass that runs in
    # that gap sees a row of ours that nothing runs, and must leave it to start().
    r = rig()
    create = r.store.create
    claimed_in_the_gap: list[int] = []

    async def create_then_recover(*args: Any, **kwargs: Any) -> Any:
        created = await create(*args, **kwargs)
        claimed_in_the_gap.append(await r.engine.recover())
        return created

    r.store.create = create_then_recover  # type: ignore[method-assign]
    handle = await r.engine.start(place_order, order(), workflow_id="o-1")
    await run_until_idle(r.engine, recover=False)
    assert claimed_in_the_gap == [0]
    assert r.engine.counters.abandoned == 0
    assert (await r.engine.status("o-1")).status == "COMPLETED"
    assert [e.version for e in await r.engine.history("o-1")] == [1] * len(
        await r.engine.history("o-1")
    )
    assert handle.created
