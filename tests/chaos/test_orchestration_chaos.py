"""Process chaos for the orchestration: five real processes on MariaDB and RabbitMQ, killed
(SIGKILL, from outside or by an armed failure point), paused (SIGSTOP) and restarted.

Each scenario ends with every saga terminal within 60 s of the last fault healing and SPEC §6's
checker green (:func:`cloudmart.check.check` against a baseline taken before the load):

- kill -9 of the orchestrator with 100 sagas in flight — in the forward path, with commands
  in flight, during compensation — resumes them all from history, no effect twice;
- exhaustive crash points: the orchestrator dies right after *every* history write of a saga
  of each failure mode (none, stock, payment, shipping) and recovers from each;
- a service killed after its operation committed and before its reply: the redelivered
  command hits the inbox, the effect happens once (forward steps and compensations);
- two orchestrators, one frozen (SIGSTOP) past its lease then resumed: the other took over,
  the zombie writes nothing more, nothing is charged twice;
- a compensation failing for 30 s is retried until it succeeds (flagged for an operator
  meanwhile, never FAILED before it is done).
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import until
from orchestration_support import (
    HEALED_WITHIN,
    Client,
    all_terminal,
    assert_invariants,
    assert_no_dead_letters,
    baseline,
    database,
    orchestration_deployment,
    scalar,
    statuses,
    wait_terminal,
)
from processes import Deployment
from shop import JP, US, Shop, order
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.orders import order_id_for

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.mysql, pytest.mark.rabbitmq]

LEASE = "2"
FAILPOINT = "CLOUDMART_FAILPOINT"
MODES = ("none", "stock", "payment", "shipping")
# The step each failure mode fails at (its saga's failure_reason names it).
FAILS_AT = {
    "stock": "inventory.reserve_stock",
    "payment": "payment.process_payment",
    "shipping": "shipping.arrange_shipping",
}
PRICE = Decimal("10.00")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with orchestration_deployment(
        "orchestration",
        tmp_path_factory.mktemp("orchestration-chaos"),
        base_port=28700,
        CLOUDMART_LEASE_SECONDS=LEASE,
        # A frozen process's open transaction ends before its leases could be taken over.
        CLOUDMART_DB_IDLE_TRANSACTION_TIMEOUT="1",
        CLOUDMART_COMPENSATION_ALERT_ATTEMPTS="3",
    ) as deployed:
        yield deployed


@pytest.fixture
async def db(deployment: Deployment) -> AsyncIterator[AsyncEngine]:
    engine = database(deployment)
    yield engine
    await engine.dispose()


@pytest.fixture
def client(deployment: Deployment) -> Client:
    return Client([deployment.url("orchestrator")])


class Catalogue:
    """One book and one customer per failure mode, so each mode's outcome is exact."""

    def __init__(self, shop: Shop, *, stock: int = 1000, balance: str = "100000.00") -> None:
        self.books = {
            mode: shop.book(str(PRICE), 0 if mode == "stock" else stock) for mode in MODES
        }
        self.customers = {
            mode: shop.customer("5.00" if mode == "payment" else balance) for mode in MODES
        }

    def body(self, mode: str) -> dict[str, Any]:
        address = US if mode == "shipping" else JP
        return order(self.customers[mode], (self.books[mode], 1), address=address)


def keyed(mode: str) -> tuple[str, str]:
    key = f"chaos-{mode}-{uuid.uuid4()}"
    return key, order_id_for(key)


async def restart(deployment: Deployment, name: str, failpoint: str | None = None) -> None:
    """Kill (if alive) and start ``name`` again, armed with ``failpoint`` for this run only;
    returns once it is healthy."""
    env = {FAILPOINT: failpoint} if failpoint else None
    await asyncio.to_thread(deployment.restart, name, env=env)


def start_armed(deployment: Deployment, name: str, failpoint: str | None, **env: str) -> None:
    """Start ``name`` again armed with ``failpoint`` (``None``: unarmed), not waiting for it:
    it may crash before it is ever healthy (recovery runs first)."""
    deployment.restart(name, wait=False, env={FAILPOINT: failpoint, **env} if failpoint else env)


async def crashed(deployment: Deployment, name: str, timeout: float = 60) -> None:
    """Wait until ``name`` died, and check it died of SIGKILL."""
    await until(lambda: not deployment.alive(name), timeout=timeout, interval=0.05)
    code = deployment.processes[name].returncode
    assert code == -signal.SIGKILL, f"{name} exited with {code}:\n{deployment.log(name)}"


def expected_outcome(mode: str) -> str:
    return "COMPLETED" if mode == "none" else "FAILED"


