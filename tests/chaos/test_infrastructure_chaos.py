"""Chaos against the infrastructure: RabbitMQ, MariaDB and Redis killed (SIGKILL) and started
again on the same port and data directory while orders keep coming (SPEC §6.6: a restarted
server costs time, not data).

Every server here is the module's own (:mod:`faults.servers`), never the machine's shared
one. Each scenario is run by :func:`faults.scenario.run_scenario` and so ends with every saga
terminal within 60 s of the server's return and SPEC §6's invariants holding over the module's
database (:mod:`cloudmart.check`); REST calls made while the database is down are answered 503
with a JSON body, never 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pymysql
import pytest
import sqlalchemy as sa
from conftest import until, with_schema
from faults.load import Answers
from faults.scenario import Run, Step, retried_steps, run_scenario
from faults.servers import OwnMariaDB, OwnRabbitMQ, OwnRedis, OwnServer
from processes import SERVICES_OF, Deployment
from shop import US

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.slow,
    pytest.mark.mysql,
    pytest.mark.rabbitmq,
    pytest.mark.redis,
]

SAGAS = 60
PACE = 10.0 / SAGAS  # 60 orders over about 10 s
FAULT_AFTER = 15  # orders accepted before the server is killed


# own servers and deployments -----------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="cloudmart-infra-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def mariadb(workdir: Path) -> Iterator[OwnMariaDB]:
    with OwnMariaDB(workdir / "mariadb", 13306) as server:
        yield server  # type: ignore[misc]


@pytest.fixture(scope="module")
def rabbitmq(workdir: Path) -> Iterator[OwnRabbitMQ]:
    with OwnRabbitMQ(workdir / "rabbitmq", 15673) as server:
        yield server  # type: ignore[misc]


@pytest.fixture(scope="module")
def redis_server(workdir: Path) -> Iterator[OwnRedis]:
    with OwnRedis(workdir / "redis", 16379) as server:
        yield server  # type: ignore[misc]


def fresh_database(server: OwnMariaDB, name: str) -> str:
    connection = pymysql.connect(host="127.0.0.1", port=server.port, user="root")
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    finally:
        connection.close()
    return with_schema(server.database_url(name))


@contextlib.contextmanager
def deployed(
    workdir: Path, pattern: str, *, database_url: str, base_port: int, **urls: str
) -> Iterator[Deployment]:
    """Every process of ``pattern`` on the module's own servers (``urls``), each started and
    healthy in turn; all stopped afterwards."""
    directory = workdir / pattern
    directory.mkdir()
    deployment = Deployment(
        database_url=database_url,
        namespace=f"infra-{uuid.uuid4().hex[:8]}",
        directory=directory,
        base_port=base_port,
        pattern=pattern,
        extra_env={
            "CLOUDMART_REQUEST_TIMEOUT": "5",
            "CLOUDMART_LEASE_SECONDS": "3",
            "CLOUDMART_DB_POOL_TIMEOUT": "3",
            "CLOUDMART_EVENT_CLAIM_IDLE": "2",
        },
        **urls,
    )
    try:
        for name in SERVICES_OF[pattern]:
            deployment.start(name)
        yield deployment
    finally:
        deployment.stop_all()


@pytest.fixture(scope="module")
def orchestration(
    workdir: Path, mariadb: OwnMariaDB, rabbitmq: OwnRabbitMQ
) -> Iterator[Deployment]:
    with deployed(
        workdir,
        "orchestration",
        database_url=fresh_database(mariadb, "cloudmart_test_infra"),
        base_port=28300,
        rabbitmq_url=rabbitmq.url,
    ) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def choreography(
    workdir: Path, mariadb: OwnMariaDB, redis_server: OwnRedis
) -> Iterator[Deployment]:
    with deployed(
        workdir,
        "choreography",
        database_url=fresh_database(mariadb, "cloudmart_test_infra_choreo"),
        base_port=28400,
        redis_url=redis_server.url,
    ) as deployment:
        yield deployment


# helpers -------------------------------------------------------------------------------------


def failed_sagas(sql: sa.Engine, order_ids: list[str]) -> int:
    statement = sa.text(
        "SELECT COUNT(*) FROM saga_instances WHERE order_id IN :ids AND status = 'FAILED'"
    ).bindparams(sa.bindparam("ids", expanding=True))
    with sql.connect() as conn:
        return int(conn.scalar(statement, {"ids": order_ids}) or 0)


def crashed(server: OwnServer) -> Step:
    """The fault of SIGKILLing ``server`` mid-load; healed once it is started again."""

    async def fault(run: Run) -> None:
        await asyncio.to_thread(server.restart)

    return fault


# scenarios -----------------------------------------------------------------------------------


async def test_orchestration_survives_a_rabbitmq_crash_under_load(
    orchestration: Deployment, rabbitmq: OwnRabbitMQ
) -> None:
    async def checks(run: Run) -> None:
        assert retried_steps(run.sql, run.accepted) > 0  # the crash hit sagas in flight
        # time lost, nothing else: the only sagas that failed are those that cannot ship
        cannot_ship = sum(b["shipping_address"] == US for b in run.bodies)
        assert failed_sagas(run.sql, run.accepted) == cannot_ship

    await run_scenario(
        orchestration,
        fault=crashed(rabbitmq),
        sagas=SAGAS,
        pace=PACE,
        fault_after=FAULT_AFTER,
        checks=checks,
    )


async def test_orchestration_survives_a_mariadb_crash_under_load_answering_503(
    orchestration: Deployment, mariadb: OwnMariaDB
) -> None:
    probes = Answers()

    async def fault(run: Run) -> None:
        book, known = next(iter(run.shop.stock)), run.accepted[0]
        await asyncio.to_thread(mariadb.kill)

        async def refused_with_503() -> bool:
            for url in (
                f"{orchestration.url('inventory')}/inventory/{book}",
                f"{orchestration.url('order')}/orders/{known}",
                f"{orchestration.url('orchestrator')}/saga/{known}/status",
            ):
                try:
                    probes.record(await run.http.get(url, timeout=10))
                except httpx.TransportError:
                    probes.transport_errors += 1
            return len(probes.unavailable) >= 3

        await until(refused_with_503, timeout=30, interval=0.2)
        await asyncio.to_thread(mariadb.start)

    async def checks(run: Run) -> None:
        assert {body["error"] for body in probes.unavailable} == {"unavailable"}
        assert probes.unexpected == []

    await run_scenario(
        orchestration, fault=fault, sagas=SAGAS, pace=PACE, fault_after=FAULT_AFTER, checks=checks
    )


async def test_choreography_survives_a_redis_crash_under_load(
    choreography: Deployment, redis_server: OwnRedis
) -> None:
    await run_scenario(
        choreography, fault=crashed(redis_server), sagas=SAGAS, pace=PACE, fault_after=FAULT_AFTER
    )
