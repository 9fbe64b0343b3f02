"""Admission control on the in-memory store with a fake clock: at most ``max_running`` sagas
driven at once, the rest written and waiting their turn (oldest first; claimable by any
engine with room once they waited longer than a lease), and a start refused only once
``max_queued`` sagas wait."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from conftest import until
from engine_unit_kit import order, rig

from engine.errors import SagaQueueFull
from engine.history import EventType
from engine.testing import run_until_idle
from workflows import place_order

ET = EventType


async def test_at_most_max_running_sagas_are_driven_and_the_rest_wait_in_the_store() -> None:
    r = rig(max_running=2)
    most = 0

    def count(saga_id: str, events: object) -> None:
        nonlocal most
        most = max(most, r.engine.running)

    r.store.after_commit = count
    handles = [
        await r.engine.start(place_order, order(f"o-{n}"), workflow_id=f"o-{n}")
        for n in range(1, 6)
    ]
    assert all(h.created and h.status == "STARTED" for h in handles)
    assert (r.engine.running, r.engine.waiting) == (2, 3)
    waiting = [await r.store.get(f"o-{n}") for n in (3, 4, 5)]
    assert [(w.status, w.version) for w in waiting if w is not None] == [("STARTED", 1)] * 3

    await run_until_idle(r.engine)

    assert [(await r.engine.status(f"o-{n}")).status for n in range(1, 6)] == ["COMPLETED"] * 5
    assert most == 2
    clock_order = []
    for n in range(1, 6):
        history = await r.engine.history(f"o-{n}")
        clock_order.append(history[1].created_at)
    assert clock_order == sorted(clock_order)  # the waiting ones ran in the order they came


async def test_a_start_beyond_max_queued_is_refused_and_writes_nothing() -> None:
    r = rig(max_running=1, max_queued=2)
    for n in (1, 2, 3):
        await r.engine.start(place_order, order(f"o-{n}"), workflow_id=f"o-{n}")
    with pytest.raises(SagaQueueFull) as refused:
        await r.engine.start(place_order, order("o-4"), workflow_id="o-4")
    assert refused.value.waiting == 2
    assert refused.value.retry_after >= 1
    assert await r.store.get("o-4") is None
    again = await r.engine.start(place_order, order("o-2"), workflow_id="o-2")
    assert (again.created, again.status) == (False, "STARTED")  # a start sent again is answered

    await run_until_idle(r.engine)

    assert [(await r.engine.status(f"o-{n}")).status for n in (1, 2, 3)] == ["COMPLETED"] * 3
    later = await r.engine.start(place_order, order("o-4"), workflow_id="o-4")
    assert later.created  # room again: admitted


async def test_sagas_waiting_longer_than_a_lease_are_claimed_by_another_engine_with_room() -> None:
    r = rig(max_running=1, owner_id="unit-a", lease_seconds=30.0)
    for n in (1, 2, 3):
        await r.engine.start(place_order, order(f"o-{n}"), workflow_id=f"o-{n}")
    other = r.new_engine("unit-b", max_running=5, workflows=[place_order])
    assert await other.recover() == 0  # their first lease is still unit-a's
    r.clock.advance(31.0)
    driving = await r.store.get("o-1")  # unit-a renews the lease of what it drives
    assert driving is not None
    until = r.clock.now() + timedelta(seconds=30)
    assert await r.store.renew(owner="unit-a", saga_ids=[driving.saga_id], until=until)
    assert await other.recover() == 2

    await asyncio.gather(run_until_idle(r.engine), run_until_idle(other))

    drivers = {}
    for n in (1, 2, 3):
        history = await r.engine.history(f"o-{n}")
        assert history[-1].type == ET.WORKFLOW_COMPLETED
        drivers[f"o-{n}"] = {e.owner for e in history[1:]}
    assert drivers == {"o-1": {"unit-a"}, "o-2": {"unit-b"}, "o-3": {"unit-b"}}


async def test_wait_on_a_waiting_saga_returns_once_it_is_done_not_after_its_poll() -> None:
    # A poll interval of an hour: wait() must be woken by the claim, not by polling.
    r = rig(max_running=1, poll_interval=3600.0)
    await r.engine.start(place_order, order("o-1"), workflow_id="o-1")
    await r.engine.start(place_order, order("o-2"), workflow_id="o-2")
    waiter = asyncio.create_task(r.engine.wait("o-2", timeout=3600.0))
    await run_until_idle(r.engine)
    await until(waiter.done, timeout=10)
    assert waiter.result().status == "COMPLETED"


async def test_a_cancel_of_a_waiting_saga_is_honoured_without_waiting_for_a_slot() -> None:
    r = rig(max_running=1)
    await r.engine.start(place_order, order("o-1"), workflow_id="o-1")
    await r.engine.start(place_order, order("o-2"), workflow_id="o-2")
    await r.engine.cancel("o-2")
    assert (r.engine.running, r.engine.waiting) == (2, 0)  # driven at once, beside o-1
    await run_until_idle(r.engine)
    cancelled = await r.engine.status("o-2")
    assert (cancelled.status, cancelled.failure_reason) == ("FAILED", "cancelled")
    assert r.services.for_saga("o-2") == []  # nothing was sent for it
    assert (await r.engine.status("o-1")).status == "COMPLETED"