async def assert_outcomes(db: AsyncEngine, modes: dict[str, str]) -> None:
    """Each saga ended as its failure mode says, failing at that mode's step."""
    found = await statuses(db, list(modes))
    assert found == {oid: expected_outcome(mode) for oid, mode in modes.items()}
    query = sa.text("SELECT order_id, failure_reason FROM saga_instances WHERE order_id IN :ids")
    query = query.bindparams(sa.bindparam("ids", expanding=True))
    async with db.connect() as conn:
        reasons = {
            r.order_id: r.failure_reason for r in await conn.execute(query, {"ids": list(modes)})
        }
    for oid, mode in modes.items():
        if mode in FAILS_AT:
            assert FAILS_AT[mode] in (reasons[oid] or ""), (mode, reasons[oid])


def assert_effects_once(shop: Shop, catalogue: Catalogue, counts: dict[str, int]) -> None:
    """Stock and money moved exactly once per completed order, and came back for the rest."""
    for mode in MODES:
        book, customer = catalogue.books[mode], catalogue.customers[mode]
        if mode == "none":
            assert shop.stock_of(book) == (shop.stock[book] - counts[mode], 0)
            assert shop.balance_of(customer) == shop.balances[customer] - PRICE * counts[mode]
        else:
            assert shop.stock_of(book) == (shop.stock[book], 0)
            assert shop.balance_of(customer) == shop.balances[customer]


# (3) a service killed after its commit, before its reply ----------------------------------

# What each operation leaves behind once committed, read while its service lies dead.
COMMITTED = {
    "order.create_order": "SELECT COUNT(*) FROM orders WHERE order_id = :o",
    "inventory.reserve_stock": (
        "SELECT COUNT(*) FROM stock_reservations WHERE order_id = :o AND status = 'RESERVED'"
    ),
    "payment.process_payment": (
        "SELECT COUNT(*) FROM payments WHERE order_id = :o AND status = 'COMPLETED'"
    ),
    "shipping.arrange_shipping": (
        "SELECT COUNT(*) FROM shipments WHERE order_id = :o AND status = 'ARRANGED'"
    ),
    "order.cancel_order": "SELECT COUNT(*) FROM orders WHERE order_id = :o AND status = 'CANCELLED'",
    "inventory.release_stock": (
        "SELECT COUNT(*) FROM stock_reservations WHERE order_id = :o AND status = 'RELEASED'"
    ),
    "payment.cancel_payment": (
        "SELECT COUNT(*) FROM payments WHERE order_id = :o AND status = 'CANCELLED'"
    ),
}


async def _kill_each_before_reply(
    deployment: Deployment,
    shop: Shop,
    client: Client,
    body: dict[str, Any],
    armed: dict[str, tuple[int, str]],
) -> str:
    """Arm ``service: (n, operation)`` (crash after its n-th command, which is ``operation``),
    run one saga, and as each service dies check the operation had committed, then restart
    it unarmed. Returns the order id."""
    for service, (n, _) in armed.items():
        start_armed(deployment, service, f"crash_before_reply:{service}:{n}")
    for service in armed:
        await asyncio.to_thread(deployment.wait_healthy, service)
    key, oid = keyed("reply")
    assert await client.start(body, key=key) == oid
    waiting = dict(armed)
    while waiting:
        await until(lambda: any(not deployment.alive(s) for s in waiting), timeout=HEALED_WITHIN)
        for service in [s for s in waiting if not deployment.alive(s)]:
            await crashed(deployment, service)
            operation = waiting.pop(service)[1]
            assert shop.count(COMMITTED[operation], o=oid) == 1, f"{operation} not committed"
            await restart(deployment, service)
    return oid


async def test_a_service_killed_after_its_commit_and_before_its_reply_has_its_effect_once(
    deployment: Deployment, shop: Shop, client: Client, db: AsyncEngine
) -> None:
    catalogue = Catalogue(shop, stock=10, balance="1000.00")
    before = await baseline(db)
    # Every service dies once on a forward step of a saga that completes...
    completed = await _kill_each_before_reply(
        deployment,
        shop,
        client,
        catalogue.body("none"),
        {
            "order": (1, "order.create_order"),
            "inventory": (1, "inventory.reserve_stock"),
            "payment": (1, "payment.process_payment"),
            "shipping": (1, "shipping.arrange_shipping"),
        },
    )
    assert (await wait_terminal(db, [completed]))[completed] == "COMPLETED"
    # ...and three of them on the compensations of one that fails at shipping.
    failed = await _kill_each_before_reply(
        deployment,
        shop,
        client,
        catalogue.body("shipping"),
        {
            "order": (2, "order.cancel_order"),
            "inventory": (2, "inventory.release_stock"),
            "payment": (2, "payment.cancel_payment"),
        },
    )
    assert (await wait_terminal(db, [failed]))[failed] == "FAILED"
    assert (
        shop.count(
            "SELECT COUNT(*) FROM payments WHERE order_id IN (:a, :b)", a=completed, b=failed
        )
        == 2
    )
    assert_effects_once(shop, catalogue, {"none": 1})
    await assert_invariants(db, before)
    await assert_no_dead_letters(deployment)


