"""An orchestrator-like process for the engine chaos tests (run as a script, not collected).

It drives ``place_order`` sagas on MariaDB with services faked in-process; every command is
recorded in ``engine_effects`` (one row per idempotency key: the effect) and
``engine_deliveries`` (one row per delivery), so the test can count executions. With
``--start N`` it first starts N sagas; then it runs the engine's background loop (lease renewal,
claiming expired sagas) until every saga in the database is terminal, and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import sqlalchemy as sa
import structlog
from sqlalchemy.ext.asyncio import create_async_engine

from contracts.examples import ADDRESS, order_replies
from engine import Engine
from engine.adapters import InMemoryTransport, SqlHistoryStore
from engine.adapters.memory_transport import current_request
from engine.adapters.sql_tables import saga_instances
from workflows import place_order

REPLIES = order_replies("10.00")

effects_metadata = sa.MetaData()
effects = sa.Table(
    "engine_effects",
    effects_metadata,
    sa.Column("idem_key", sa.String(150), primary_key=True),
    sa.Column("target", sa.String(100), nullable=False),
)
deliveries = sa.Table(
    "engine_deliveries",
    effects_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("idem_key", sa.String(150), nullable=False),
    sa.Column("owner", sa.String(50), nullable=False),
)
TARGETS = [
    "order.create_order",
    "inventory.reserve_stock",
    "payment.process_payment",
    "shipping.arrange_shipping",
    "order.complete_order",
    "order.cancel_order",
    "inventory.release_stock",
    "payment.cancel_payment",
    "shipping.cancel_shipping",
]


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--owner", required=True)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--expect", type=int, default=0, help="sagas to exist before exiting")
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--latency", type=float, default=0.01)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    # A frozen process must not keep row locks forever: MariaDB ends a transaction left idle
    # longer than this (the deployment's composition root should do the same).
    db = create_async_engine(
        args.url,
        pool_size=5,
        max_overflow=5,
        pool_pre_ping=True,
        connect_args={"init_command": "SET SESSION idle_transaction_timeout = 1"},
    )
    store = SqlHistoryStore(db)
    # The fake services record effects in autocommit statements: a process frozen by SIGSTOP
    # must not hold row locks of the *services* (real services live in other processes).
    services_db = create_async_engine(
        args.url, pool_size=5, max_overflow=5, isolation_level="AUTOCOMMIT"
    )

    def handler(target: str) -> Any:
        async def handle(payload: dict[str, Any]) -> dict[str, Any]:
            info = current_request()
            assert info is not None
            await asyncio.sleep(args.latency)  # the service's own work
            async with db.begin() as conn:
                await conn.execute(
                    deliveries.insert().values(idem_key=info.idempotency_key, owner=args.owner)
                )
                await conn.execute(
                    effects.insert()
                    .prefix_with("IGNORE")
                    .values(idem_key=info.idempotency_key, target=target)
                )
            reply = REPLIES.get(target)
            return {} if reply is None else reply(payload)

        return handle

    transport = InMemoryTransport({t: handler(t) for t in TARGETS})
    engine = Engine(
        store,
        transport,
        owner_id=args.owner,
        lease_seconds=args.lease,
        poll_interval=args.lease / 4,
        workflows=[place_order],
    )
    for i in range(args.start):
        order_id = f"chaos-{i:03d}"
        await engine.start(
            place_order,
            {
                "order_id": order_id,
                "customer_id": 1,
                "items": [{"book_id": 1, "quantity": 1}],
                "shipping_address": ADDRESS.model_dump(exclude_none=True),
            },
            workflow_id=order_id,
        )
    async with engine:
        while True:
            try:
                total, unfinished = await _progress(db)
            except sa.exc.DBAPIError:  # a connection MariaDB closed while we were frozen
                continue
            if unfinished == 0 and engine.running == 0 and total >= args.expect:
                break
            await asyncio.sleep(0.1)  # polling the database for the exit condition
    await db.dispose()
    await services_db.dispose()
    return 0


async def _progress(db: Any) -> tuple[int, int]:
    async with db.connect() as conn:
        total = (
            await conn.execute(sa.select(sa.func.count()).select_from(saga_instances))
        ).scalar_one()
        unfinished = (
            await conn.execute(
                sa.select(sa.func.count())
                .select_from(saga_instances)
                .where(saga_instances.c.status.not_in(["COMPLETED", "FAILED", "PARKED"]))
            )
        ).scalar_one()
    return int(total), int(unfinished)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
