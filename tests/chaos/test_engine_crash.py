"""Chaos: real engine processes on MariaDB, SIGKILLed or paused mid-run.

Only what the history and the services' tables show is asserted: every saga terminal, no step
completed twice, every command's effect at most once, one owner per fencing version.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import mysql_database_url, until
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from engine.adapters import SqlHistoryStore
from engine.adapters.sql_tables import saga_instances, saga_step_logs

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.mysql]

WORKER = Path(__file__).with_name("engine_worker.py")
ROOT = Path(__file__).resolve().parents[2]
SAGAS = 50


@pytest.fixture
async def database(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, AsyncEngine]]:
    url = mysql_database_url(f"cloudmart_test_engine_{request.node.name[5:20]}")
    db = create_async_engine(url)
    await SqlHistoryStore(db).create_tables()
    sys.path.insert(0, str(WORKER.parent))
    from engine_worker import effects_metadata

    async with db.begin() as conn:
        await conn.run_sync(effects_metadata.create_all)
    try:
        yield url, db
    finally:
        await db.dispose()


def spawn(url: str, owner: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            str(WORKER),
            "--url",
            url,
            "--owner",
            owner,
            "--expect",
            str(SAGAS),
            *extra,
        ],
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


async def scalar(db: AsyncEngine, query: sa.Select[tuple[int]]) -> int:
    async with db.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


def completed_steps() -> sa.Select[tuple[int]]:
    return (
        sa.select(sa.func.count())
        .select_from(saga_step_logs)
        .where(saga_step_logs.c.event_type == "StepCompleted")
    )


async def check_history(db: AsyncEngine) -> dict[str, int]:
    async with db.connect() as conn:
        statuses = collections.Counter(
            r.status for r in await conn.execute(sa.select(saga_instances.c.status))
        )
        events = (
            await conn.execute(
                sa.select(saga_step_logs).order_by(saga_step_logs.c.saga_id, saga_step_logs.c.seq)
            )
        ).all()
        deliveries = (
            await conn.execute(
                sa.text("SELECT idem_key, COUNT(*) AS n FROM engine_deliveries GROUP BY idem_key")
            )
        ).all()
        effects = (await conn.execute(sa.text("SELECT COUNT(*) FROM engine_effects"))).scalar()
    assert sum(statuses.values()) == SAGAS
    assert set(statuses) <= {"COMPLETED", "FAILED"}, statuses
    by_saga: dict[str, list[sa.Row[object]]] = collections.defaultdict(list)
    for event in events:
        by_saga[event.saga_id].append(event)
    for saga_events in by_saga.values():
        assert [e.seq for e in saga_events] == list(range(len(saga_events)))
        done = [e.position for e in saga_events if e.event_type == "StepCompleted"]
        assert len(done) == len(set(done)), "a step completed twice"
        owners: dict[int, set[str]] = collections.defaultdict(set)
        for e in saga_events:
            owners[e.version].add(e.owner)
        assert all(len(o) == 1 for o in owners.values()), "two owners under one version"
    assert effects == len(deliveries)  # every delivered command took effect once, by key
    return {
        "completed": statuses["COMPLETED"],
        "failed": statuses["FAILED"],
        "redelivered": sum(1 for d in deliveries if d.n > 1),
    }


async def test_killed_engine_process_is_recovered_by_a_new_one(
    database: tuple[str, AsyncEngine], tmp_path: Path
) -> None:
    url, db = database
    first = spawn(url, "crash-a", tmp_path / "a.log", "--start", str(SAGAS), "--lease", "1")
    try:
        started = sa.select(sa.func.count()).select_from(saga_instances)
        await until(lambda: _equals(db, started, SAGAS), timeout=60)
        await until(lambda: _at_least(db, 60), timeout=60)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        assert await scalar(db, completed_steps()) < SAGAS * 5, "killed too late to matter"
        second = spawn(url, "crash-b", tmp_path / "b.log", "--lease", "1")
        try:
            assert second.wait(timeout=90) == 0, (tmp_path / "b.log").read_text()
        finally:
            if second.poll() is None:
                second.kill()
    finally:
        if first.poll() is None:
            first.kill()
    outcome = await check_history(db)
    assert outcome["completed"] == SAGAS


async def _equals(db: AsyncEngine, query: sa.Select[tuple[int]], n: int) -> bool:
    return await scalar(db, query) == n


async def _at_least(db: AsyncEngine, n: int) -> bool:
    return await scalar(db, completed_steps()) >= n


async def test_two_engine_processes_never_drive_one_saga_at_once(
    database: tuple[str, AsyncEngine], tmp_path: Path
) -> None:
    url, db = database
    first = spawn(
        url,
        "pair-a",
        tmp_path / "a.log",
        "--start",
        str(SAGAS),
        "--lease",
        "1",
        "--latency",
        "0.02",
    )
    second = spawn(url, "pair-b", tmp_path / "b.log", "--lease", "1")
    try:
        started = sa.select(sa.func.count()).select_from(saga_instances)
        await until(lambda: _equals(db, started, SAGAS), timeout=60)
        await until(lambda: _at_least(db, 40), timeout=60)
        # a freezes (maybe inside a history commit, holding row locks: the worker's sessions
        # have idle_transaction_timeout=1, so MariaDB ends such a transaction and b can take
        # every saga over); its leases expire while it sleeps
        first.send_signal(signal.SIGSTOP)
        taken = (
            sa.select(sa.func.count())
            .select_from(saga_step_logs)
            .where(saga_step_logs.c.owner == "pair-b")
        )
        await until(lambda: scalar(db, taken), timeout=60)
        first.send_signal(signal.SIGCONT)  # a wakes up with stale leases: it must be fenced
        assert second.wait(timeout=90) == 0, (tmp_path / "b.log").read_text()
        assert first.wait(timeout=90) == 0, (tmp_path / "a.log").read_text()
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
    outcome = await check_history(db)
    assert outcome["completed"] == SAGAS
    versions = await scalar(
        db,
        sa.select(sa.func.count()).select_from(saga_step_logs).where(saga_step_logs.c.version > 1),
    )
    assert versions > 0  # some sagas really changed hands
