"""A MariaDB outage longer than the old dead-letter window, with sagas in flight, in both
patterns: the services reach the database through a :class:`~faults.proxy.FaultProxy`, which
resets every connection (open and new) for :data:`OUTAGE` seconds and then heals.

Before, a handler failing on the database counted a delivery like a poison message: after
``CLOUDMART_EVENT_MAX_DELIVERIES`` × ``CLOUDMART_EVENT_CLAIM_IDLE`` seconds (here 2 × 1 s) an
event went to the dead-letter stream and its order stayed PENDING for good, and commands
burned their deliveries in milliseconds. What must hold now: nothing is dead-lettered, every
accepted order is terminal within 60 s of the heal, SPEC §6 holds (``cloudmart check``),
starts made during the outage are answered 503 with a JSON body or accepted and finished
later (none lost), and a service's log grows by a few lines over the whole outage — a
dependency going and coming back — not a line or a traceback per retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import (
    TEST_DATABASE_URL,
    TEST_RABBITMQ_URL,
    TEST_REDIS_URL,
    fresh_database,
    until,
)
from faults.proxy import FaultProxy
from faults.scenario import Run, Step, run_scenario
from processes import Deployment, delete_redis_namespace
from rabbitmq_support import delete_topology

from services._kit.roster import DOMAIN_SERVICES

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.slow,
    pytest.mark.mysql,
    pytest.mark.timeout(240),
]

SAGAS = 50
PACE = 0.04  # 50 starts over 2 s; the cut comes after the first CUT_AFTER are accepted
CUT_AFTER = 30
MAX_DELIVERIES = 2
CLAIM_IDLE = 1.0
OUTAGE = 8 * MAX_DELIVERIES * CLAIM_IDLE  # 16 s: eight times the old dead-letter window
LOG_LINES = 50  # a service's log may grow by fewer lines than this over the whole outage
PROXY_PORTS = {"choreography": 29400, "orchestration": 29401}  # a proxy per deployment
LIMITS = {
    "CLOUDMART_EVENT_MAX_DELIVERIES": str(MAX_DELIVERIES),
    "CLOUDMART_COMMAND_MAX_DELIVERIES": str(MAX_DELIVERIES),
    "CLOUDMART_EVENT_CLAIM_IDLE": str(CLAIM_IDLE),
    "CLOUDMART_REQUEST_TIMEOUT": "3",
    "CLOUDMART_LEASE_SECONDS": "3",
    "CLOUDMART_DB_POOL_TIMEOUT": "3",
}


def database_proxy(pattern: str) -> FaultProxy:
    """A proxy in front of the test database server, for ``pattern``'s services alone."""
    return FaultProxy.in_front_of(
        TEST_DATABASE_URL, listen_port=PROXY_PORTS[pattern], default_port=3306
    )


@pytest.fixture(scope="module")
def choreography_proxy() -> Iterator[FaultProxy]:
    with database_proxy("choreography") as proxy:
        yield proxy


@pytest.fixture(scope="module")
def orchestration_proxy() -> Iterator[FaultProxy]:
    with database_proxy("orchestration") as proxy:
        yield proxy


def log_lines(deployment: Deployment, name: str) -> int:
    return deployment.log(name, tail=None).count("\n")


def dead_letters(deployment: Deployment, pattern: str) -> list[dict[str, Any]]:
    """``cloudmart dead-letters list --json`` for the deployment, as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDMART_")}
    env.update(
        CLOUDMART_ENV="test",
        CLOUDMART_NAMESPACE=deployment.namespace,
        CLOUDMART_RABBITMQ_URL=TEST_RABBITMQ_URL,
        CLOUDMART_REDIS_URL=TEST_REDIS_URL,
    )
    done = subprocess.run(
        [sys.executable, "-m", "cloudmart", "dead-letters", "list", "--pattern", pattern, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    letters: list[dict[str, Any]] = json.loads(done.stdout)
    return letters


async def waiting_on_database(http: httpx.AsyncClient, deployment: Deployment, name: str) -> float:
    """What ``name``'s /metrics says it holds until the database is back (0 when unreadable)."""
    try:
        response = await http.get(f"{deployment.url(name)}/metrics", timeout=10)
    except httpx.TransportError:
        return 0.0
    for line in response.text.splitlines():
        if line.startswith('cloudmart_infrastructure_waiting{dependency="database"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def outage(
    proxy: FaultProxy, *, held: Callable[[Run], Awaitable[bool]], grown: dict[str, int]
) -> Step:
    """The fault: the database cut (every connection reset) for :data:`OUTAGE` seconds and
    until ``held(run)`` says messages are being waited out, then healed; ``grown`` gets how
    many lines each process's log grew by while the database was away."""

    async def fault(run: Run) -> None:
        deployment = run.deployment
        before = {name: log_lines(deployment, name) for name in deployment.processes}
        proxy.reset()
        cut = time.monotonic()
        await until(lambda: held(run), timeout=OUTAGE + 30, interval=0.5)
        # The outage's length is the fault under test: it must outlast the old window.
        await until(lambda: time.monotonic() - cut >= OUTAGE, timeout=OUTAGE + 5, interval=0.2)
        grown.update({name: log_lines(deployment, name) - before[name] for name in before})
        proxy.pass_through()

    return fault


