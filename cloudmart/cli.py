"""The ``cloudmart`` command: database set-up, one service, or the whole system.

::

    cloudmart db init [--seed] [--reset]   create the database and every table
    cloudmart db sql                       print the schema (the text of init.sql)
    cloudmart serve SERVICE                one service on its port (real infrastructure)
    cloudmart up [--pattern P]             every service; embedded when no database is set
    cloudmart events tail                  print choreography events as they flow (Redis)
    cloudmart check [--baseline FILE]      check every saga guarantee over the database
    cloudmart dead-letters list|redrive    what the dead-letter queues and streams hold
    cloudmart replay [--status S] [FILE]   replay histories against today's workflow code
    cloudmart saga list|show|history|...   sagas through the orchestrator's REST API
    cloudmart bench [--rate R] [--mix M]   sagas through the REST API; floor; report; console
    cloudmart stock restock BOOK QTY       add stock (POST /inventory/{book_id}/restock)
    cloudmart money top-up CUSTOMER AMOUNT add money (POST /payments/top-up)

The command groups are modules of their own (:mod:`cloudmart.db_cli`, :mod:`cloudmart.saga_cli`,
:mod:`cloudmart.bench_cli`, :mod:`cloudmart.operations_cli`, :mod:`cloudmart.dead_letters`);
this module puts them together with the commands that stand alone.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from cloudmart import dead_letters, operations_cli
from cloudmart.bench_cli import bench_app
from cloudmart.db_cli import db_app
from cloudmart.options import Pattern
from cloudmart.saga_cli import saga_app
from services._kit import roster
from services._kit.settings import Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")

app = typer.Typer(
    help="CloudMart sagas: an online bookstore's order flow as a saga.", no_args_is_help=True
)
app.add_typer(db_app, name="db")
events_app = typer.Typer(help="Watch the choreography's events.", no_args_is_help=True)
app.add_typer(events_app, name="events")
app.add_typer(dead_letters.app, name="dead-letters")
app.add_typer(saga_app, name="saga")
# Restock and top-up: the operations that bring stock and money in (cloudmart/operations_cli.py).
app.add_typer(operations_cli.stock_app, name="stock", no_args_is_help=True)
app.add_typer(operations_cli.money_app, name="money", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@app.command()
def check(
    grace: float = typer.Option(
        60.0, min=0, help="Seconds a saga may still be running before it counts as stuck."
    ),
    baseline: str | None = typer.Option(
        None, help="Compare stock and money with this snapshot (from --snapshot)."
    ),
    snapshot: str | None = typer.Option(
        None, help="Only write the current stock and money totals to this file, as a baseline."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check SPEC §6's guarantees over the database; exit 0 only when every one holds.

    Reports, with the offending ids: sagas or orders not terminal after --grace seconds, a
    COMPLETED one missing an effect, a FAILED one with an effect left, a step or compensation
    completed twice, compensations out of reverse order, two owners driving one saga, a balance
    or a book's counts that differ from what the ledger's entries add up to (a row changed
    outside any operation; no baseline needed), and stock or money not conserved (against
    --baseline).
    """
    from pathlib import Path

    from cloudmart import check as checker

    settings = get_settings()
    if snapshot:
        taken = asyncio.run(_with_engine(settings, checker.snapshot))
        Path(snapshot).write_text(taken.to_json())
        typer.echo(
            f"baseline of {len(taken.stock)} books and {len(taken.money)} customers: {snapshot}"
        )
        return
    before = checker.Baseline.from_json(Path(baseline).read_text()) if baseline else None

    async def run(engine: AsyncEngine) -> checker.CheckReport:
        return await checker.check(engine, grace_seconds=grace, baseline=before)

    report = asyncio.run(_with_engine(settings, run))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        typer.echo(report.render())
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def replay(
    files: list[Path] = typer.Argument(
        None, help="History files (from `cloudmart saga export`); none: the database."
    ),
    status: list[str] = typer.Option(
        [], "--status", help="Only sagas with this status (repeatable)."
    ),
    workflow: str | None = typer.Option(None, help="Only sagas of this workflow."),
    since: datetime | None = typer.Option(
        None, help="Only sagas started at or after this time (UTC)."
    ),
    limit: int = typer.Option(1000, min=1, help="At most this many sagas, newest first."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    lint: bool = typer.Option(
        False,
        "--lint",
        help="Instead of replaying, read the workflows' modules for calls replay cannot "
        "repeat (clock, randomness, uuid4, sleep, I/O) and print each with its file:line.",
    ),
) -> None:
    """Replay histories against the workflows deployed now (those of the module
    CLOUDMART_WORKFLOWS names, as the orchestrator), sending and writing nothing.

    Prints one line per saga (matching, or diverged: at which position, what history holds,
    what the code asked for) and exits 1 when any diverged, so it can gate a deploy. With
    ``--lint``, exits 1 when a workflow's module calls what replay cannot repeat.
    """
    from cloudmart import replay as replayer
    from engine.errors import WorkflowDefinitionError
    from orchestration_pattern.orchestrator import workflows_of

    settings = get_settings()
    try:
        deployed = workflows_of(settings.workflows)
    except (ValueError, WorkflowDefinitionError) as exc:  # refused as the orchestrator would
        typer.echo(f"CLOUDMART_WORKFLOWS={settings.workflows}: {exc}", err=True)
        raise typer.Exit(1) from exc
    if lint:
        found = replayer.lint(deployed)
        typer.echo(replayer.render_lint(found))
        raise typer.Exit(1 if found else 0)

    async def from_database(engine: AsyncEngine) -> list[Any]:
        histories = replayer.from_database(
            engine, statuses=status, workflow=workflow, since=since, limit=limit
        )
        return await replayer.replay_all(deployed, histories)

    async def run() -> list[Any]:
        if files:
            return await replayer.replay_all(deployed, replayer.from_files(files))
        return await _with_engine(settings, from_database)

    results = asyncio.run(run())
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "workflow_id": r.workflow_id,
                        "workflow": r.workflow,
                        "matching": r.matching,
                        "divergence": r.divergence,
                    }
                    for r in results
                ],
                indent=2,
            )
        )
    else:
        typer.echo(replayer.render(results))
    raise typer.Exit(0 if all(r.matching for r in results) else 1)


