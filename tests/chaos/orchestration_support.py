"""What the orchestration's chaos suites share: the five processes on MariaDB and RabbitMQ, a
client that retries like a real one, waits on the database, and SPEC §6's checker.

Waits read ``saga_instances`` directly, never the orchestrator's API: the orchestrator may be
dead at that moment.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from conftest import TEST_RABBITMQ_URL, until
from processes import Deployment, deployed
from rabbitmq_support import message_count
from sqlalchemy.ext.asyncio import AsyncEngine

from activities.db import create_engine
from activities.orders import order_id_for
from cloudmart.check import Baseline, check, snapshot
from engine.adapters import amqp_names
from services._kit.roster import SERVICE_NAMES

SERVICES = SERVICE_NAMES
TERMINAL = ("COMPLETED", "FAILED")
# Every saga is terminal within this many seconds of the last fault healing (the bound).
HEALED_WITHIN = 60.0


@contextmanager
def orchestration_deployment(
    name: str, directory: Path, *, base_port: int, **env: str
) -> Iterator[Deployment]:
    """The five processes on a fresh database ``cloudmart_test_chaos_<name>`` and a RabbitMQ
    namespace ``chaos-<name>-<random>``; every queue and exchange is deleted afterwards."""
    with deployed(
        "orchestration",
        f"cloudmart_test_chaos_{name}",
        directory,
        base_port=base_port,
        namespace=f"chaos-{name}-{uuid.uuid4().hex[:6]}",
        **env,
    ) as deployment:
        yield deployment


@dataclass
class Client:
    """Starts sagas as a real client does: on a connection error, a timeout, a 5xx or a 409
    (the same key still in flight) it sends the same request again, with the same
    ``Idempotency-Key``, to the next of ``base_urls`` (a client behind a load balancer),
    until it is accepted (200/202) or ``give_up_after`` seconds passed."""

    base_urls: list[str]
    timeout: float = 5.0
    retry_interval: float = 0.2
    attempts: int = 0
    retried: int = 0
    refused: list[tuple[str, int, str]] = field(default_factory=list)

    async def start(
        self, body: dict[str, Any], *, key: str | None = None, give_up_after: float = 120.0
    ) -> str | None:
        """The order id once accepted; ``None`` when never accepted (refused or gave up)."""
        key = key or f"chaos-{uuid.uuid4()}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + give_up_after
        async with httpx.AsyncClient(timeout=self.timeout) as http:
            for url in itertools.cycle(self.base_urls):
                self.attempts += 1
                try:
                    response = await http.post(
                        f"{url}/saga/start", json=body, headers={"Idempotency-Key": key}
                    )
                except httpx.TransportError:
                    pass
                else:
                    status = response.status_code
                    if status in (200, 202):
                        order_id = str(response.json()["order_id"])
                        assert order_id == order_id_for(key)
                        return order_id
                    if status < 500 and status != 409:
                        self.refused.append((key, status, response.text[:200]))
                        return None
                if loop.time() > deadline:
                    return None
                self.retried += 1
                await asyncio.sleep(self.retry_interval)
        raise AssertionError("unreachable: base_urls is empty")


def database(deployment: Deployment) -> AsyncEngine:
    return create_engine(deployment.database_url, pool_size=2, max_overflow=2)


async def statuses(db: AsyncEngine, order_ids: Sequence[str]) -> dict[str, str]:
    if not order_ids:
        return {}
    query = sa.text("SELECT order_id, status FROM saga_instances WHERE order_id IN :ids")
    query = query.bindparams(sa.bindparam("ids", expanding=True))
    async with db.connect() as conn:
        return {r.order_id: r.status for r in await conn.execute(query, {"ids": list(order_ids)})}


async def all_terminal(db: AsyncEngine, order_ids: Sequence[str]) -> bool:
    found = await statuses(db, order_ids)
    return len(found) == len(order_ids) and all(s in TERMINAL for s in found.values())


async def wait_terminal(
    db: AsyncEngine, order_ids: Sequence[str], timeout: float = HEALED_WITHIN
) -> dict[str, str]:
    """Every saga's final status; fails the test unless all are terminal within ``timeout``."""
    await until(lambda: all_terminal(db, order_ids), timeout=timeout, interval=0.2)
    return await statuses(db, order_ids)


async def scalar(db: AsyncEngine, sql: str, **params: Any) -> Any:
    statement = sa.text(sql)
    for name, value in params.items():
        if isinstance(value, list | tuple):
            statement = statement.bindparams(sa.bindparam(name, expanding=True))
    async with db.connect() as conn:
        return await conn.scalar(statement, params)


async def baseline(db: AsyncEngine) -> Baseline:
    return await snapshot(db)


async def assert_invariants(db: AsyncEngine, before: Baseline) -> None:
    """SPEC §6 over the whole database (every saga there must be terminal)."""
    report = await check(db, baseline=before, grace_seconds=0.0)
    assert report.ok, report.render()


async def assert_no_dead_letters(deployment: Deployment) -> None:
    """No command was given up on: every service's dead-letter queue is empty."""
    dead = {
        service: await message_count(
            TEST_RABBITMQ_URL, amqp_names.dead_letter_queue(deployment.namespace, service)
        )
        for service in SERVICES[:-1]
    }
    assert set(dead.values()) == {0}, dead