@contextlib.contextmanager
def behind_proxy(
    pattern: str, database_url: str, proxy: FaultProxy, directory: Path, *, base_port: int
) -> Iterator[Deployment]:
    """``pattern``'s processes, the services reaching ``database_url`` through ``proxy`` (the
    orchestrator's history store stays direct: only the services' connections are cut)."""
    deployment = Deployment(
        database_url=proxy.through(database_url),
        namespace=f"infra-{uuid.uuid4().hex[:8]}",
        directory=directory,
        base_port=base_port,
        pattern=pattern,
        rabbitmq_url=TEST_RABBITMQ_URL if pattern == "orchestration" else None,
        redis_url=TEST_REDIS_URL if pattern == "choreography" else None,
        extra_env=LIMITS,
    )
    try:
        for name in DOMAIN_SERVICES:
            deployment.start(name, wait=False)
        if pattern == "orchestration":
            deployment.start(
                "orchestrator", wait=False, env={"CLOUDMART_DATABASE_URL": database_url}
            )
        for name in deployment.processes:
            deployment.wait_healthy(name)
        yield deployment
    finally:
        deployment.stop_all()
        if pattern == "orchestration":
            asyncio.run(delete_topology(TEST_RABBITMQ_URL, deployment.namespace, DOMAIN_SERVICES))
        else:
            delete_redis_namespace(TEST_REDIS_URL, deployment.namespace)


# choreography -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def choreography_db() -> str:
    return fresh_database("cloudmart_test_infra_outage_choreo")


@pytest.fixture(scope="module")
def choreography(
    choreography_db: str,
    choreography_proxy: FaultProxy,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    with behind_proxy(
        "choreography",
        choreography_db,
        choreography_proxy,
        tmp_path_factory.mktemp("outage-choreography"),
        base_port=29200,
    ) as deployment:
        yield deployment


@pytest.mark.redis
async def test_choreography_waits_out_a_database_outage_and_dead_letters_nothing(
    choreography: Deployment, choreography_db: str, choreography_proxy: FaultProxy
) -> None:
    grown: dict[str, int] = {}

    async def held(run: Run) -> bool:
        # Whichever service had an event in hand when the database went holds it until it is
        # back (which one depends on the moment of the cut; the order service's own log is
        # not measured: the load's requests add access lines to it).
        waiting = [waiting_on_database(run.http, choreography, n) for n in DOMAIN_SERVICES]
        return any(w > 0 for w in await asyncio.gather(*waiting))

    async def checks(run: Run) -> None:
        answers = run.load.answers  # during the outage: 503 with a JSON body, or 202
        assert answers.unavailable, "no start met the outage"
        assert {body["error"] for body in answers.unavailable} == {"unavailable"}
        assert await asyncio.to_thread(dead_letters, choreography, "choreography") == []
        for name in ("inventory", "payment", "shipping"):
            assert grown[name] < LOG_LINES, (name, grown[name], choreography.log(name))
        said = choreography.log("inventory", tail=None)  # the outage, in two lines
        assert "dependency.lost" in said and "dependency.restored" in said

    await run_scenario(
        choreography,
        fault=outage(choreography_proxy, held=held, grown=grown),
        sagas=SAGAS,
        pace=PACE,
        fault_after=CUT_AFTER,
        checks=checks,
        database_url=choreography_db,
    )


# orchestration ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orchestration_db() -> str:
    return fresh_database("cloudmart_test_infra_outage_orch")


@pytest.fixture(scope="module")
def orchestration(
    orchestration_db: str,
    orchestration_proxy: FaultProxy,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Deployment]:
    with behind_proxy(
        "orchestration",
        orchestration_db,
        orchestration_proxy,
        tmp_path_factory.mktemp("outage-orchestration"),
        base_port=29300,
    ) as deployment:
        yield deployment


@pytest.mark.rabbitmq
async def test_orchestration_waits_out_a_database_outage_and_dead_letters_nothing(
    orchestration: Deployment, orchestration_db: str, orchestration_proxy: FaultProxy
) -> None:
    grown: dict[str, int] = {}

    async def held(run: Run) -> bool:
        # Every saga starts with the order service's create_order: it holds commands.
        return await waiting_on_database(run.http, orchestration, "order") > 0

    async def checks(run: Run) -> None:
        assert await asyncio.to_thread(dead_letters, orchestration, "orchestration") == []
        for name in DOMAIN_SERVICES:  # the order service's includes a few /metrics requests
            assert grown[name] < LOG_LINES, (name, grown[name], orchestration.log(name))

    await run_scenario(
        orchestration,
        fault=outage(orchestration_proxy, held=held, grown=grown),
        sagas=SAGAS,
        pace=PACE,
        fault_after=CUT_AFTER,
        checks=checks,
        database_url=orchestration_db,
    )
