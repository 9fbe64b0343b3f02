"""Chaos in the network between the orchestration and RabbitMQ: every process reaches the
broker through a :class:`~faults.proxy.FaultProxy`, which first slows the link past the step
timeout, then black-holes it, then lets it heal — while orders keep coming.

What must hold: timed-out steps are sent again with the same idempotency key, and the
services' inboxes keep each step's effect to one however often its command arrives (late
copies included); every saga is terminal within 60 s of the link healing; SPEC §6 holds.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import TEST_RABBITMQ_URL, fresh_database, until
from faults.proxy import FaultProxy
from faults.scenario import Run, run_scenario
from processes import Deployment
from rabbitmq_support import delete_topology

from services._kit.roster import SERVICE_NAMES

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.mysql, pytest.mark.rabbitmq]

SERVICES = SERVICE_NAMES
SAGAS = 40
PACE = 0.2
STEP_TIMEOUT = 1.5  # CLOUDMART_REQUEST_TIMEOUT: seconds a step waits for its reply
DELAY = 2.0  # each way, so a round trip through the broker takes 4 × DELAY > STEP_TIMEOUT
PROXY_PORT = 28600


@pytest.fixture(scope="module")
def proxy() -> Iterator[FaultProxy]:
    with FaultProxy.in_front_of(
        TEST_RABBITMQ_URL, listen_port=PROXY_PORT, default_port=5672
    ) as running:
        yield running


@pytest.fixture(scope="module")
def deployment(proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    url = fresh_database("cloudmart_test_infra_network")
    rabbitmq_url = proxy.through(TEST_RABBITMQ_URL)
    deployed = Deployment(
        database_url=url,
        namespace=f"infra-{uuid.uuid4().hex[:8]}",
        directory=Path(tmp_path_factory.mktemp("network-chaos")),
        base_port=28500,
        rabbitmq_url=rabbitmq_url,
        extra_env={
            "CLOUDMART_REQUEST_TIMEOUT": str(STEP_TIMEOUT),
            "CLOUDMART_LEASE_SECONDS": "3",
        },
    )
    try:
        for name in SERVICES:
            deployed.start(name)
        yield deployed
    finally:
        deployed.stop_all()
        asyncio.run(delete_topology(TEST_RABBITMQ_URL, deployed.namespace, SERVICES[:-1]))


def history_count(sql: sa.Engine, order_ids: list[str], condition: str) -> int:
    statement = sa.text(
        "SELECT COUNT(*) FROM saga_step_logs l JOIN saga_instances i ON i.saga_id = l.saga_id "
        f"WHERE i.order_id IN :ids AND {condition}"
    ).bindparams(sa.bindparam("ids", expanding=True))
    with sql.connect() as conn:
        return int(conn.scalar(statement, {"ids": order_ids}) or 0)


RESENT_AND_COMPLETED = "l.attempt > 1 AND l.event_type = 'StepCompleted'"
ONE_RECORD = (
    "(SELECT COUNT(*) FROM inbox b WHERE b.order_id = i.order_id "
    "AND b.operation = SUBSTRING_INDEX(l.step_name, '.', -1)) = 1"
)


def timeouts(sql: sa.Engine, order_ids: list[str]) -> int:
    return history_count(sql, order_ids, "l.event_type = 'StepTimedOut'")


async def test_slow_then_dead_then_healed_link_retries_with_the_same_keys_and_no_double_effects(
    deployment: Deployment, proxy: FaultProxy
) -> None:
    async def fault(run: Run) -> None:
        # 1. slower than the step timeout: steps time out and are sent again
        proxy.delay(DELAY)
        await until(lambda: timeouts(run.sql, run.accepted) >= 3, timeout=60)
        # 2. a black hole: nothing gets through either way
        proxy.blackhole()
        silenced = timeouts(run.sql, run.accepted)
        await until(lambda: timeouts(run.sql, run.accepted) >= silenced + 3, timeout=60)
        assert proxy.stats.bytes_swallowed > 0
        # 3. healed: connections cut by the black hole are reset and reconnect
        proxy.pass_through()

    async def checks(run: Run) -> None:
        # The common checks' SPEC §6 (the checker's "twice", "completed", "failed", stock and
        # money rules) says every step and compensation took effect once, though many were
        # sent more than once. Steps that completed only after being sent again: each has
        # one inbox record, under the one key every copy of its command carried.
        resent = history_count(run.sql, run.accepted, RESENT_AND_COMPLETED)
        assert resent > 0, "no step completed after a resend"
        once = history_count(run.sql, run.accepted, f"{RESENT_AND_COMPLETED} AND {ONE_RECORD}")
        assert once == resent

    await run_scenario(
        deployment, fault=fault, sagas=SAGAS, pace=PACE, fault_after=5, checks=checks
    )
