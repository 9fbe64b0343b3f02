"""A history in bulk: N finished sagas written straight into the tables, as if the deployment
had run them, so that a bench measures a database that has one (``cloudmart bench --preload``,
``cloudmart bench console``).

1. A few real sagas, the *templates*, run through the deployment's REST API (a few of each
   ending asked for) with the :data:`~cloudmart.bench.mix.HISTORY` catalogue: customers and
   books of their own, so a history never moves the balance or the stock the live run reads.
   They are waited for until :mod:`cloudmart.check` holds over them (in the choreography an
   order reads CANCELLED while compensations are still on their way).
2. Every row the templates left is copied under new ids, server side (``INSERT ... SELECT``
   from a temporary table of new ids, :data:`CHUNK` sagas a transaction): their
   ``saga_instances`` and ``saga_step_logs``, the order and its items, the stock reservations,
   the payment, the shipment, the inbox, the ledger entries and, in the choreography, the
   outbox (marked published), the processed events, the order's events and shipping's
   prerequisites. Order and saga ids are new UUIDs (as the orchestrator's and the order
   service's own), replaced in every text column that holds them (the saga's input, history
   payloads, inbox keys); an event id becomes a UUID derived from the new order id and the old
   event id, so the tables that name one event still agree. Times move by one shift per copy,
   spread over the :data:`SPREAD` before now, oldest last, so the live run's sagas are newest.
3. The catalogue's rows move as the copies' ledger entries say (each copy's movements are its
   template's), so ``cloudmart check`` holds over the whole database: every copied payment
   was taken from a balance, every consumed unit left a book's stock.

MySQL/MariaDB only (the bench needs CLOUDMART_DATABASE_URL). A second preload adds to the first.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from activities import tables as domain
from activities.db import create_engine
from cloudmart.bench.catalogue import seed
from cloudmart.bench.mix import HISTORY, order_body, plan
from engine.adapters.sql_tables import saga_instances, saga_step_logs

__all__ = ["CHUNK", "SPREAD", "Preloaded", "copy", "preload", "run_templates"]

SPREAD = timedelta(days=7)
CHUNK = 2000  # sagas per transaction
TEMPLATES_PER_KIND = 3
SETTLE_SECONDS = 30.0

# What a copy holds, in the order the foreign keys need. Each is copied from the rows of the
# template's order id (saga_step_logs: of its saga id).
_TABLES: tuple[sa.Table, ...] = (
    domain.orders,
    domain.order_items,
    domain.stock_reservations,
    domain.payments,
    domain.shipments,
    domain.inbox,
    domain.ledger_entries,
    domain.outbox,
    domain.processed_events,
    domain.order_events,
    domain.shipping_prerequisites,
    saga_instances,
    saga_step_logs,
)

_ids = sa.Table(
    "preload_ids",
    sa.MetaData(),
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("saga_id", sa.String(36), nullable=False),
    sa.Column("t_order_id", sa.String(64), nullable=False),
    sa.Column("t_saga_id", sa.String(36), nullable=False),
    sa.Column("shift_us", sa.BigInteger, nullable=False),
    sa.Index("ix_preload_ids_template", "t_order_id"),
    prefixes=["TEMPORARY"],
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)


@dataclass(frozen=True)
class Preloaded:
    """What a preload wrote and what it took (seconds): running the templates, copying."""

    sagas: int
    templates: int
    templates_seconds: float
    copy_seconds: float

    @property
    def seconds(self) -> float:
        return round(self.templates_seconds + self.copy_seconds, 3)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sagas": self.sagas,
            "templates": self.templates,
            "templates_seconds": self.templates_seconds,
            "copy_seconds": self.copy_seconds,
            "seconds": self.seconds,
            "copied_per_second": round(self.sagas / self.copy_seconds) if self.copy_seconds else 0,
        }


async def preload(
    client: httpx.AsyncClient,
    database_url: str,
    sagas: int,
    *,
    pattern: str = "orchestration",
    mix: Mapping[str, float] | None = None,
) -> Preloaded:
    """``sagas`` finished sagas of ``pattern`` added to the database (the module's steps), their
    endings in the shares of ``mix`` (:func:`~cloudmart.bench.mix.plan`)."""
    kinds = plan(sagas, mix or {})
    began = time.perf_counter()
    templates = await run_templates(client, database_url, sorted(set(kinds)), pattern=pattern)
    ran = time.perf_counter()
    await copy(database_url, templates, kinds)
    done = time.perf_counter()
    return Preloaded(
        sagas,
        sum(len(t) for t in templates.values()),
        round(ran - began, 3),
        round(done - ran, 3),
    )


async def run_templates(
    client: httpx.AsyncClient,
    database_url: str,
    kinds: Sequence[str],
    *,
    pattern: str = "orchestration",
    per_kind: int = TEMPLATES_PER_KIND,
) -> dict[str, list[str]]:
    """``per_kind`` sagas of each of ``kinds`` (see :func:`~cloudmart.bench.mix.plan`) run to
    their end through the REST API on the :data:`~cloudmart.bench.mix.HISTORY` catalogue,
    then waited for until every invariant holds over them; their order ids by kind."""
    from cloudmart.check import check

    await _seed_history(database_url)
    start, status = ("/saga/start", "/saga/{}/status") if pattern == "orchestration" else (
        "/orders", "/orders/{}"
    )  # fmt: skip
    ended = ("COMPLETED", "FAILED", "CANCELLED")

    async def one(i: int, kind: str) -> tuple[str, str]:
        started = await client.post(start, json=order_body(i, kind, HISTORY))
        started.raise_for_status()
        oid = str(started.json()["order_id"])
        while True:
            answer = await client.get(status.format(oid), params={"wait": 10})
            answer.raise_for_status()
            if answer.json()["status"] in ended:
                return kind, oid

    jobs = [one(i, kind) for kind in kinds for i in range(per_kind)]
    templates: dict[str, list[str]] = {}
    for kind, oid in await asyncio.gather(*jobs):
        templates.setdefault(kind, []).append(oid)
    ids = [oid for oids in templates.values() for oid in oids]
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            report = await check(engine, grace_seconds=0.0, order_ids=ids)
            if report.ok:
                return templates
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the templates did not settle: {report.violations[:5]}")
            await asyncio.sleep(0.2)  # a compensation in flight: look again
    finally:
        await engine.dispose()


async def _seed_history(database_url: str) -> None:
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        async with engine.begin() as conn:
            await seed(conn, HISTORY)
    finally:
        await engine.dispose()


async def copy(
    database_url: str, templates: Mapping[str, Sequence[str]], kinds: Sequence[str]
) -> int:
    """One copy per entry of ``kinds``, of a template of that kind (``templates``: order ids
    by kind), in chunks of :data:`CHUNK`; how many were written."""
    ids = [oid for oids in templates.values() for oid in oids]
    engine = create_engine(database_url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:
            sagas = await _saga_ids(conn, ids)
            created = await _created(conn, ids)
            moves = await _moves(conn, ids)
            await conn.commit()
            await _hold_templates(conn, ids, list(sagas.values()))
            statements = [_copy_sql(table) for table in _TABLES]
            newest = datetime.now(UTC).replace(tzinfo=None)
            for first in range(0, len(kinds), CHUNK):
                rows = []
                used: Counter[str] = Counter()
                for i in range(first, min(first + CHUNK, len(kinds))):
                    choices = templates[kinds[i]]
                    template = choices[i % len(choices)]
                    at = newest - SPREAD * (i + 1) / len(kinds)
                    rows.append(
                        {
                            "order_id": str(uuid.uuid4()),
                            "saga_id": str(uuid.uuid4()),
                            "t_order_id": template,
                            "t_saga_id": sagas.get(template, ""),
                            "shift_us": (at - created[template]) // timedelta(microseconds=1),
                        }
                    )
                    used[template] += 1
                async with conn.begin():
                    await conn.execute(_ids.delete())
                    await conn.execute(_ids.insert(), rows)
                    for statement in statements:
                        await conn.execute(statement)
                    await _move(conn, moves, used)
            async with conn.begin():
                for table in (_ids.name, *(_held(t) for t in _TABLES)):
                    await conn.execute(sa.text(f"DROP TEMPORARY TABLE {table}"))
        return len(kinds)
    finally:
        await engine.dispose()


def _held(table: sa.Table) -> str:
    return f"preload_{table.name}"


def _key(table: sa.Table) -> str:
    return "saga_id" if table is saga_step_logs else "order_id"


async def _hold_templates(
    conn: AsyncConnection, order_ids: Sequence[str], saga_ids: Sequence[str]
) -> None:
    """The templates' rows, each table's in a temporary table of its own, and the table of new
    ids: every chunk copies from these few rows, whatever the database holds (and a table
    with no index on its order id, like processed_events, is read once)."""
    async with conn.begin():
        await conn.execute(sa.text("SET SESSION foreign_key_checks = 0, unique_checks = 0"))
        await conn.run_sync(lambda sync: _ids.create(sync))
        for table in _TABLES:
            key = _key(table)
            statement = sa.text(
                f"CREATE TEMPORARY TABLE {_held(table)} (INDEX ({key})) "
                f"SELECT * FROM {table.name} WHERE {key} IN :ids"
            ).bindparams(sa.bindparam("ids", expanding=True))
            await conn.execute(statement, {"ids": saga_ids if key == "saga_id" else order_ids})


async def _saga_ids(conn: AsyncConnection, order_ids: Sequence[str]) -> dict[str, str]:
    """The templates' saga ids (none in the choreography)."""
    rows = await conn.execute(
        sa.select(saga_instances.c.order_id, saga_instances.c.saga_id).where(
            saga_instances.c.order_id.in_(order_ids)
        )
    )
    return {str(r.order_id): str(r.saga_id) for r in rows}


async def _created(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, datetime]:
    """When each template's order was created: what its copies' times move from."""
    rows = await conn.execute(
        sa.select(domain.orders.c.order_id, domain.orders.c.created_at).where(
            domain.orders.c.order_id.in_(ids)
        )
    )
    return {str(r.order_id): r.created_at for r in rows}


_Moves = dict[str, dict[tuple[str, int, str], Decimal]]


async def _moves(conn: AsyncConnection, order_ids: Sequence[str]) -> _Moves:
    """What each template moved, by (account, account id, bucket), from its ledger entries."""
    le = domain.ledger_entries
    rows = await conn.execute(
        sa.select(
            le.c.order_id, le.c.account, le.c.account_id, le.c.bucket, sa.func.sum(le.c.delta)
        )
        .where(le.c.order_id.in_(order_ids))
        .group_by(le.c.order_id, le.c.account, le.c.account_id, le.c.bucket)
    )
    moves: _Moves = {}
    for order_id, account, account_id, bucket, delta in rows:
        moves.setdefault(str(order_id), {})[(str(account), int(account_id), str(bucket))] = Decimal(
            str(delta)
        )
    return moves


async def _move(conn: AsyncConnection, moves: _Moves, used: Counter[str]) -> None:
    """The catalogue's balances and stock moved as the chunk's copied ledger entries say.
    ``shipped`` is no column: it is the CONSUMED reservations, copied with the rest."""
    total: dict[tuple[str, int, str], Decimal] = defaultdict(Decimal)
    for template, n in used.items():
        for key, delta in moves.get(template, {}).items():
            total[key] += delta * n
    for (account, account_id, bucket), delta in sorted(total.items()):
        if not delta or bucket == "shipped":
            continue
        table = domain.customers if account == "customer" else domain.inventory
        row = table.primary_key.columns[0]
        column = table.c[bucket]
        await conn.execute(table.update().where(row == account_id).values({column: column + delta}))


def _copy_sql(table: sa.Table) -> sa.TextClause:
    """``INSERT INTO table SELECT`` the template rows of every id in the chunk, with the new ids
    (module docstring)."""
    names, values = [], []
    for column in table.columns:
        name = column.name
        if column.autoincrement is True and column.primary_key:
            continue  # a serial key of its own
        names.append(name)
        values.append(_value(table, column))
    key = _key(table)
    return sa.text(
        f"INSERT INTO {table.name} ({', '.join(names)}) "
        f"SELECT {', '.join(values)} FROM {_ids.name} m "
        f"JOIN {_held(table)} t ON t.{key} = m.t_{key}"
    )


def _value(table: sa.Table, column: sa.Column[Any]) -> str:
    name, source = column.name, f"t.{column.name}"
    if name in ("order_id", "saga_id"):
        return f"m.{name}"
    if name == "event_id":
        digest = f"MD5(CONCAT(m.order_id, {source}))"
        parts = [f"SUBSTR({digest}, {a}, {n})" for a, n in ((1, 8), (9, 4), (13, 4), (17, 4))]
        return f"CONCAT_WS('-', {', '.join(parts)}, SUBSTR({digest}, 21, 12))"
    if name == "lease_expires_at":
        return "NULL"  # a finished saga has no driver
    if isinstance(column.type, sa.DateTime):
        shifted = f"{source} + INTERVAL m.shift_us MICROSECOND"
        if table is domain.outbox and name == "published_at":
            # Relayed by the template or not yet: a copy's event is never relayed.
            return f"COALESCE({source}, t.created_at) + INTERVAL m.shift_us MICROSECOND"
        return shifted
    if isinstance(column.type, sa.String):  # Text too: every text that may name the ids
        replaced = f"REPLACE({source}, m.t_order_id, m.order_id)"
        if "saga_id" in table.c or table is saga_step_logs:
            replaced = f"REPLACE({replaced}, m.t_saga_id, m.saga_id)"
        return replaced
    return source
