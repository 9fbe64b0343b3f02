"""``cloudmart check``: each rule fires on the fault it is named for, and only then, on SQLite
and on MariaDB.

Orders are driven through the real business operations on SQLite; each test then breaks one
thing with SQL (as a bug or a lost message would) and expects exactly that rule.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from domain_data import JP
from typer.testing import CliRunner

from activities import Database
from activities.registry import invoke
from cloudmart.check import (
    CheckReport,
    check,
    check_connection,
    snapshot,
    snapshot_connection,
)
from cloudmart.cli import app

ITEMS = [{"book_id": 1, "quantity": 2}, {"book_id": 3, "quantity": 1}]
TOTAL = "2010.00"


async def completed(db: Database, oid: str) -> str:
    """The whole happy path, as the choreography runs it (no saga row)."""
    await invoke(
        db,
        "order.create_order",
        {"order_id": oid, "customer_id": 1, "items": ITEMS, "shipping_address": JP.model_dump()},
    )
    await invoke(db, "inventory.reserve_stock", {"order_id": oid, "items": ITEMS})
    await invoke(
        db, "payment.process_payment", {"order_id": oid, "customer_id": 1, "amount": TOTAL}
    )
    await invoke(db, "shipping.arrange_shipping", {"order_id": oid, "address": JP.model_dump()})
    await invoke(db, "order.complete_order", {"order_id": oid})
    return oid


async def failed_at_shipping(db: Database, oid: str) -> str:
    """Shipping refused, then every compensation in reverse order."""
    us = JP.model_copy(update={"country": "US"}).model_dump()
    await invoke(
        db,
        "order.create_order",
        {"order_id": oid, "customer_id": 1, "items": ITEMS, "shipping_address": us},
    )
    await invoke(db, "inventory.reserve_stock", {"order_id": oid, "items": ITEMS})
    await invoke(
        db, "payment.process_payment", {"order_id": oid, "customer_id": 1, "amount": TOTAL}
    )
    for name in ("payment.refund_payment", "inventory.release_stock", "order.cancel_order"):
        await invoke(db, name, {"order_id": oid})
    return oid


def run(sync: sa.Engine, **kwargs: Any) -> CheckReport:
    kwargs.setdefault("grace_seconds", 0.0)
    with sync.connect() as conn:
        return check_connection(conn, **kwargs)


def rules(report: CheckReport) -> set[str]:
    return {v.rule for v in report.violations}


def sql(sync: sa.Engine, statement: str, **params: Any) -> None:
    with sync.begin() as conn:
        conn.execute(sa.text(statement), params)


def saga(sync: sa.Engine, oid: str, status: str, *, age: float = 0.0, parked: bool = False) -> str:
    saga_id = f"s-{oid}"
    at = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=age)
    sql(
        sync,
        "INSERT INTO saga_instances (saga_id, order_id, workflow_name, status, input, version, "
        "next_seq, needs_operator, cancel_requested, compensation_attempts, created_at, "
        "updated_at) VALUES (:s, :o, 'place_order', :st, '{}', 1, 0, :p, 0, 0, :at, :at)",
        s=saga_id,
        o=oid,
        st=status,
        p=parked,
        at=at,
    )
    return saga_id


def history(sync: sa.Engine, saga_id: str, *events: tuple[str, int, str, int]) -> None:
    """(event_type, position, owner, version) in sequence order."""
    at = datetime.now(UTC).replace(tzinfo=None)
    for seq, (event_type, position, owner, version) in enumerate(events):
        sql(
            sync,
            "INSERT INTO saga_step_logs (saga_id, seq, event_type, position, step_name, attempt, "
            "owner, version, created_at) VALUES (:s, :q, :e, :p, :n, 1, :o, :v, :at)",
            s=saga_id,
            q=seq,
            e=event_type,
            p=position,
            n=f"step{position}",
            o=owner,
            v=version,
            at=at,
        )


async def test_a_completed_and_a_failed_order_pass_every_rule(
    db: Database, sync: sa.Engine
) -> None:
    with sync.connect() as conn:
        before = snapshot_connection(conn)
    await completed(db, "ok-1")
    await failed_at_shipping(db, "bad-1")
    report = run(sync, baseline=before)
    assert report.ok, report.render()
    assert report.orders == {"COMPLETED": 1, "CANCELLED": 1}
    assert "every invariant holds" in report.render()


async def test_completed_order_missing_its_shipment_is_reported(
    db: Database, sync: sa.Engine
) -> None:
    await completed(db, "ok-1")
    sql(sync, "UPDATE shipments SET status = 'CANCELLED'")
    report = run(sync)
    assert rules(report) == {"completed"}
    assert "COMPLETED ok-1" in report.render() and "shipment is CANCELLED" in report.render()


async def test_completed_order_paid_the_wrong_amount_is_reported(
    db: Database, sync: sa.Engine
) -> None:
    await completed(db, "ok-1")
    sql(sync, "UPDATE payments SET amount = 1.00")
    assert [v.detail for v in run(sync).violations] == [f"paid 1.00 of {TOTAL}"]


async def test_failed_order_with_money_still_captured_is_reported(
    db: Database, sync: sa.Engine
) -> None:
    await failed_at_shipping(db, "bad-1")
    sql(sync, "UPDATE payments SET status = 'COMPLETED'")
    report = run(sync)
    assert rules(report) == {"failed"}
    assert "still captured" in report.render()


async def test_failed_order_with_stock_still_reserved_is_reported(
    db: Database, sync: sa.Engine
) -> None:
    await failed_at_shipping(db, "bad-1")
    sql(sync, "UPDATE stock_reservations SET status = 'RESERVED' WHERE book_id = 1")
    sql(sync, "UPDATE inventory SET reserved = 2, available = available - 2 WHERE book_id = 1")
    report = run(sync)
    # the units were moved by hand, so the ledger names the book too
    assert rules(report) == {"failed", "ledger"}
    assert "stock still held" in report.render()
    assert "[ledger] book 1: reserved is 2 but the ledger says 0" in report.render()


async def test_an_orchestrated_saga_is_judged_by_its_saga_status(
    db: Database, sync: sa.Engine
) -> None:
    await completed(db, "ok-1")
    saga(sync, "ok-1", "FAILED")  # the saga says FAILED, yet every effect is still there
    report = run(sync)
    assert rules(report) == {"failed"}
    assert "FAILED ok-1: order is COMPLETED" in report.render()


async def test_a_saga_still_running_after_the_grace_period_is_stuck(
    db: Database, sync: sa.Engine
) -> None:
    saga(sync, "slow-1", "STOCK_RESERVED", age=120)
    saga(sync, "parked-1", "PARKED", age=120, parked=True)
    saga(sync, "young-1", "STOCK_RESERVED", age=1)
    report = run(sync, grace_seconds=60)
    assert rules(report) == {"stuck"}
    subjects = {v.subject for v in report.violations}
    assert subjects == {"saga slow-1", "saga parked-1"}
    assert "needs an operator" in report.render()


async def test_a_pending_choreographed_order_after_the_grace_period_is_stuck(
    db: Database, sync: sa.Engine
) -> None:
    await invoke(
        db,
        "order.create_order",
        {"order_id": "p-1", "customer_id": 1, "items": ITEMS, "shipping_address": JP.model_dump()},
    )
    assert run(sync, grace_seconds=60).ok
    old = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=5)
    sql(sync, "UPDATE orders SET created_at = :t", t=old)
    assert [v.subject for v in run(sync, grace_seconds=60).violations] == ["order p-1"]


async def test_an_outcome_younger_than_the_grace_period_is_not_judged_yet(
    db: Database, sync: sa.Engine
) -> None:
    await failed_at_shipping(db, "bad-1")
    sql(sync, "UPDATE payments SET status = 'COMPLETED'")  # a refund still on its way
    assert run(sync, grace_seconds=60).ok
    assert not run(sync, grace_seconds=0).ok


async def test_a_step_completed_twice_is_reported(db: Database, sync: sa.Engine) -> None:
    saga_id = saga(sync, "twice-1", "STOCK_RESERVED")
    history(sync, saga_id, ("StepCompleted", 0, "a", 1), ("StepCompleted", 0, "a", 1))
    report = run(sync, grace_seconds=60)
    assert rules(report) == {"twice"}
    assert "StepCompleted 2x at step 0" in report.render()


async def test_compensations_out_of_reverse_order_are_reported(
    db: Database, sync: sa.Engine
) -> None:
    good = saga(sync, "rev-1", "COMPENSATION_STARTED")
    history(sync, good, ("CompensationCompleted", 2, "a", 1), ("CompensationCompleted", 1, "a", 1))
    assert run(sync, grace_seconds=60).ok
    bad = saga(sync, "rev-2", "COMPENSATION_STARTED")
    history(sync, bad, ("CompensationCompleted", 1, "a", 1), ("CompensationCompleted", 2, "a", 1))
    report = run(sync, grace_seconds=60)
    assert [str(v) for v in report.violations] == [
        "[compensation-order] saga rev-2: step 1 compensated before step 2"
    ]


async def test_two_owners_under_one_lease_version_are_reported(
    db: Database, sync: sa.Engine
) -> None:
    saga_id = saga(sync, "two-1", "STOCK_RESERVED")
    history(
        sync,
        saga_id,
        ("StepCompleted", 0, "a", 1),
        ("StepCompleted", 1, "b", 2),  # a new version: a legal take-over
    )
    assert run(sync, grace_seconds=60).ok
    # a zombie, still on version 2's lease, writes after b took over under version 2
    sql(
        sync,
        "INSERT INTO saga_step_logs (saga_id, seq, event_type, position, attempt, owner, "
        "version, created_at) VALUES (:s, 2, 'StepScheduled', 2, 1, 'a', 2, :t)",
        s=saga_id,
        t=datetime.now(UTC).replace(tzinfo=None),
    )
    report = run(sync, grace_seconds=60)
    assert [v.rule for v in report.violations] == ["owners"]
    assert "2 owners under lease version 2" in report.render()


async def test_stock_and_money_are_checked_against_the_baseline(
    db: Database, sync: sa.Engine
) -> None:
    before = await snapshot(db.engine)
    await completed(db, "ok-1")
    assert (await check(db.engine, grace_seconds=0, baseline=before)).ok
    sql(sync, "UPDATE inventory SET available = available + 1 WHERE book_id = 3")
    sql(sync, "UPDATE customers SET balance = balance - 5 WHERE customer_id = 2")
    report = await check(db.engine, grace_seconds=0, baseline=before)
    assert sorted(str(v) for v in report.violations) == [
        "[ledger] book 3: available is 50 but the ledger says 49",
        "[ledger] customer 2: balance is 495.00 but the ledger says 500.00",
        "[money] customer 2: balance+captured = 495.00, was 500.00",
        "[stock] book 3: available+reserved+shipped = 51, was 50",
    ]


async def test_reserved_units_without_a_reservation_are_reported_without_a_baseline(
    db: Database, sync: sa.Engine
) -> None:
    sql(sync, "UPDATE inventory SET reserved = 3, available = available - 3 WHERE book_id = 2")
    report = run(sync)
    assert sorted(str(v) for v in report.violations) == [
        "[ledger] book 2: available is 2 but the ledger says 5",
        "[ledger] book 2: reserved is 3 but the ledger says 0",
        "[stock] book 2: reserved 3 but live reservations hold 0",
    ]


async def test_the_check_can_be_limited_to_some_orders(db: Database, sync: sa.Engine) -> None:
    await completed(db, "ok-1")
    await failed_at_shipping(db, "bad-1")
    sql(sync, "UPDATE payments SET status = 'COMPLETED' WHERE order_id = 'bad-1'")
    assert run(sync, order_ids=["ok-1"]).ok
    assert not run(sync, order_ids=["bad-1"]).ok
    assert [v.detail for v in run(sync, order_ids=["nobody"]).violations] == [
        "no saga and no order"
    ]


async def test_cli_snapshot_then_check_exits_1_with_the_offending_ids(
    db: Database, sync: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "CLOUDMART_DATABASE_URL", db.engine.url.render_as_string(hide_password=False)
    )
    monkeypatch.setenv("CLOUDMART_ENV", "test")
    runner = CliRunner()
    base = tmp_path / "baseline.json"
    # the command runs its own event loop, so it runs beside this test's, in a thread
    taken = await asyncio.to_thread(runner.invoke, app, ["check", "--snapshot", str(base)])
    assert taken.exit_code == 0, taken.output
    assert json.loads(base.read_text())["stock"]["1"] == 10
    await completed(db, "ok-1")
    clean_run = await asyncio.to_thread(
        runner.invoke, app, ["check", "--grace", "0", "--baseline", str(base)]
    )
    assert clean_run.exit_code == 0, clean_run.output
    assert "every invariant holds" in clean_run.output
    sql(sync, "UPDATE shipments SET status = 'CANCELLED'")
    broken = await asyncio.to_thread(
        runner.invoke, app, ["check", "--grace", "0", "--baseline", str(base), "--json"]
    )
    assert broken.exit_code == 1
    body = json.loads(broken.output)
    assert body["ok"] is False
    assert body["violations"] == [
        {"rule": "completed", "subject": "COMPLETED ok-1", "detail": "shipment is CANCELLED"}
    ]