async def _with_engine(settings: Settings, use: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    from activities.db import create_engine

    engine = create_engine(settings.effective_database_url, pool_size=1, max_overflow=0)
    try:
        return await use(engine)
    finally:
        await engine.dispose()


def _known_service(name: str) -> str:
    if name not in roster.SERVICE_NAMES:
        raise typer.BadParameter(f"{name!r} is not one of {', '.join(roster.SERVICE_NAMES)}")
    return name


@app.command()
def serve(
    service: str = typer.Argument(
        ...,
        help=f"Which service to run: {', '.join(roster.SERVICE_NAMES)}.",
        callback=_known_service,
    ),
    port: int | None = typer.Option(None, help="Port (default: the service's own, 8001-8005)."),
    pattern: Pattern | None = typer.Option(
        None, help="Saga style (default: CLOUDMART_PATTERN, else orchestration)."
    ),
) -> None:
    """Run one service on its port against the configured database."""
    settings = get_settings(**({"pattern": pattern.value} if pattern else {}))
    if settings.embedded:
        typer.echo(
            "cloudmart serve needs real infrastructure: set CLOUDMART_DATABASE_URL "
            "(e.g. mysql+aiomysql://root@127.0.0.1:3306/cloudmart). "
            "`cloudmart up` without it runs everything embedded.",
            err=True,
        )
        raise typer.Exit(2)
    from cloudmart.runner import run, serve_one

    run(serve_one(settings, service, port or roster.SERVICE_PORTS[service]))


@app.command()
def up(
    pattern: Pattern = typer.Option(Pattern.orchestration, help="Saga style."),
    colocated: bool = typer.Option(
        False,
        "--colocated",
        help="Every service in this one process on CLOUDMART_DATABASE_URL, messaging "
        "in-process (no RabbitMQ or Redis).",
    ),
    base_port: int | None = typer.Option(
        None, help="Services on BASE+1..BASE+5 (order..orchestrator) instead of 8001-8005."
    ),
) -> None:
    """Run every service of the pattern until Ctrl-C: a process each, or one process when
    embedded (no database configured) or co-located."""
    settings = get_settings(pattern=pattern.value, **({"colocated": True} if colocated else {}))
    from cloudmart import runner

    services, ports = roster.services_of(pattern), roster.ports_from(base_port)
    if settings.embedded:
        typer.echo(
            f"embedded {pattern.value}: SQLite at {settings.sqlite_path}, in-process messaging"
        )
        runner.run(runner.run_in_one_process(settings, services, ports))
    elif settings.colocated:
        typer.echo(f"co-located {pattern.value}: one process, in-process messaging")
        runner.run(runner.run_in_one_process(settings, services, ports))
    else:
        raise typer.Exit(runner.supervise(services, pattern.value, ports))


@events_app.command("tail")
def events_tail() -> None:
    """Print every event added to the Redis stream from now on, one line each, until Ctrl-C."""
    settings = get_settings()
    if not settings.redis_url:
        typer.echo("cloudmart events tail needs CLOUDMART_REDIS_URL", err=True)
        raise typer.Exit(2)
    asyncio.run(_tail(settings.redis_url, settings.namespace))


async def _tail(url: str, namespace: str) -> None:
    from choreography_pattern.redis_bus import tail

    # Ctrl-C / SIGTERM end the tail cleanly, even where the shell started us with SIGINT
    # ignored: the loop stops reading at its next turn (within a second).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async for entry_id, fields in tail(url, namespace, stop):
        typer.echo(
            f"{entry_id}  {fields.get('occurred_at', '?')}  {fields.get('type', '?'):<17} "
            f"order={fields.get('order_id', '?')}  from={fields.get('producer', '?')}  "
            f"seq={fields.get('sequence', '?')}"
        )
        sys.stdout.flush()  # a line as soon as it happens, also into a pipe


def main() -> None:
    app()