# (4) a zombie orchestrator ------------------------------------------------------------------


async def test_a_frozen_orchestrator_is_taken_over_and_its_late_writes_never_land(
    deployment: Deployment, shop: Shop, db: AsyncEngine
) -> None:
    catalogue = Catalogue(shop)
    before = await baseline(db)
    await asyncio.to_thread(deployment.start, "orchestrator-2")
    try:
        # The first orchestrator freezes (SIGSTOP) mid-run, right before a history write...
        start_armed(deployment, "orchestrator", "freeze_before_history:StepCompleted:20")
        await asyncio.to_thread(deployment.wait_healthy, "orchestrator")
        balanced = Client([deployment.url("orchestrator"), deployment.url("orchestrator-2")])
        keys = [keyed("zombie") for _ in range(10)]
        accepted = await asyncio.gather(
            *(balanced.start(catalogue.body("none"), key=key) for key, _ in keys)
        )
        order_ids = [oid for _, oid in keys]
        assert accepted == order_ids
        await until(lambda: _frozen(deployment, "orchestrator"), timeout=30)
        zombie = await scalar(
            db,
            "SELECT MIN(owner) FROM saga_step_logs WHERE owner LIKE :pid",
            pid=f"%:{deployment.processes['orchestrator'].pid}:%",
        )
        assert zombie is not None
        # ...past its lease: the second orchestrator takes its sagas over and ends them all.
        await wait_terminal(db, order_ids)
        deployment.resume("orchestrator")  # the zombie's pending write goes ahead, late

        def stopped_everywhere() -> bool:
            # It stops driving every saga it held: the fence refused its write
            # (saga.abandoned) or the renewal of its lease (saga.lease_lost).
            # The whole log: an abandoned saga's line carries its error, SQL and all, so
            # the lines of ten sagas can be longer than any fixed tail.
            log = deployment.log("orchestrator", tail=None)
            found = re.findall(r"saga\.(?:abandoned|lease_lost)\b.*?saga_id=([0-9a-f-]{36})", log)
            return set(found) >= held

        held = set(await _zombie_sagas(db, zombie))
        assert held, "the frozen orchestrator held no saga"
        await until(stopped_everywhere, timeout=30)
    finally:
        deployment.resume("orchestrator")
        if deployment.alive("orchestrator-2"):
            deployment.kill("orchestrator-2")
    # Nothing the zombie wrote lies after another owner's write in any saga's history.
    late = await scalar(
        db,
        "SELECT COUNT(*) FROM saga_step_logs z JOIN saga_step_logs n "
        "ON n.saga_id = z.saga_id AND n.owner <> z.owner AND n.seq < z.seq "
        "WHERE z.owner = :zombie",
        zombie=zombie,
    )
    assert late == 0
    assert set((await statuses(db, order_ids)).values()) == {"COMPLETED"}
    assert shop.count(
        "SELECT COUNT(*) FROM payments WHERE customer_id = :c AND status = 'COMPLETED'",
        c=catalogue.customers["none"],
    ) == len(order_ids)
    assert_effects_once(shop, catalogue, {"none": len(order_ids)})
    await assert_invariants(db, before)
    await restart(deployment, "orchestrator")  # a fresh, unarmed one for what comes next


