"""Property tests: whatever goes wrong, a saga ends all-done or exactly-undone, in reverse.

Workflows of 1–6 compensable steps run on the in-memory store and transport with a fake clock,
under any mix of: a business failure at step k, transient failures (retried, possibly past the
retry limit), timeouts (the late command still arrives), duplicated deliveries and lost replies
on steps and on compensations alike, failing compensations, up to three crashes after history
appends (each time another engine recovers the saga), a cancel at any step, and an operator's
retry or compensate at any step. Invariant: the saga is COMPLETED with every step done once and
nothing undone, or FAILED with exactly the steps that took effect undone once each, in reverse
order; an accepted compensate ends it FAILED, and every accepted action is in its history.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import Engine, RetryPolicy, WorkflowContext, workflow
from engine.adapters import InMemoryHistoryStore
from engine.adapters.memory_transport import Fault
from engine.clock import FakeClock
from engine.errors import ActionRefused, StoreUnavailable
from engine.history import Event, EventType
from engine.testing import FakeServices, run_until_idle

RETRY = RetryPolicy(initial_interval=1.0, backoff=2.0, max_interval=8.0, max_attempts=4)
COMP_RETRY = RetryPolicy(initial_interval=1.0, backoff=2.0, max_interval=4.0, max_attempts=None)
TIMEOUT = 5.0
KINDS = ["transient", "delay", "duplicate", "drop_reply"]


@dataclasses.dataclass
class Plan:
    steps: int
    refuse: int | None
    faults: list[tuple[int, str, int]]  # (step, kind, times)
    comp_faults: list[tuple[int, str, int]]  # (step whose compensation, kind, times)
    comp_failures: dict[int, int]
    crashes: frozenset[int]  # the n-th commits after which the engine "crashes"
    cancel_at: int | None
    operator: tuple[int, str] | None  # (step, "retry" | "compensate")


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    steps = draw(st.integers(1, 6))
    step = st.integers(0, steps - 1)
    faults = st.lists(st.tuples(step, st.sampled_from(KINDS), st.integers(1, 5)), max_size=4)
    return Plan(
        steps=steps,
        refuse=draw(st.none() | step),
        faults=draw(faults),
        comp_faults=draw(
            st.lists(st.tuples(step, st.sampled_from(KINDS), st.integers(1, 3)), max_size=3)
        ),
        comp_failures=draw(st.dictionaries(step, st.integers(1, 4), max_size=2)),
        crashes=draw(st.frozensets(st.integers(1, 3 * steps + 6), max_size=3)),
        cancel_at=draw(st.none() | step),
        operator=draw(st.none() | st.tuples(step, st.sampled_from(["retry", "compensate"]))),
    )


@workflow(name="chain")
async def chain(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
    for i in range(data["steps"]):
        await ctx.step(f"svc.do{i}", {"i": i}, compensate=f"svc.undo{i}", retry=RETRY)
    return {"done": data["steps"]}


@dataclasses.dataclass
class Outcome:
    services: FakeServices
    history: list[Event]
    status: str
    accepted: list[str]  # the operator actions the engine accepted


async def run(plan: Plan) -> Outcome:
    clock = FakeClock()
    services = FakeServices({f"svc.do{i}": f"svc.undo{i}" for i in range(plan.steps)})
    if plan.refuse is not None:
        services.refuse.add(f"svc.do{plan.refuse}")
    for index, failures in plan.comp_failures.items():
        services.comp_failures[f"svc.undo{index}"] = failures
    transport = services.transport(clock)
    for index, kind, times in plan.faults:
        transport.inject(f"svc.do{index}", Fault(kind, times=times, seconds=TIMEOUT * 2))  # type: ignore[arg-type]
    for index, kind, times in plan.comp_faults:
        transport.inject(f"svc.undo{index}", Fault(kind, times=times, seconds=TIMEOUT * 2))  # type: ignore[arg-type]

    commits = 0

    def crash(saga_id: str, events: Sequence[Event]) -> None:
        nonlocal commits
        commits += 1
        if commits in plan.crashes:
            raise StoreUnavailable("crash after append")

    store = InMemoryHistoryStore(after_commit=crash)
    options: dict[str, Any] = {
        "clock": clock,
        "default_step_timeout": TIMEOUT,
        "compensation_retry": COMP_RETRY,
        "lease_seconds": 30,
    }
    engines = [Engine(store, transport, owner_id="first", **options)]
    accepted: list[str] = []

    def before(target: str, act: Any) -> None:
        forward = transport._handlers[target]

        async def acting(payload: dict[str, Any]) -> dict[str, Any]:
            await act()
            return await forward(payload)

        transport._handlers[target] = acting

    if plan.cancel_at is not None:

        async def cancel() -> None:
            with contextlib.suppress(ActionRefused):  # an already finished saga refuses it
                await engines[-1].cancel("saga")
                accepted.append("cancel")

        before(f"svc.do{plan.cancel_at}", cancel)
    if plan.operator is not None:
        index, action = plan.operator

        async def operate() -> None:
            with contextlib.suppress(ActionRefused):
                act = engines[-1].retry if action == "retry" else engines[-1].compensate
                await act("saga", reason=f"operator {action}")
                accepted.append(action)

        before(f"svc.do{index}", operate)

    with contextlib.suppress(StoreUnavailable):  # a crash right after the start's commit
        await engines[0].start(chain, {"steps": plan.steps}, workflow_id="saga")
    await run_until_idle(engines[0], recover=False)
    for n in range(len(plan.crashes)):
        # The engine that crashed stops touching the saga; once its lease expired another
        # one recovers it, and drives it until it crashes in turn or the saga ends.
        clock.advance(100)
        engines.append(Engine(store, transport, owner_id=f"e{n}", workflows=[chain], **options))
        await engines[-1].recover()
        await run_until_idle(engines[-1], recover=False)
    clock.advance(100)
    engines.append(Engine(store, transport, owner_id="last", workflows=[chain], **options))
    await run_until_idle(engines[-1])
    clock.advance(1000)  # late (timed-out) commands arrive now
    await transport.drain()
    status = await engines[-1].status("saga")
    return Outcome(services, await engines[-1].history("saga"), status.status, accepted)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans())
def test_saga_ends_all_done_or_exactly_undone_in_reverse(plan: Plan) -> None:
    outcome = asyncio.run(run(plan))
    services, history, status = outcome.services, outcome.history, outcome.status
    journal = services.for_saga("saga")
    done = [t for kind, t in journal if kind == "do"]
    undone = [t for kind, t in journal if kind == "undo"]
    assert status in ("COMPLETED", "FAILED")
    assert len(done) == len(set(done))  # each effect at most once
    if status == "COMPLETED":
        assert done == [f"svc.do{i}" for i in range(plan.steps)]
        assert undone == []
    else:
        assert undone == list(reversed(done))  # exactly what took effect, in reverse, once
        assert services.effective("saga") == []
    completed = [e.position for e in history if e.type == EventType.STEP_COMPLETED]
    compensated = [e.position for e in history if e.type == EventType.COMPENSATION_COMPLETED]
    assert len(completed) == len(set(completed))
    assert len(compensated) == len(set(compensated))
    assert [e.seq for e in history] == list(range(len(history)))
    if {"cancel", "compensate"} & set(outcome.accepted):
        assert status == "FAILED"  # an accepted cancel or compensate is honoured
    recorded = {e.payload["action"] for e in history if e.type == EventType.OPERATOR_ACTION}
    if "compensate" in outcome.accepted and "cancel" not in outcome.accepted:
        assert "compensate" in recorded
    assert recorded <= set(outcome.accepted)
    if plan.refuse is not None and status == "FAILED":
        assert services.calls[f"svc.undo{plan.refuse}"] == 0 or any(
            index == plan.refuse and kind in ("delay", "drop_reply", "transient")
            for index, kind, _ in plan.faults
        )
