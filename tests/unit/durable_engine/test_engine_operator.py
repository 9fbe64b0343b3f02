"""Liveness and the operator's actions, on the in-memory store with a fake clock: the pivot,
parked sagas resumed or compensated, unknown workflows, retry now."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import structlog.testing
from conftest import until
from engine_unit_kit import CrashAfter, order, rig

from engine import RetryPolicy, WorkflowContext, workflow
from engine.adapters.memory_transport import Fault
from engine.errors import ActionRefused
from engine.history import EventType
from engine.testing import run_until_idle
from workflows import place_order, place_order_declarative

ET = EventType


def actions(history: list[Any]) -> list[tuple[str, str]]:
    return [
        (e.payload["action"], e.payload["reason"]) for e in history if e.type == ET.OPERATOR_ACTION
    ]


@pytest.mark.parametrize("definition", [place_order, place_order_declarative])
async def test_past_the_pivot_the_deadline_does_not_compensate(definition: Any) -> None:
    # The order service is away across the deadline, after shipping was arranged.
    r = rig(saga_deadline=30.0)
    r.transport.inject("order.complete_order", Fault("transient", times=20))
    await r.engine.start(definition, order(), workflow_id="o-1")
    await run_until_idle(r.engine)
    status = await r.engine.status("o-1")
    assert status.status == "COMPLETED"
    assert status.created_at is not None
    assert r.clock.now() > status.created_at + timedelta(seconds=30)  # it ran past its deadline
    assert [kind for kind, _ in r.services.for_saga("o-1")] == ["do"] * 5


async def test_a_step_past_the_pivot_that_keeps_failing_flags_the_saga_until_it_is_done() -> None:
    r = rig(compensation_alert_attempts=3)
    r.transport.inject("order.complete_order", Fault("transient", times=5))
    await r.engine.start(place_order, order(), workflow_id="o-1")
    await run_until_idle(r.engine)
    flagged = [needs for _, status, needs in r.projections if status == "SHIPPING_ARRANGED"]
    assert True in flagged  # flagged while it kept failing
    assert r.projections[-1][1:] == ("COMPLETED", False)  # and cleared once done
    assert r.engine.counters.operator_alerts == 1


async def test_cancel_past_the_pivot_is_refused_and_the_saga_completes() -> None:
    r = rig()
    r.transport.inject("order.complete_order", Fault("transient", times=3))
    await r.engine.start(place_order, order(), workflow_id="o-1")

    async def past_pivot() -> bool:
        return (await r.engine.status("o-1")).status == "SHIPPING_ARRANGED"

    await until(past_pivot)
    with pytest.raises(ActionRefused) as refused:
        await r.engine.cancel("o-1")
    assert refused.value.status == "SHIPPING_ARRANGED"
    await run_until_idle(r.engine)
    assert (await r.engine.status("o-1")).status == "COMPLETED"


@workflow(name="two_steps")
async def two_steps(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
    await ctx.step("order.create_order", data, compensate="order.cancel_order")
    await ctx.step("inventory.reserve_stock", data, compensate="inventory.release_stock")
    return {}


@workflow(name="two_steps")
async def two_steps_changed(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
    await ctx.step("order.create_order", data, compensate="order.cancel_order")
    await ctx.step("payment.process_payment", data, compensate="payment.cancel_payment")
    return {}


async def parked_saga() -> Any:
    """A ``two_steps`` saga whose first run stopped after scheduling both steps, then parked by
    an engine running the changed code. Returns the rig."""
    r = rig(crash=CrashAfter(3))
    await r.engine.start(two_steps, {"order_id": "o-1"}, workflow_id="o-1")
    await run_until_idle(r.engine, recover=False)
    r.clock.advance(60)
    await run_until_idle(r.new_engine("changed", workflows=[two_steps_changed]))
    assert (await r.engine.status("o-1")).status == "PARKED"
    return r


async def test_a_parked_saga_resumed_after_the_code_is_restored_completes() -> None:
    r = await parked_saga()
    restored = r.new_engine("restored", workflows=[two_steps])
    await restored.resume("o-1", reason="v1 is back")
    await run_until_idle(restored)
    status = await restored.status("o-1")
    assert (status.status, status.needs_operator, status.failure_reason) == (
        "COMPLETED",
        False,
        None,
    )
    assert actions(await restored.history("o-1")) == [("resume", "v1 is back")]
    assert r.services.executions[("o-1", "inventory.reserve_stock")] == 1


async def test_a_parked_saga_resumed_on_code_that_still_differs_parks_again() -> None:
    r = await parked_saga()
    still = r.new_engine("still-changed", workflows=[two_steps_changed])
    await still.resume("o-1", reason="try")
    await run_until_idle(still)
    status = await still.status("o-1")
    assert status.status == "PARKED"
    history = await still.history("o-1")
    assert [e.type for e in history].count(ET.WORKFLOW_PARKED) == 2
    assert actions(history) == [("resume", "try")]
    assert r.services.calls["payment.process_payment"] == 0


@pytest.mark.parametrize("action", ["compensate", "cancel"])
async def test_a_parked_saga_compensated_by_an_operator_undoes_every_effect(action: str) -> None:
    r = await parked_saga()
    operator = r.new_engine("operator", workflows=[two_steps_changed])
    if action == "compensate":
        await operator.compensate("o-1", reason="customer called")
    else:
        await operator.cancel("o-1")
    await run_until_idle(operator)
    status = await operator.status("o-1")
    assert status.status == "FAILED"
    expected = "operator: customer called" if action == "compensate" else "cancelled"
    assert status.failure_reason == expected
    assert r.services.effective("o-1") == []
    undone = [t for kind, t in r.services.for_saga("o-1") if kind == "undo"]
    assert undone == list(reversed([t for kind, t in r.services.for_saga("o-1") if kind == "do"]))
    assert actions(await operator.history("o-1"))[0][0] == action


async def test_resume_and_retry_do_not_apply_where_they_make_no_sense() -> None:
    r = await parked_saga()
    with pytest.raises(ActionRefused):
        await r.engine.retry("o-1", reason="parked sagas are resumed")
    await r.engine.start(place_order, order("o-2"), workflow_id="o-2")
    with pytest.raises(ActionRefused):
        await r.engine.resume("o-2", reason="it is not parked")
    await run_until_idle(r.engine)
    for act in (r.engine.retry, r.engine.resume, r.engine.compensate):
        with pytest.raises(ActionRefused):
            await act("o-2", reason="it is finished")


@workflow(name="elsewhere")
async def elsewhere(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
    await ctx.step("order.create_order", data, compensate="order.cancel_order")
    return {}


async def test_sagas_of_an_unknown_workflow_are_parked_and_hold_up_nobody() -> None:
    r = rig(claim_batch=100)
    first = r.new_engine("first", workflows=[elsewhere, place_order], claim_batch=100)
    for n in range(150):
        await first.start(elsewhere, {"order_id": f"x-{n}"}, workflow_id=f"x-{n}")
    await first.start(place_order, order("o-1"), workflow_id="o-1")
    await first.stop()  # the process dies with every saga unfinished
    r.clock.advance(60)
    successor = r.new_engine("successor", workflows=[place_order], claim_batch=100)
    assert await successor.recover() >= 1
    assert successor.worker.task_of(workflow_id="o-1") is not None  # claimed in the first round
    await run_until_idle(successor)
    assert (await successor.status("o-1")).status == "COMPLETED"
    parked = await successor.status("x-0")
    assert parked.status == "PARKED"
    assert "UnknownWorkflow" in (parked.failure_reason or "")
    assert sum(1 for s in (await successor.list(limit=500)).sagas if s.status == "PARKED") == 150


async def test_retry_attempts_a_compensation_now_instead_of_waiting_out_its_backoff() -> None:
    slow = RetryPolicy(initial_interval=3600, max_interval=3600, max_attempts=None)
    r = rig(compensation_retry=slow)
    r.services.refuse.add("payment.process_payment")
    r.services.comp_failures["inventory.release_stock"] = 1
    await r.engine.start(place_order, order(), workflow_id="o-1")

    async def waiting_out_backoff() -> bool:
        history = await r.engine.history("o-1")
        return any(e.type == ET.COMPENSATION_RETRYING for e in history)

    await until(waiting_out_backoff)
    began = r.clock.now()
    await r.engine.retry("o-1", reason="inventory is back")
    status = await r.engine.wait("o-1", timeout=5)
    assert status.status == "FAILED"
    assert r.clock.now() == began  # nobody waited out the hour
    assert actions(await r.engine.history("o-1")) == [("retry", "inventory is back")]


async def test_compensate_before_the_pivot_undoes_what_took_effect() -> None:
    r = rig()
    r.transport.inject("payment.process_payment", Fault("transient", times=3))
    await r.engine.start(place_order, order(), workflow_id="o-1")

    async def retrying_payment() -> bool:
        history = await r.engine.history("o-1")
        return any(e.type == ET.STEP_RETRYING for e in history)

    await until(retrying_payment)
    await r.engine.compensate("o-1", reason="suspected fraud")
    await run_until_idle(r.engine)
    status = await r.engine.status("o-1")
    assert (status.status, status.failure_reason) == ("FAILED", "operator: suspected fraud")
    assert r.services.effective("o-1") == []
    assert actions(await r.engine.history("o-1")) == [("compensate", "suspected fraud")]


async def test_a_resumed_saga_gets_its_time_budget_again_however_long_it_was_parked() -> None:
    r = rig(crash=CrashAfter(3), saga_deadline=30.0)
    await r.engine.start(two_steps, {"order_id": "o-1"}, workflow_id="o-1")
    await run_until_idle(r.engine, recover=False)
    r.clock.advance(60)
    await run_until_idle(r.new_engine("changed", workflows=[two_steps_changed]))
    r.clock.advance(3600)  # parked for an hour, far past the deadline
    restored = r.new_engine("restored", workflows=[two_steps], saga_deadline=30.0)
    await restored.resume("o-1", reason="v1 is back")
    await run_until_idle(restored)
    assert (await restored.status("o-1")).status == "COMPLETED"


async def test_a_cancel_accepted_during_the_last_step_is_honoured() -> None:
    # two_steps has no pivot: a cancel while its last step runs is accepted, so it must undo.
    r = rig()
    reserve = r.transport._handlers["inventory.reserve_stock"]

    async def cancelled_meanwhile(payload: dict[str, Any]) -> dict[str, Any]:
        await r.engine.cancel("o-1")  # answered 202 by the API
        return await reserve(payload)

    r.transport._handlers["inventory.reserve_stock"] = cancelled_meanwhile
    await r.engine.start(two_steps, {"order_id": "o-1"}, workflow_id="o-1")
    await run_until_idle(r.engine)
    status = await r.engine.status("o-1")
    assert (status.status, status.failure_reason) == ("FAILED", "cancelled")
    assert r.services.effective("o-1") == []


async def test_a_step_that_keeps_failing_logs_once_not_once_per_attempt() -> None:
    r = rig(compensation_alert_attempts=100)
    r.transport.inject("order.complete_order", Fault("transient", times=12))
    with structlog.testing.capture_logs() as logs:
        await r.engine.start(place_order, order(), workflow_id="o-1")
        await run_until_idle(r.engine)
    said = [e for e in logs if e["event"] == "step.retrying" and e["log_level"] != "debug"]
    assert len(said) == 1  # one line says the step began failing
    history = await r.engine.history("o-1")
    assert sum(e.type == ET.STEP_RETRYING for e in history) == 12  # every attempt is recorded
    assert (await r.engine.status("o-1")).status == "COMPLETED"


@pytest.mark.parametrize("step", ["payment.process_payment", "order.complete_order"])
async def test_a_retry_accepted_while_the_attempt_is_in_flight_is_recorded_when_it_succeeds(
    step: str,
) -> None:
    # SPEC §8: every accepted action is in the history, even one that caused no extra attempt
    # (and one that came during the saga's last step).
    r = rig()
    handler = r.transport._handlers[step]

    async def retried_meanwhile(payload: dict[str, Any]) -> dict[str, Any]:
        await r.engine.retry("o-1", reason="the operator was impatient")  # answered 202
        return await handler(payload)

    r.transport._handlers[step] = retried_meanwhile
    await r.engine.start(place_order, order(), workflow_id="o-1")
    await run_until_idle(r.engine)
    history = await r.engine.history("o-1")
    assert (await r.engine.status("o-1")).status == "COMPLETED"
    assert actions(history) == [("retry", "the operator was impatient")]
    kinds = [(e.type, e.step) for e in history if e.type != ET.STEP_SCHEDULED]
    recorded = kinds.index((ET.OPERATOR_ACTION, None))
    assert kinds[recorded + 1] == (ET.STEP_COMPLETED, step)  # with the attempt it met
    assert r.services.calls[step] == 1  # no extra attempt
    assert (await r.store.get("o-1")).operator_request is None  # type: ignore[union-attr]


@pytest.mark.parametrize("definition", [place_order, place_order_declarative])
async def test_the_pivot_step_says_so_when_it_is_scheduled(definition: Any) -> None:
    r = rig()
    await r.engine.start(definition, order(), workflow_id="o-1")
    await run_until_idle(r.engine)
    scheduled = [e for e in await r.engine.history("o-1") if e.type == ET.STEP_SCHEDULED]
    assert [e.step for e in scheduled if e.payload.get("pivot")] == ["shipping.arrange_shipping"]