def _frozen(deployment: Deployment, name: str) -> bool:
    stat = Path(f"/proc/{deployment.processes[name].pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


async def _zombie_sagas(db: AsyncEngine, owner: str) -> list[str]:
    """Sagas whose history ``owner`` wrote and another owner continued."""
    return [
        r.saga_id
        for r in await _rows(
            db,
            "SELECT DISTINCT z.saga_id FROM saga_step_logs z JOIN saga_step_logs n "
            "ON n.saga_id = z.saga_id AND n.owner <> z.owner WHERE z.owner = :owner",
            owner=owner,
        )
    ]


# (6) a compensation that keeps failing ---------------------------------------------------------

COMPENSATION_FAILS_FOR = 30.0


async def test_a_compensation_failing_for_30s_is_retried_until_everything_is_undone(
    deployment: Deployment, shop: Shop, client: Client, db: AsyncEngine
) -> None:
    catalogue = Catalogue(shop)
    before = await baseline(db)
    armed_at = time.monotonic()
    await restart(
        deployment,
        "payment",
        f"fail_compensation:payment.cancel_payment:{COMPENSATION_FAILS_FOR:g}",
    )
    keys = [keyed("shipping") for _ in range(10)]
    accepted = await asyncio.gather(
        *(client.start(catalogue.body("shipping"), key=key) for key, _ in keys)
    )
    order_ids = [oid for _, oid in keys]
    assert accepted == order_ids

    async def flagged() -> bool:
        rows = await scalar(
            db,
            "SELECT COUNT(*) FROM saga_instances WHERE order_id IN :ids "
            "AND status = 'COMPENSATION_STARTED' AND needs_operator",
            ids=order_ids,
        )
        return bool(rows == len(order_ids))

    # While the refund keeps failing, every saga waits for it, flagged for an operator...
    await until(flagged, timeout=COMPENSATION_FAILS_FOR / 2)
    assert time.monotonic() - armed_at < COMPENSATION_FAILS_FOR
    assert (
        shop.balance_of(catalogue.customers["shipping"])
        < shop.balances[catalogue.customers["shipping"]]
    )
    # ...and once it works, they all end FAILED with everything undone.
    healed_in = COMPENSATION_FAILS_FOR - (time.monotonic() - armed_at)
    found = await wait_terminal(db, order_ids, timeout=healed_in + HEALED_WITHIN)
    assert set(found.values()) == {"FAILED"}
    retried = await scalar(
        db,
        "SELECT COUNT(DISTINCT s.order_id) FROM saga_step_logs l "
        "JOIN saga_instances s ON s.saga_id = l.saga_id "
        "WHERE s.order_id IN :ids AND l.event_type = 'CompensationRetrying' "
        "AND l.step_name = 'payment.cancel_payment'",
        ids=order_ids,
    )
    assert retried == len(order_ids)
    assert not await scalar(
        db,
        "SELECT COUNT(*) FROM saga_instances WHERE order_id IN :ids AND needs_operator",
        ids=order_ids,
    )
    assert shop.count(
        "SELECT COUNT(*) FROM payments WHERE customer_id = :c AND status = 'CANCELLED'",
        c=catalogue.customers["shipping"],
    ) == len(order_ids)
    assert_effects_once(shop, catalogue, {"none": 0})
    await assert_invariants(db, before)


# (1) kill -9 of the orchestrator with 100 sagas in flight ---------------------------------------


async def test_orchestrator_killed_with_100_sagas_in_flight_resumes_them_all_with_each_effect_once(
    deployment: Deployment, shop: Shop, client: Client, db: AsyncEngine
) -> None:
    catalogue = Catalogue(shop)
    before = await baseline(db)
    keys: dict[str, tuple[str, str]] = {}
    for mode in MODES:
        for _ in range(25):
            key, oid = keyed(mode)
            keys[oid] = (key, mode)
    modes = {oid: mode for oid, (_, mode) in keys.items()}
    order_ids = list(keys)
    deployment.pause("shipping")  # forward sagas pile up at arrange_shipping, commands in flight
    try:
        # Crash 1: in the forward path, after the 100th step scheduled.
        start_armed(deployment, "orchestrator", "crash_after_history:StepScheduled:100")
        await asyncio.to_thread(deployment.wait_healthy, "orchestrator")
        starting = asyncio.gather(
            *(client.start(catalogue.body(mode), key=key) for key, mode in keys.values())
        )
        await crashed(deployment, "orchestrator")
        # Crash 2: while the stock and payment failures compensate.
        start_armed(deployment, "orchestrator", "crash_after_history:CompensationScheduled:10")
        await crashed(deployment, "orchestrator")
        # Crash 3: kill -9 from outside with 50 commands waiting at the frozen shipping service.
        start_armed(deployment, "orchestrator", None)
        assert await starting == order_ids

        async def stalled_at_shipping() -> bool:
            found = await statuses(db, order_ids)
            return all(
                found.get(oid)
                == ("PAYMENT_COMPLETED" if mode in ("none", "shipping") else "FAILED")
                for oid, mode in modes.items()
            )

        await until(stalled_at_shipping, timeout=HEALED_WITHIN)
        deployment.kill("orchestrator")
    finally:
        deployment.resume("shipping")
    # Crash 4: while the shipping failures compensate (their replies were lost with crash 3).
    start_armed(deployment, "orchestrator", "crash_after_history:CompensationScheduled:30")
    await crashed(deployment, "orchestrator")
    await restart(deployment, "orchestrator")
    await wait_terminal(db, order_ids)
    await assert_outcomes(db, modes)
    assert_effects_once(shop, catalogue, {"none": 25})
    await assert_invariants(db, before)


# (2) exhaustive crash points --------------------------------------------------------------------


async def test_orchestrator_crashing_after_every_history_write_recovers_each_failure_mode(
    deployment: Deployment, shop: Shop, client: Client, db: AsyncEngine
) -> None:
    """One saga per failure mode; every orchestrator run is armed ``crash_after_history:1``,
    so it dies right after the first history write it commits and the next run recovers from
    exactly there. Every write of every saga is thus followed by a crash — a write (one
    commit, possibly several events) is the unit of persistence: no crash can fall between
    the events of one write."""
    catalogue = Catalogue(shop)
    before = await baseline(db)
    keys = {mode: keyed(mode) for mode in MODES}
    modes = {oid: mode for mode, (_, oid) in keys.items()}
    order_ids = list(modes)
    armed = {"CLOUDMART_LEASE_SECONDS": "1"}  # a dead run's leases are free by the next one's
    first_run = len(deployment.started)
    start_armed(deployment, "orchestrator", "crash_after_history:1", **armed)
    starting = asyncio.gather(
        *(client.start(catalogue.body(mode), key=key) for mode, (key, _) in keys.items())
    )

    run_started = time.monotonic()

    async def settled() -> bool:
        """Whether every saga is terminal; each run that crashed is replaced by a new armed
        one, and each run must crash or see the end within HEALED_WITHIN."""
        nonlocal run_started
        if starting.done() and await all_terminal(db, order_ids):
            return True
        if not deployment.alive("orchestrator"):
            await crashed(deployment, "orchestrator")
            start_armed(deployment, "orchestrator", "crash_after_history:1", **armed)
            run_started = time.monotonic()
        elapsed = time.monotonic() - run_started
        assert elapsed < HEALED_WITHIN, f"a run neither crashed nor settled in {elapsed:.0f}s"
        return False

    await until(settled, timeout=240, what="every saga terminal across the crashes")
    assert await starting == order_ids
    last = deployment.processes["orchestrator"]

    async def last_run_over() -> bool:  # the run that wrote the last write dies of it
        if last.poll() is not None:
            return True
        wrote = await scalar(
            db,
            "SELECT COUNT(*) FROM saga_step_logs l JOIN saga_instances s "
            "ON s.saga_id = l.saga_id WHERE s.order_id IN :ids AND l.owner LIKE :pid",
            ids=order_ids,
            pid=f"%:{last.pid}:%",
        )
        return wrote == 0

    await until(last_run_over, timeout=30)
    runs = deployment.started[first_run:]
    assert all(p.poll() is None or p.returncode == -signal.SIGKILL for p in runs)
    crashes = sum(p.returncode == -signal.SIGKILL for p in runs)
    await restart(deployment, "orchestrator")  # unarmed again for whoever comes next
    await assert_outcomes(db, modes)
    # Every run that wrote history wrote once and died: one crash per writer, and a saga was
    # crashed after each of its writes (its writers are its crash points).
    writers = await scalar(
        db,
        "SELECT COUNT(DISTINCT l.owner) FROM saga_step_logs l "
        "JOIN saga_instances s ON s.saga_id = l.saga_id WHERE s.order_id IN :ids",
        ids=order_ids,
    )
    assert writers == crashes
    points = {
        modes[r.order_id]: int(r.n)
        for r in await _rows(
            db,
            "SELECT s.order_id, COUNT(DISTINCT l.owner) AS n FROM saga_step_logs l "
            "JOIN saga_instances s ON s.saga_id = l.saga_id WHERE s.order_id IN :ids "
            "GROUP BY s.order_id",
            ids=order_ids,
        )
    }
    print(f"crash points per failure mode: {points}; crashes: {crashes}")
    # create, each step scheduled, the end; plus for failures the compensation writes
    assert points == {"none": 7, "stock": 5, "payment": 7, "shipping": 9}
    assert_effects_once(shop, catalogue, {"none": 1})
    await assert_invariants(db, before)


async def _rows(db: AsyncEngine, sql: str, **params: Any) -> list[sa.Row[Any]]:
    statement = sa.text(sql)
    for name, value in params.items():
        if isinstance(value, list | tuple):
            statement = statement.bindparams(sa.bindparam(name, expanding=True))
    async with db.connect() as conn:
        return list(await conn.execute(statement, params))
