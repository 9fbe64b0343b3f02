"""DBOS-style replay tests: the body re-runs after a crash, each step's effect happens once."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import mysql_database_url
from sqlalchemy.ext.asyncio import create_async_engine

from engine import Engine, WorkflowContext, workflow
from engine.adapters import InMemoryHistoryStore, SqlHistoryStore
from engine.adapters.sql_tables import saga_instances
from engine.clock import FakeClock
from engine.errors import StoreUnavailable
from engine.history import Event, EventType
from engine.testing import FakeServices, run_until_idle

STEPS = {f"svc.step{i}": f"svc.undo{i}" for i in range(3)}
BODY_RUNS: collections.Counter[str] = collections.Counter()


@workflow(name="counted")
async def counted(ctx: WorkflowContext, data: dict[str, Any]) -> dict[str, Any]:
    BODY_RUNS[ctx.workflow_id] += 1
    total = 0
    for i in range(3):
        reply = await ctx.step(f"svc.step{i}", {"i": i}, compensate=f"svc.undo{i}")
        total += len(reply)
    return {"total": total}


class CrashingStore:
    """Delegates to a store; the n-th write fails after (or before) it is committed."""

    def __init__(self, inner: Any, n: int, *, after: bool = True) -> None:
        self.inner, self.n, self.after, self.writes = inner, n, after, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def _write(self, call: Any) -> Any:
        self.writes += 1
        if self.writes == self.n and not self.after:
            call.close()
            raise StoreUnavailable("crash before commit")
        result = await call
        if self.writes == self.n:
            raise StoreUnavailable("crash after commit")
        return result

    async def create(self, record: Any, events: Sequence[Event]) -> Any:
        return await self._write(self.inner.create(record, events))

    async def append(self, saga_id: str, events: Sequence[Event], **kw: Any) -> None:
        await self._write(self.inner.append(saga_id, events, **kw))


def completed_steps(history: list[Event]) -> list[str | None]:
    return [e.step for e in history if e.type == EventType.STEP_COMPLETED]


@pytest.mark.parametrize(("crash_at", "after"), [(2, True), (3, False), (4, True), (5, False)])
async def test_recovered_saga_reruns_the_body_but_no_step_twice(crash_at: int, after: bool) -> None:
    wid = f"replay-{crash_at}-{after}"
    clock = FakeClock()
    services = FakeServices(dict(STEPS))
    transport = services.transport(clock)
    inner = InMemoryHistoryStore()
    first = Engine(
        CrashingStore(inner, crash_at, after=after), transport, clock=clock, owner_id="first"
    )
    await first.start(counted, {}, workflow_id=wid)
    await run_until_idle(first, recover=False)
    assert (await first.status(wid)).status not in ("COMPLETED", "FAILED")
    clock.advance(60)
    second = Engine(inner, transport, clock=clock, owner_id="second", workflows=[counted])
    await run_until_idle(second)
    assert (await second.status(wid)).status == "COMPLETED"
    assert BODY_RUNS[wid] == 2
    assert [services.executions[(wid, step)] for step in STEPS] == [1, 1, 1]
    assert completed_steps(await second.history(wid)) == list(STEPS)
    # a step with a recorded outcome is never sent again; an unrecorded one may be, same key
    keys = [c.idempotency_key for c in transport.calls]
    assert len(keys) - len(set(keys)) <= 1
    assert set(keys) == {f"{wid}:step{i}" for i in range(3)}


@pytest.mark.mysql
async def test_replay_on_mariadb_forced_back_to_pending() -> None:
    url = mysql_database_url("cloudmart_test_engine_replay")
    db = create_async_engine(url)
    try:
        store = SqlHistoryStore(db)
        await store.create_tables()
        services = FakeServices(dict(STEPS))
        transport = services.transport()
        first = Engine(CrashingStore(store, 3), transport, owner_id="first")
        await first.start(counted, {}, workflow_id="replay-sql")
        await run_until_idle(first, recover=False)
        async with db.begin() as conn:  # the process died: its lease is gone
            await conn.execute(sa.update(saga_instances).values(owner=None, lease_expires_at=None))
        second = Engine(store, transport, owner_id="second", workflows=[counted])
        assert await second.recover() == 1
        await run_until_idle(second)
        status = await second.status("replay-sql")
        assert status.status == "COMPLETED"
        assert BODY_RUNS["replay-sql"] == 2
        assert [services.executions[("replay-sql", s)] for s in STEPS] == [1, 1, 1]
        assert services.calls["svc.step0"] == 1
        history = await second.history("replay-sql")
        assert completed_steps(history) == list(STEPS)
        assert [e.seq for e in history] == list(range(len(history)))
        assert {e.version for e in history if e.type == EventType.STEP_COMPLETED} == {1, 2}
    finally:
        await db.dispose()


class PausingAfterTheLastWrite:
    """Delegates to a store; the append that finishes a saga is committed, then waits for
    ``go`` before it returns (``committed`` is set meanwhile)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.committed = asyncio.Event()
        self.go = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def append(self, saga_id: str, events: Sequence[Event], **kw: Any) -> None:
        await self.inner.append(saga_id, events, **kw)
        if kw["projection"].finished:
            self.committed.set()
            await self.go.wait()


async def test_a_lease_renewal_between_the_last_commit_and_its_return_loses_nothing() -> None:
    # The last append releases the lease; a renewal that sees the released row before the run
    # has heard back from its write must not take the saga for lost (and cancel its end).
    clock = FakeClock()
    store = PausingAfterTheLastWrite(InMemoryHistoryStore())
    engine = Engine(store, FakeServices(dict(STEPS)).transport(clock), clock=clock, owner_id="a")
    await engine.start(counted, {}, workflow_id="renewed")
    await asyncio.wait_for(store.committed.wait(), timeout=10)
    run = engine.worker.task_of(workflow_id="renewed")
    assert run is not None
    await engine.worker._renew()
    store.go.set()
    await asyncio.wait_for(run, timeout=10)
    assert (await engine.status("renewed")).status == "COMPLETED"
    assert engine.counters.sagas_completed == 1
