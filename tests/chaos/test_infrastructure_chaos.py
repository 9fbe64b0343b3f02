"""Chaos against the infrastructure: RabbitMQ, MariaDB and Redis killed (SIGKILL) and started
again on the same port and data directory while orders keep coming (SPEC §6.6: a restarted
server costs time, not data).

Every server here is the module's own (:mod:`faults.servers`), never the machine's shared
one. Each scenario ends with every saga terminal within 60 s of the server's return and SPEC
§6's invariants holding over the module's database (:mod:`cloudmart.check`); REST calls made while the database is down
are answered 503 with a JSON body, never 500.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pymysql
import pytest
import sqlalchemy as sa
from conftest import until, with_schema
from faults.load import Answers, Load
from faults.scenario import (
    all_healthy,
    all_terminal,
    baseline,
    invariants_hold,
    retried_steps,
    scenario,
)
from faults.servers import OwnMariaDB, OwnRabbitMQ, OwnRedis
from processes import Deployment
from shop import US, sync_engine

from services._kit.roster import DOMAIN_SERVICES, SERVICE_NAMES

pytestmark = [
    pytest.mark.chaos,
    pytest.mark.slow,
    pytest.mark.mysql,
    pytest.mark.rabbitmq,
    pytest.mark.redis,
]

ORCHESTRATION = SERVICE_NAMES
CHOREOGRAPHY = DOMAIN_SERVICES
SAGAS = 60
PACE = 10.0 / SAGAS  # 60 orders over about 10 s


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


def deploy(
    directory: Path,
    names: tuple[str, ...],
    *,
    database_url: str,
    base_port: int,
    pattern: str,
    **urls: str,
) -> Deployment:
    deployed = Deployment(
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
        for name in names:
            deployed.start(name)
    except BaseException:
        deployed.stop_all()
        raise
    return deployed


@pytest.fixture(scope="module")
def orchestration(
    workdir: Path, mariadb: OwnMariaDB, rabbitmq: OwnRabbitMQ
) -> Iterator[Deployment]:
    directory = workdir / "orchestration"
    directory.mkdir()
    deployed = deploy(
        directory,
        ORCHESTRATION,
        database_url=fresh_database(mariadb, "cloudmart_test_infra"),
        base_port=28300,
        pattern="orchestration",
        rabbitmq_url=rabbitmq.url,
    )
    try:
        yield deployed
    finally:
        deployed.stop_all()


@pytest.fixture(scope="module")
def choreography(
    workdir: Path, mariadb: OwnMariaDB, redis_server: OwnRedis
) -> Iterator[Deployment]:
    directory = workdir / "choreography"
    directory.mkdir()
    deployed = deploy(
        directory,
        CHOREOGRAPHY,
        database_url=fresh_database(mariadb, "cloudmart_test_infra_choreo"),
        base_port=28400,
        pattern="choreography",
        redis_url=redis_server.url,
    )
    try:
        yield deployed
    finally:
        deployed.stop_all()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=64)) as http:
        yield http


# helpers -------------------------------------------------------------------------------------


def failed_sagas(sql: sa.Engine, order_ids: list[str]) -> int:
    statement = sa.text(
        "SELECT COUNT(*) FROM saga_instances WHERE order_id IN :ids AND status = 'FAILED'"
    ).bindparams(sa.bindparam("ids", expanding=True))
    with sql.connect() as conn:
        return int(conn.scalar(statement, {"ids": order_ids}) or 0)


async def crash_mid_load(load: Load, server: Any, *, after: int = 15) -> float:
    """Run ``load``; once ``after`` orders were accepted SIGKILL ``server`` and start it again.

    Returns when every start was answered; the time the server was back (monotonic)."""
    running = asyncio.create_task(load.run())
    try:
        await until(lambda: len(load.accepted) >= after or running.done(), timeout=60)
        assert not running.done(), "the load ended before the fault"
        await asyncio.to_thread(server.restart)
        healed = time.monotonic()
        await running
    finally:
        running.cancel()
    return healed


# scenarios -----------------------------------------------------------------------------------


async def test_orchestration_survives_a_rabbitmq_crash_under_load(
    orchestration: Deployment, rabbitmq: OwnRabbitMQ, client: httpx.AsyncClient
) -> None:
    sql = sync_engine(orchestration.database_url)
    try:
        _, bodies = scenario(sql, pattern="orchestration", count=SAGAS)
        before = baseline(sql)
        load = Load(client, f"{orchestration.url('orchestrator')}/saga/start", bodies, PACE)
        healed = await crash_mid_load(load, rabbitmq)
        assert load.refused == [] and len(load.accepted) == SAGAS
        await all_terminal(sql, load.accepted, "orchestration", healed)
        await invariants_hold(sql, before)
        assert retried_steps(sql, load.accepted) > 0  # the crash hit sagas in flight
        # time lost, nothing else: the only sagas that failed are those that cannot ship
        assert failed_sagas(sql, load.accepted) == sum(b["shipping_address"] == US for b in bodies)
        assert load.answers.unexpected == []
        await all_healthy(client, orchestration)  # every consumer is back on the broker
    finally:
        sql.dispose()


async def test_orchestration_survives_a_mariadb_crash_under_load_answering_503(
    orchestration: Deployment, mariadb: OwnMariaDB, client: httpx.AsyncClient
) -> None:
    sql = sync_engine(orchestration.database_url)
    try:
        shop, bodies = scenario(sql, pattern="orchestration", count=SAGAS)
        book = next(iter(shop.stock))
        before = baseline(sql)
        load = Load(client, f"{orchestration.url('orchestrator')}/saga/start", bodies, PACE)
        running = asyncio.create_task(load.run())
        probes = Answers()
        try:
            await until(lambda: len(load.accepted) >= 15, timeout=60)
            known = load.accepted[0]
            await asyncio.to_thread(mariadb.kill)

            async def refused_with_503() -> bool:
                for url in (
                    f"{orchestration.url('inventory')}/inventory/{book}",
                    f"{orchestration.url('order')}/orders/{known}",
                    f"{orchestration.url('orchestrator')}/saga/{known}/status",
                ):
                    try:
                        probes.record(await client.get(url, timeout=10))
                    except httpx.TransportError:
                        probes.transport_errors += 1
                return len(probes.unavailable) >= 3

            await until(refused_with_503, timeout=30, interval=0.2)
            await asyncio.to_thread(mariadb.start)
            healed = time.monotonic()
            await running
        finally:
            running.cancel()
        assert {body["error"] for body in probes.unavailable} == {"unavailable"}
        assert probes.unexpected == [] and load.answers.unexpected == []
        assert load.refused == [] and len(load.accepted) == SAGAS
        await all_terminal(sql, load.accepted, "orchestration", healed)
        await invariants_hold(sql, before)
        await all_healthy(client, orchestration)
    finally:
        sql.dispose()


async def test_choreography_survives_a_redis_crash_under_load(
    choreography: Deployment, redis_server: OwnRedis, client: httpx.AsyncClient
) -> None:
    sql = sync_engine(choreography.database_url)
    try:
        _, bodies = scenario(sql, pattern="choreography", count=SAGAS)
        before = baseline(sql)
        load = Load(client, f"{choreography.url('order')}/orders", bodies, PACE)
        healed = await crash_mid_load(load, redis_server)
        assert load.refused == [] and len(load.accepted) == SAGAS
        await all_terminal(sql, load.accepted, "choreography", healed)
        await invariants_hold(sql, before)
        assert load.answers.unexpected == []
        await all_healthy(client, choreography)
    finally:
        sql.dispose()
