"""The HistoryStore contract, run against every adapter: in-memory, SQLite and MariaDB."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import mysql_database_url
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from round_trips import count_round_trips
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from activities.db import create_engine
from engine.adapters import InMemoryHistoryStore, SqlHistoryStore
from engine.errors import (
    ActionRefused,
    CancelRequested,
    ConcurrencyConflict,
    SagaAlreadyFinished,
    SagaNotFound,
)
from engine.history import Event, Projection, SagaRecord
from engine.listing import SagaFilter, SagaPosition
from engine.ports import HistoryStore

T0 = datetime(2030, 1, 1, 12, 0, 0, 123456)
LEASE = timedelta(seconds=30)


@pytest.fixture(params=["memory", "sqlite", pytest.param("mariadb", marks=pytest.mark.mysql)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HistoryStore]:
    if request.param == "memory":
        yield InMemoryHistoryStore()
        return
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'history.db'}"
    else:
        url = mysql_database_url("cloudmart_test_engine_contract")
    db = create_async_engine(url)
    sql = SqlHistoryStore(db)
    await sql.create_tables()
    try:
        yield sql
    finally:
        await db.dispose()


def record(n: int = 1, owner: str = "a") -> SagaRecord:
    return SagaRecord(
        saga_id=f"saga-{n}",
        workflow_id=f"order-{n}",
        workflow_name="wf",
        status="STARTED",
        input={"order_id": f"order-{n}", "note": "日本語 ' \" ; DROP TABLE"},
        owner=owner,
        version=1,
        lease_expires_at=T0 + LEASE,
        created_at=T0 + timedelta(seconds=n),
        updated_at=T0,
    )


def ev(
    seq: int, type_: str = "StepScheduled", owner: str = "a", version: int = 1, **payload: object
) -> Event:
    return Event(
        seq=seq,
        type=type_,
        position=seq,
        step="svc.op",
        attempt=1,
        payload=dict(payload),
        created_at=T0 + timedelta(milliseconds=seq),
        owner=owner,
        version=version,
    )


async def started(store: HistoryStore, n: int = 1, owner: str = "a") -> SagaRecord:
    stored, created = await store.create(record(n, owner), [ev(0, "WorkflowStarted", owner)])
    assert created
    return stored


async def appended(store: HistoryStore, *events: Event, projection: Projection) -> None:
    """Owner ``a`` appends ``events`` to the saga :func:`started` made (from seq 1, version 1)."""
    await store.append(
        "saga-1", list(events), expected_seq=1, version=1, owner="a", projection=projection
    )


async def test_create_then_load_round_trips_the_row_and_events(store: HistoryStore) -> None:
    await started(store)
    await appended(
        store,
        ev(1, x=1),
        ev(2, "StepCompleted", result={"a": "¥"}),
        projection=Projection(status="ORDER_CREATED", current_step="svc.op"),
    )
    row, events = await store.load("saga-1")
    assert (row.workflow_id, row.status, row.current_step, row.next_seq) == (
        "order-1",
        "ORDER_CREATED",
        "svc.op",
        3,
    )
    assert row.input == record().input
    assert [e.seq for e in events] == [0, 1, 2]
    assert events[2].payload == {"result": {"a": "¥"}}
    assert events[1].created_at == T0 + timedelta(milliseconds=1)
    assert (events[1].owner, events[1].version, events[1].position) == ("a", 1, 1)


async def test_create_with_a_taken_workflow_id_returns_the_existing_saga(
    store: HistoryStore,
) -> None:
    await started(store)
    clash = SagaRecord(
        **{
            "saga_id": "saga-other",
            "workflow_id": "order-1",
            "workflow_name": "wf",
            "status": "STARTED",
            "input": {},
            "owner": "b",
            "version": 1,
            "created_at": T0,
            "updated_at": T0,
        }
    )
    existing, created = await store.create(clash, [ev(0, "WorkflowStarted", "b")])
    assert not created
    assert existing.saga_id == "saga-1"
    with pytest.raises(SagaNotFound):
        await store.load("saga-other")


async def test_duplicate_seq_is_a_concurrency_conflict(store: HistoryStore) -> None:
    await started(store)
    with pytest.raises(ConcurrencyConflict):
        await store.append(
            "saga-1", [ev(0)], expected_seq=0, version=1, owner="a", projection=Projection()
        )
    assert len((await store.load("saga-1"))[1]) == 1


async def test_stale_version_or_owner_is_refused_and_writes_nothing(store: HistoryStore) -> None:
    await started(store)
    for version, owner in ((0, "a"), (2, "a"), (1, "b")):
        with pytest.raises(ConcurrencyConflict):
            await store.append(
                "saga-1",
                [ev(1)],
                expected_seq=1,
                version=version,
                owner=owner,
                projection=Projection(status="X"),
            )
    row, events = await store.load("saga-1")
    assert (row.status, len(events)) == ("STARTED", 1)


async def test_a_taken_over_saga_refuses_the_old_owner(store: HistoryStore) -> None:
    await started(store)
    later = T0 + LEASE + timedelta(seconds=1)
    assert (
        await store.acquire("saga-1", owner="b", expected_version=1, now=T0, until=T0 + LEASE)
        is None
    )  # lease still valid
    version = await store.acquire(
        "saga-1", owner="b", expected_version=1, now=later, until=later + LEASE
    )
    assert version == 2
    with pytest.raises(ConcurrencyConflict):
        await appended(store, ev(1), projection=Projection())
    await store.append(
        "saga-1",
        [ev(1, owner="b", version=2)],
        expected_seq=1,
        version=2,
        owner="b",
        projection=Projection(),
    )
    stale = await store.acquire(
        "saga-1", owner="c", expected_version=1, now=later + LEASE * 2, until=later + LEASE * 3
    )
    assert stale is None  # the version moved on


async def test_cancel_request_is_refused_by_honouring_appends_only(store: HistoryStore) -> None:
    await started(store)
    cancelled = await store.request_action("order-1", "cancel", reason="cancelled", now=T0)
    assert cancelled.cancel_requested
    assert cancelled.operator_request is None  # a running saga's cancel needs only the flag
    with pytest.raises(CancelRequested):
        await appended(store, ev(1), projection=Projection())
    await store.append(
        "saga-1",
        [ev(1, "CompensationStarted")],
        expected_seq=1,
        version=1,
        owner="a",
        projection=Projection(status="COMPENSATION_STARTED"),
        honour_cancel=False,
    )
    assert (await store.load("saga-1"))[0].next_seq == 2


async def test_projection_columns_round_trip(store: HistoryStore) -> None:
    await started(store)
    await appended(
        store,
        ev(1, "StepCompleted"),
        projection=Projection(status="SHIPPING_ARRANGED", failed_step="svc.op", past_pivot=True),
    )
    row = (await store.load("saga-1"))[0]
    assert (row.failed_step, row.past_pivot) == ("svc.op", True)


async def test_past_the_pivot_cancel_and_compensate_are_refused_but_retry_is_not(
    store: HistoryStore,
) -> None:
    await started(store)
    await appended(
        store,
        ev(1, "StepCompleted"),
        projection=Projection(status="SHIPPING_ARRANGED", past_pivot=True),
    )
    for action in ("cancel", "compensate", "resume"):
        with pytest.raises(ActionRefused) as refused:
            await store.request_action("order-1", action, reason="r", now=T0)
        assert refused.value.status == "SHIPPING_ARRANGED"
    row = await store.request_action("order-1", "retry", reason="flaky", now=T0)
    assert not row.cancel_requested
    assert row.operator_request is not None
    assert (row.operator_request["action"], row.operator_request["reason"]) == ("retry", "flaky")
    assert await store.operator_requests(["saga-1", "saga-404"]) == {"saga-1": row.operator_request}


async def test_a_compensate_request_reaches_the_driver_with_the_refused_append(
    store: HistoryStore,
) -> None:
    await started(store)
    asked = await store.request_action("order-1", "compensate", reason="fraud", now=T0)
    assert asked.cancel_requested
    with pytest.raises(CancelRequested) as refused:
        await appended(store, ev(1), projection=Projection())
    assert refused.value.request == asked.operator_request


async def test_a_parked_saga_is_claimable_only_while_an_operator_request_waits(
    store: HistoryStore,
) -> None:
    await started(store)
    await appended(
        store,
        ev(1, "WorkflowParked"),
        projection=Projection(status="PARKED", needs_operator=True, finished=True),
    )
    later = T0 + LEASE * 2
    assert await store.list_claimable(owner="z", now=later, limit=10) == []
    with pytest.raises(ActionRefused):
        await store.request_action("order-1", "retry", reason="r", now=T0)
    asked = await store.request_action("order-1", "resume", reason="code restored", now=T0)
    assert asked.operator_request is not None
    claimable = await store.list_claimable(owner="z", now=later, limit=10)
    assert [r.saga_id for r in claimable] == ["saga-1"]
    version = await store.acquire(
        "saga-1", owner="z", expected_version=1, now=later, until=later + LEASE
    )
    assert version == 2
    await store.append(
        "saga-1",
        [ev(2, "OperatorAction", owner="z", version=2)],
        expected_seq=2,
        version=2,
        owner="z",
        projection=Projection(status="STARTED", handled_request=asked.operator_request["id"]),
    )
    row = (await store.load("saga-1"))[0]
    assert row.operator_request is None  # answered: cleared by the append that recorded it
    again = await store.request_action("order-1", "retry", reason="now", now=T0)
    assert again.operator_request is not None
    await store.append(
        "saga-1",
        [ev(3, "StepScheduled", owner="z", version=2)],
        expected_seq=3,
        version=2,
        owner="z",
        projection=Projection(status="STARTED", handled_request=asked.operator_request["id"]),
    )
    row = (await store.load("saga-1"))[0]
    assert row.operator_request == again.operator_request  # a later request stays


async def test_claimable_sagas_can_be_split_by_known_workflows(store: HistoryStore) -> None:
    await started(store, 1)
    await store.create(
        dataclasses.replace(record(2), workflow_name="gone"), [ev(0, "WorkflowStarted")]
    )
    later = T0 + LEASE * 2
    known = await store.list_claimable(owner="z", now=later, limit=10, workflows=["wf"])
    others = await store.list_claimable(
        owner="z", now=later, limit=10, workflows=["wf"], known=False
    )
    assert ([r.saga_id for r in known], [r.saga_id for r in others]) == (["saga-1"], ["saga-2"])


async def test_finishing_releases_the_lease_and_the_saga_is_no_longer_claimable(
    store: HistoryStore,
) -> None:
    await started(store)
    await started(store, 2)
    await appended(
        store,
        ev(1, "WorkflowCompleted"),
        projection=Projection(status="COMPLETED", result={"ok": 1}, finished=True),
    )
    row = (await store.load("saga-1"))[0]
    assert (row.owner, row.lease_expires_at, row.result) == (None, None, {"ok": 1})
    later = T0 + LEASE * 2
    claimable = await store.list_claimable(owner="z", now=later, limit=10)
    assert [r.saga_id for r in claimable] == ["saga-2"]
    assert await store.list_claimable(owner="z", now=T0, limit=10) == []
    assert [r.saga_id for r in await store.list_claimable(owner="a", now=T0, limit=10)] == [
        "saga-2"
    ]
    with pytest.raises(SagaAlreadyFinished):
        await store.request_action("order-1", "cancel", reason="cancelled", now=T0)
    with pytest.raises(SagaNotFound):
        await store.request_action("order-404", "cancel", reason="cancelled", now=T0)


async def test_renew_extends_only_leases_still_owned(store: HistoryStore) -> None:
    await started(store, 1)
    await started(store, 2)
    later = T0 + LEASE * 2
    assert (
        await store.acquire("saga-2", owner="b", expected_version=1, now=later, until=later + LEASE)
        == 2
    )
    kept = await store.renew(owner="a", saga_ids=["saga-1", "saga-2"], until=later + LEASE)
    assert kept == {"saga-1"}
    assert (await store.load("saga-1"))[0].lease_expires_at == later + LEASE
    await store.release("saga-1", owner="a", version=1)
    assert (await store.load("saga-1"))[0].owner is None


async def test_get_and_list_by_status(store: HistoryStore) -> None:
    for n in (1, 2, 3):
        await started(store, n)
    await store.append(
        "saga-2",
        [ev(1)],
        expected_seq=1,
        version=1,
        owner="a",
        projection=Projection(
            status="FAILED",
            failure_reason="why",
            needs_operator=True,
            compensation_attempts=3,
            finished=True,
        ),
    )
    assert (await store.get("order-2")).failure_reason == "why"  # type: ignore[union-attr]
    assert await store.get("order-9") is None
    assert [r.saga_id for r in await store.list()] == ["saga-3", "saga-2", "saga-1"]
    failed = await store.list(SagaFilter(statuses=("FAILED",)))
    assert [(r.saga_id, r.needs_operator, r.compensation_attempts) for r in failed] == [
        ("saga-2", True, 3)
    ]
    assert len(await store.list(limit=2)) == 2


async def test_the_operator_flag_is_counted_on_every_saga_that_carries_it(
    store: HistoryStore,
) -> None:
    for n in (1, 2, 3, 4, 5):
        await started(store, n)
    assert await store.count_needing_operator() == 0
    flagged = {
        "saga-1": Projection(status="COMPENSATION_STARTED", needs_operator=True),
        "saga-2": Projection(status="PARKED", needs_operator=True, finished=True),
        "saga-3": Projection(status="COMPENSATION_STARTED"),  # compensating, not flagged
        "saga-4": Projection(status="SHIPPING_ARRANGED", needs_operator=True, past_pivot=True),
    }
    for saga_id, projection in flagged.items():
        await store.append(
            saga_id, [ev(1)], expected_seq=1, version=1, owner="a", projection=projection
        )
    assert await store.count_needing_operator() == 3


async def two_events_appended(store: HistoryStore, n: int, *, version: int = 1) -> None:
    """Owner ``a`` appends two events to saga ``n`` (:func:`started`), as lease ``version``."""
    await store.append(
        f"saga-{n}",
        [ev(1), ev(2)],
        expected_seq=1,
        version=version,
        owner="a",
        projection=Projection(status="ORDER_CREATED"),
    )


async def test_concurrent_appends_commit_together_and_a_stale_one_is_refused_alone(
    store: HistoryStore,
) -> None:
    for n in range(1, 9):
        await started(store, n)

    async def append(n: int) -> str:
        try:
            await two_events_appended(store, n, version=9 if n == 5 else 1)  # saga-5's is stale
        except ConcurrencyConflict:
            return "conflict"
        return "ok"

    outcomes = await asyncio.gather(*(append(n) for n in range(1, 9)))
    assert outcomes == ["ok"] * 4 + ["conflict"] + ["ok"] * 3
    for n in range(1, 9):
        _, events = await store.load(f"saga-{n}")
        assert len(events) == (1 if n == 5 else 3)


@pytest.fixture
async def mariadb_store() -> AsyncIterator[tuple[SqlHistoryStore, AsyncEngine]]:
    db = create_engine(mysql_database_url("cloudmart_test_engine_packets"))  # as a process's
    store = SqlHistoryStore(db)
    await store.create_tables()
    try:
        yield store, db
    finally:
        await db.dispose()


@pytest.mark.mysql
async def test_a_group_commit_of_matching_appends_is_one_round_trip_on_mariadb(
    mariadb_store: tuple[SqlHistoryStore, AsyncEngine],
) -> None:
    store, db = mariadb_store
    for n in range(1, 5):
        await started(store, n)
    await store.load("saga-1")  # the pool's connection is open
    sent = count_round_trips(db)
    commits = store.commits
    # The first append is written alone; the three queued behind it share one packet.
    await asyncio.gather(*(two_events_appended(store, n) for n in range(1, 4)))
    assert (len(sent), store.commits - commits) == (2, 2), sent
    # A stale row in the packet: nothing of it is written, and the two-packet way answers it.
    del sent[:]
    with pytest.raises(ConcurrencyConflict):
        await two_events_appended(store, 4, version=9)
    # The packet and its ROLLBACK, then the two-packet way: the row, the read of why, COMMIT.
    assert len(sent) == 5, sent
    assert sent[1] == "ROLLBACK", sent
    _, events = await store.load("saga-4")
    assert len(events) == 1


# -- listing: filters, order, keyset pages, counts ----------------------------------------------


async def listed(
    store: HistoryStore,
    saga_id: str,
    *,
    order_id: str | None = None,
    created_at: datetime = T0,
    status: str = "STARTED",
    workflow: str = "wf",
    needs_operator: bool = False,
    failed_step: str | None = None,
) -> SagaRecord:
    """A saga stored with these listing fields (the flag and the failed step are set through
    an append, as the runtime sets them)."""
    row = dataclasses.replace(
        record(),
        saga_id=saga_id,
        workflow_id=order_id or f"order-{saga_id}",
        workflow_name=workflow,
        status=status,
        created_at=created_at,
        updated_at=created_at,
    )
    stored, created = await store.create(row, [ev(0, "WorkflowStarted")])
    assert created
    if needs_operator or failed_step:
        await store.append(
            saga_id,
            [ev(1)],
            expected_seq=1,
            version=1,
            owner="a",
            projection=Projection(
                status=status, needs_operator=needs_operator, failed_step=failed_step
            ),
        )
    return stored


async def test_list_filters_by_each_field_and_by_all_together(store: HistoryStore) -> None:
    t = [T0 + timedelta(minutes=m) for m in range(5)]
    await listed(store, "s0", order_id="ab-1", created_at=t[0], status="COMPLETED")
    await listed(
        store, "s1", order_id="ab_2", created_at=t[1], status="FAILED", failed_step="pay.take"
    )
    await listed(
        store, "s2", order_id="aB-3", created_at=t[2], status="PARKED", needs_operator=True
    )
    await listed(
        store,
        "s3",
        order_id="abc",
        created_at=t[3],
        status="COMPENSATION_STARTED",
        workflow="restock",
        needs_operator=True,
        failed_step="ship.arrange",
    )
    await listed(store, "s4", order_id="xab", created_at=t[4], status="COMPLETED")

    async def ids(**fields: object) -> list[str]:
        return [r.saga_id for r in await store.list(SagaFilter(**fields))]  # type: ignore[arg-type]

    assert await ids() == ["s4", "s3", "s2", "s1", "s0"]
    assert await ids(statuses=("COMPLETED",)) == ["s4", "s0"]
    assert await ids(statuses=("FAILED", "PARKED")) == ["s2", "s1"]
    assert await ids(needs_operator=True) == ["s3", "s2"]
    assert await ids(needs_operator=False) == ["s4", "s1", "s0"]
    assert await ids(workflow="restock") == ["s3"]
    assert await ids(failed_step="pay.take") == ["s1"]
    assert await ids(failed_step="ship.arrange") == ["s3"]
    assert await ids(failed_step="pay") == []
    # created_after is inclusive, created_before exclusive: windows tile.
    assert await ids(created_after=t[1], created_before=t[3]) == ["s2", "s1"]
    assert await ids(created_after=t[3]) == ["s4", "s3"]
    assert await ids(created_before=t[1]) == ["s0"]
    # A prefix is case-sensitive and literal: "_" and "-" are characters, not wildcards.
    assert await ids(order_id_prefix="ab") == ["s3", "s1", "s0"]
    assert await ids(order_id_prefix="ab_") == ["s1"]
    assert await ids(order_id_prefix="aB") == ["s2"]
    assert await ids(order_id_prefix="abc") == ["s3"]
    assert await ids(order_id_prefix="b") == []
    assert await ids(
        statuses=("COMPLETED", "FAILED"), needs_operator=False, order_id_prefix="ab"
    ) == ["s1", "s0"]


async def test_sagas_sharing_a_created_at_page_in_saga_id_order_without_repeats(
    store: HistoryStore,
) -> None:
    for n in range(7):
        await listed(store, f"s{n}", created_at=T0)
    await listed(store, "later", created_at=T0 + timedelta(microseconds=1))
    first = await store.list(limit=3)
    assert [r.saga_id for r in first] == ["later", "s6", "s5"]
    last = first[-1]
    assert last.created_at is not None
    rest = await store.list(after=SagaPosition(last.created_at, last.saga_id), limit=10)
    assert [r.saga_id for r in rest] == ["s4", "s3", "s2", "s1", "s0"]


async def test_counts_group_sagas_by_status_and_count_the_operator_flag(
    store: HistoryStore,
) -> None:
    empty = await store.counts()
    assert (dict(empty.by_status), empty.needs_operator) == ({}, 0)
    await listed(store, "s0", status="COMPLETED")
    await listed(store, "s1", status="COMPLETED")
    await listed(store, "s2", status="PARKED", needs_operator=True)
    await listed(store, "s3", status="COMPENSATION_STARTED", needs_operator=True)
    await listed(store, "s4", status="COMPENSATION_STARTED")
    counts = await store.counts()
    assert dict(counts.by_status) == {"COMPLETED": 2, "PARKED": 1, "COMPENSATION_STARTED": 2}
    assert counts.needs_operator == 2


_STATUSES = ("STARTED", "COMPLETED", "FAILED", "PARKED")
_STEPS = ("order.create", "stock.reserve")
_examples = itertools.count()


@st.composite
def listings(draw: st.DrawFn) -> tuple[list[dict[str, Any]], SagaFilter, int]:
    """A set of sagas (few distinct times, so many share one), a filter and a page size."""
    sagas = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "created_at": st.integers(0, 4).map(lambda s: T0 + timedelta(seconds=s)),
                    "status": st.sampled_from(_STATUSES),
                    "needs_operator": st.booleans(),
                    "failed_step": st.none() | st.sampled_from(_STEPS),
                    "order_id": st.text("ab_-", min_size=1, max_size=4),
                }
            ),
            max_size=25,
        )
    )
    where = SagaFilter(
        statuses=tuple(draw(st.lists(st.sampled_from(_STATUSES), max_size=2, unique=True))),
        needs_operator=draw(st.none() | st.booleans()),
        failed_step=draw(st.none() | st.sampled_from(_STEPS)),
        created_after=draw(st.none() | st.integers(0, 4).map(lambda s: T0 + timedelta(seconds=s))),
        created_before=draw(st.none() | st.integers(0, 5).map(lambda s: T0 + timedelta(seconds=s))),
        order_id_prefix=draw(st.none() | st.text("ab_-", min_size=1, max_size=2)),
    )
    return sagas, where, draw(st.integers(1, 6))


def _expected(rows: list[SagaRecord], where: SagaFilter) -> list[str]:
    """What the listing must yield, computed apart from either store."""
    chosen = [
        r
        for r in rows
        if (not where.statuses or r.status in where.statuses)
        and (where.needs_operator is None or r.needs_operator == where.needs_operator)
        and (where.failed_step is None or r.failed_step == where.failed_step)
        and (where.created_after is None or r.created_at >= where.created_after)  # type: ignore[operator]
        and (where.created_before is None or r.created_at < where.created_before)  # type: ignore[operator]
        and (where.order_id_prefix is None or r.workflow_id.startswith(where.order_id_prefix))
    ]
    chosen.sort(key=lambda r: (r.created_at, r.saga_id), reverse=True)
    return [r.saga_id for r in chosen]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(listings())
async def test_following_pages_yields_every_matching_saga_once_in_order(
    store: HistoryStore, listing: tuple[list[dict[str, Any]], SagaFilter, int]
) -> None:
    """However many sagas share a time, and while newer ones are created between pages."""
    sagas, where, limit = listing
    # The store outlives the examples: each example's sagas have a workflow of their own.
    example = next(_examples)
    workflow = f"wf-{example}"
    where = dataclasses.replace(where, workflow=workflow)
    rows = []
    for n, fields in enumerate(sagas):
        stored = await listed(
            store,
            f"e{example}-{n:02}",
            order_id=f"{fields['order_id']}{example}.{n}",
            created_at=fields["created_at"],
            status=fields["status"],
            workflow=workflow,
            needs_operator=fields["needs_operator"],
            failed_step=fields["failed_step"],
        )
        rows.append(
            dataclasses.replace(
                stored,
                needs_operator=fields["needs_operator"],
                failed_step=fields["failed_step"],
            )
        )
    expected = _expected(rows, where)
    seen: list[str] = []
    after: SagaPosition | None = None
    for page_number in itertools.count():
        assert page_number <= len(sagas), "the pages do not end"
        page = await store.list(where, after=after, limit=limit)
        assert len(page) <= limit
        seen.extend(r.saga_id for r in page)
        if len(page) < limit:
            break
        last = page[-1]
        assert last.created_at is not None
        after = SagaPosition(last.created_at, last.saga_id)
        # A saga created now is newer than any position handed out: never on a later page.
        await listed(
            store,
            f"e{example}-new{page_number}",
            order_id=f"a{example}.new{page_number}",
            workflow=workflow,
            created_at=T0 + timedelta(minutes=1 + page_number),
        )
    assert seen == expected


async def test_claimable_sagas_come_in_the_order_their_lease_ran_out_then_were_started(
    store: HistoryStore,
) -> None:
    # saga-1 finished and saga-2 is leased to "a"; saga-3's lease ran out first; saga-4 and
    # saga-5 ran out at one instant (saga-5 written first, saga-4 started first).
    await started(store, 1)
    await appended(store, ev(1), projection=Projection(status="COMPLETED", finished=True))
    await started(store, 2)
    for n, lease in ((3, T0 - LEASE), (5, T0), (4, T0)):
        stale = dataclasses.replace(record(n), lease_expires_at=lease)
        assert (await store.create(stale, [ev(0, "WorkflowStarted")]))[1]
    now = T0 + timedelta(seconds=1)
    waiting = await store.list_claimable(owner="z", now=now, limit=10)
    assert [r.saga_id for r in waiting] == ["saga-3", "saga-4", "saga-5"]
