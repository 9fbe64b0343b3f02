"""Property tests: whatever goes wrong, a saga ends all-done or exactly-undone, in reverse.

Workflows of 1–6 compensable steps run on the in-memory store and transport with a fake clock,
under any mix of: a business failure at step k, transient failures (retried, possibly past the
retry limit), timeouts (the late command still arrives), duplicated deliveries, lost replies,
failing compensations, a crash after any history append (a second engine recovers), and a
cancel at any step. Invariant: the saga is COMPLETED with every step done once and nothing
undone, or FAILED with exactly the steps that took effect undone once each, in reverse order.
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
from engine.errors import StoreUnavailable
from engine.history import Event, EventType
from engine.testing import FakeServices, run_until_idle

RETRY = RetryPolicy(initial_interval=1.0, backoff=2.0, max_interval=8.0, max_attempts=4)
COMP_RETRY = RetryPolicy(initial_interval=1.0, backoff=2.0, max_interval=4.0, max_attempts=None)
TIMEOUT = 5.0


@dataclasses.dataclass
class Plan:
    steps: int
    refuse: int | None
    faults: list[tuple[int, str, int]]  # (step, kind, times)
    comp_failures: dict[int, int]
    crash_after: int | None
    cancel_at: int | None


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    steps = draw(st.integers(1, 6))
    step = st.integers(0, steps - 1)
    kinds = st.sampled_from(["transient", "delay", "duplicate", "drop_reply"])
    return Plan(
        steps=steps,
        refuse=draw(st.none() | step),
        faults=draw(st.lists(st.tuples(step, kinds, st.integers(1, 5)), max_size=4)),
        comp_failures=draw(st.dictionaries(step, st.integers(1, 4), max_size=2)),
        crash_after=draw(st.none() | st.integers(1, 3 * steps + 6)),
        cancel_at=draw(st.none() | step),
    )


@workflow(name="chain")
async def chain(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
    for i in range(data["steps"]):
        await ctx.step(f"svc.do{i}", {"i": i}, compensate=f"svc.undo{i}", retry=RETRY)
    return {"done": data["steps"]}


async def run(plan: Plan) -> tuple[FakeServices, list[Event], str]:
    clock = FakeClock()
    services = FakeServices({f"svc.do{i}": f"svc.undo{i}" for i in range(plan.steps)})
    if plan.refuse is not None:
        services.refuse.add(f"svc.do{plan.refuse}")
    for index, failures in plan.comp_failures.items():
        services.comp_failures[f"svc.undo{index}"] = failures
    transport = services.transport(clock)
    for index, kind, times in plan.faults:
        transport.inject(f"svc.do{index}", Fault(kind, times=times, seconds=TIMEOUT * 2))  # type: ignore[arg-type]

    commits = 0

    def crash(saga_id: str, events: Sequence[Event]) -> None:
        nonlocal commits
        commits += 1
        if commits == plan.crash_after:
            raise StoreUnavailable("crash after append")

    store = InMemoryHistoryStore(after_commit=crash)
    if plan.cancel_at is not None:
        target = f"svc.do{plan.cancel_at}"
        forward = transport._handlers[target]

        async def cancelling(payload: dict[str, Any]) -> dict[str, Any]:
            # an already finished saga refuses the cancel: fine
            with contextlib.suppress(Exception):
                await store.request_action("saga", "cancel", reason="cancelled", now=clock.now())
            return await forward(payload)

        transport._handlers[target] = cancelling

    options: dict[str, Any] = {
        "clock": clock,
        "default_step_timeout": TIMEOUT,
        "compensation_retry": COMP_RETRY,
        "lease_seconds": 30,
    }
    first = Engine(store, transport, owner_id="first", **options)
    with contextlib.suppress(StoreUnavailable):  # a crash right after the start's commit
        await first.start(chain, {"steps": plan.steps}, workflow_id="saga")
    await run_until_idle(first, recover=False)
    clock.advance(100)  # the first engine is gone; its lease expires
    second = Engine(store, transport, owner_id="second", workflows=[chain], **options)
    await run_until_idle(second)
    clock.advance(1000)  # late (timed-out) commands arrive now
    await transport.drain()
    status = await second.status("saga")
    return services, await second.history("saga"), status.status


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans())
def test_saga_ends_all_done_or_exactly_undone_in_reverse(plan: Plan) -> None:
    services, history, status = asyncio.run(run(plan))
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
    if plan.refuse is not None and status == "FAILED":
        assert services.calls[f"svc.undo{plan.refuse}"] == 0 or any(
            index == plan.refuse and kind in ("delay", "drop_reply", "transient")
            for index, kind, _ in plan.faults
        )
