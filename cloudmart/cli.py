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
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from cloudmart import dead_letters, operations_cli
from cloudmart.saga_cli import saga_app
from services._kit import roster
from services._kit.settings import Settings, get_settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")

app = typer.Typer(
    help="CloudMart sagas: an online bookstore's order flow as a saga.", no_args_is_help=True
)
db_app = typer.Typer(help="Create and fill the database.", no_args_is_help=True)
app.add_typer(db_app, name="db")
events_app = typer.Typer(help="Watch the choreography's events.", no_args_is_help=True)
app.add_typer(events_app, name="events")
app.add_typer(dead_letters.app, name="dead-letters")
app.add_typer(saga_app, name="saga")
# Restock and top-up: the operations that bring stock and money in (cloudmart/operations_cli.py).
app.add_typer(operations_cli.stock_app, name="stock", no_args_is_help=True)
app.add_typer(operations_cli.money_app, name="money", no_args_is_help=True)


class Pattern(StrEnum):
    orchestration = "orchestration"
    choreography = "choreography"


@db_app.command("init")
def db_init(
    seed: bool = typer.Option(
        False, "--seed", help="Add the demo catalogue (customers, books, stock)."
    ),
    reset: bool = typer.Option(False, "--reset", help="Drop every table first."),
) -> None:
    """Create the database named in CLOUDMART_DATABASE_URL (or the SQLite file) and its tables."""
    settings = get_settings()
    asyncio.run(_db_init(settings, seed=seed, reset=reset))
    where = (settings.database_url and _redacted(settings.database_url)) or settings.sqlite_path
    typer.echo(f"database ready: {where}{' (demo catalogue)' if seed else ''}")


async def _db_init(settings: Settings, *, seed: bool, reset: bool) -> None:
    from activities.db import create_engine
    from cloudmart.schema import create_schema, ensure_database, seed_demo

    url = settings.effective_database_url
    await ensure_database(url)
    engine = create_engine(url, pool_size=1, max_overflow=0)
    try:
        await create_schema(engine, reset=reset)
        if seed:
            await seed_demo(engine)
    finally:
        await engine.dispose()


@db_app.command("sql")
def db_sql() -> None:
    """Print the schema as MySQL/MariaDB DDL (the content of init.sql)."""
    from cloudmart.schema import generate_init_sql

    typer.echo(generate_init_sql(), nl=False)


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


bench_app = typer.Typer(
    help="Measure the system: sagas through the REST API, the floor of its parts, charts."
)
app.add_typer(bench_app, name="bench")


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    url: str | None = typer.Option(
        None, help="Base URL (default: the orchestrator on 8005, or the order service on 8001)."
    ),
    pattern: Pattern = typer.Option(Pattern.orchestration, help="Saga style of the deployment."),
    sagas: int = typer.Option(500, min=1, help="How many sagas to run."),
    concurrency: int = typer.Option(1, min=1, max=1024, help="Sagas in flight at once."),
    rate: float | None = typer.Option(
        None, min=0.1, help="Open loop: start this many sagas per second (instead of concurrency)."
    ),
    mix: str = typer.Option(
        "", help="Share of orders failing at each step, e.g. stock=0.1,payment=0.1,shipping=0.1."
    ),
    start: bool = typer.Option(
        False, "--start", help="Start the deployment's processes first and stop them at the end."
    ),
    base_port: int | None = typer.Option(
        None, help="Services on BASE+1..BASE+5 (order..orchestrator) instead of 8001-8005."
    ),
    floor: str | None = typer.Option(
        None,
        help=(
            "A `cloudmart bench floor` file: report latency as a multiple of it. `now` measures "
            "the floor just before the run (300 samples and 1000 under load per primitive), so "
            "the multiple and the share of the ceiling come from the same minutes."
        ),
    ),
    out: str | None = typer.Option(None, help="Write the results as JSON to this file."),
    colocated: bool = typer.Option(
        False,
        "--colocated",
        help="The deployment runs every service in one process, messaging in-process "
        "(`cloudmart up --colocated`; with --start, the bench starts it so).",
    ),
) -> None:
    """Drive sagas through a deployment's REST API; report throughput, latency and invariants.

    Needs CLOUDMART_DATABASE_URL (the deployment's database): the bench adds its catalogue
    there and checks every invariant after the run. Subcommands: floor, report.
    """
    if ctx.invoked_subcommand is not None:
        return
    from cloudmart import bench as bench_module
    from cloudmart.runner import run

    try:
        shares = bench_module.parse_mix(mix)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--mix") from exc
    settings = get_settings(pattern=pattern.value)
    floor_data = _floor_for_bench(floor, settings)
    ports = roster.ports_from(base_port)
    entry = "orchestrator" if pattern is Pattern.orchestration else "order"
    target = url or f"http://127.0.0.1:{ports[entry]}"
    # Services of a deployment named by --url alone are looked for beside it (its port is the
    # entry's, in the layout --base-port describes).
    beside = bench_module.ports_beside(url, entry) if url and base_port is None else ports
    services = roster.services_of(pattern)
    watch = bench_module.watched(
        target, pattern.value, services, beside, settings, colocated=colocated
    )

    def go() -> bench_module.BenchResult:
        return run(
            bench_module.run(
                target,
                sagas,
                concurrency,
                pattern.value,
                rate=rate,
                mix=shares,
                database_url=settings.effective_database_url,
                floor=floor_data,
                settings={
                    "url": target,
                    "db_pool_size": settings.db_pool_size,
                    "db_max_overflow": settings.db_max_overflow,
                    "namespace": settings.namespace,
                    "started_deployment": start,
                    "colocated": colocated,
                },
                progress=sys.stderr,
                watch=watch,
            )
        )

    if start:
        if settings.embedded:
            typer.echo("cloudmart bench --start needs CLOUDMART_DATABASE_URL", err=True)
            raise typer.Exit(2)
        asyncio.run(_db_init(settings, seed=False, reset=False))
        log_path = f"bench-{pattern.value}.log"
        typer.echo(
            f"starting {pattern.value}{' co-located' if colocated else ''} on "
            f"{sorted(ports[name] for name in services)}; "
            f"logs: {log_path}",
            err=True,
        )
        with bench_module.deployment(
            services, pattern.value, ports, log_path=log_path, colocated=colocated
        ):
            result = go()
    else:
        result = go()
    typer.echo(bench_module.report(result))
    if out:
        with open(out, "w") as handle:
            handle.write(bench_module.to_json(result))


@bench_app.command("console")
def bench_console(
    sagas: int = typer.Option(10_000, min=12, help="Sagas the database holds when timing."),
    requests: int = typer.Option(200, min=20, help="Requests per page."),
    url: str | None = typer.Option(None, help="The orchestrator (default: 8005)."),
    start: bool = typer.Option(
        False, "--start", help="Start the orchestration's processes first and stop them after."
    ),
    base_port: int | None = typer.Option(
        None, help="Services on BASE+1..BASE+5 (order..orchestrator) instead of 8001-8005."
    ),
    out: str | None = typer.Option(None, help="Write the timings as JSON to this file."),
) -> None:
    """Time the operator console's pages (p50, p95) with SAGAS sagas in the database.

    Runs a few real sagas through the orchestrator, copies their rows in bulk until the
    database holds SAGAS, then fetches each page REQUESTS times. Needs CLOUDMART_DATABASE_URL
    (the deployment's database) and, with --start, CLOUDMART_RABBITMQ_URL.
    """
    import contextlib
    import dataclasses

    import httpx

    from cloudmart.bench import console_pages
    from cloudmart.bench.catalogue import seed_catalogue
    from cloudmart.bench.deployment import deployment

    settings = get_settings(pattern=Pattern.orchestration.value)
    if settings.embedded:
        typer.echo("cloudmart bench console needs CLOUDMART_DATABASE_URL", err=True)
        raise typer.Exit(2)
    ports = roster.ports_from(base_port)
    target = url or f"http://127.0.0.1:{ports['orchestrator']}"
    database_url = settings.effective_database_url

    async def go() -> list[console_pages.PageTiming]:
        await seed_catalogue(database_url)
        async with httpx.AsyncClient(base_url=target, timeout=30) as client:
            templates = await console_pages.run_templates(client)
            added = await console_pages.fill(database_url, templates, sagas)
            typer.echo(f"{added} sagas copied from {len(templates)} run", err=True)
            return await console_pages.measure(client, templates, requests=requests)

    with contextlib.ExitStack() as stack:
        if start:
            asyncio.run(_db_init(settings, seed=False, reset=False))
            services = roster.services_of(Pattern.orchestration)
            stack.enter_context(
                deployment(services, "orchestration", ports, log_path="bench-console.log")
            )
        timings = asyncio.run(go())
    typer.echo(console_pages.render(timings, sagas))
    if out:
        with open(out, "w") as handle:
            json.dump([dataclasses.asdict(t) for t in timings], handle, indent=2)


_FLOOR_NEEDS = "needs CLOUDMART_DATABASE_URL, CLOUDMART_RABBITMQ_URL and CLOUDMART_REDIS_URL"


def _measure_floor(
    settings: Settings, *, samples: int, warmup: int, load: int, concurrency: int
) -> dict[str, Any] | None:
    """``cloudmart bench floor``'s figures on the configured servers (see
    :func:`cloudmart.floor.measure`), progress on stderr; None without all three servers."""
    from cloudmart import floor as floor_module
    from cloudmart.runner import run
    from services._kit.logging import configure_logging

    if settings.embedded or not settings.rabbitmq_url or not settings.redis_url:
        return None
    configure_logging(settings.model_copy(update={"log_level": "WARNING"}))
    return run(
        floor_module.measure(
            database_url=settings.effective_database_url,
            rabbitmq_url=settings.rabbitmq_url,
            redis_url=settings.redis_url,
            samples=samples,
            warmup=warmup,
            load=load,
            concurrency=concurrency,
            progress=sys.stderr,
        )
    )


def _floor_for_bench(floor: str | None, settings: Settings) -> dict[str, Any] | None:
    """The floor ``cloudmart bench --floor`` names: a file's content, or measured now."""
    if floor is None:
        return None
    if floor != "now":
        path = Path(floor)
        if not path.is_file():
            raise typer.BadParameter(f"no file {floor!r} (or say `now`)", param_hint="--floor")
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    from cloudmart import floor as floor_module

    figures = _measure_floor(settings, samples=300, warmup=30, load=1000, concurrency=32)
    if figures is None:
        needs = f"`now` measures the floor, which {_FLOOR_NEEDS}"
        raise typer.BadParameter(needs, param_hint="--floor")
    typer.echo(floor_module.report(figures), err=True)
    return figures


@bench_app.command("floor")
def bench_floor(
    samples: int = typer.Option(1000, min=10, help="Measurements per primitive."),
    warmup: int = typer.Option(100, min=0, help="Unmeasured operations before them."),
    load: int = typer.Option(
        2000, min=0, help="Operations per primitive under load, for its CPU cost (0: none)."
    ),
    concurrency: int = typer.Option(32, min=1, max=256, help="Operations in flight under load."),
    out: str | None = typer.Option(None, help="Write the figures as JSON to this file."),
) -> None:
    """Measure what a saga cannot avoid: a RabbitMQ round trip, a MariaDB commit, a Redis hop.

    Each one at a time (latency: the floor of one saga), then under load (CPU per operation:
    the ceiling of sagas per second on this machine's cores). Uses CLOUDMART_DATABASE_URL,
    CLOUDMART_RABBITMQ_URL and CLOUDMART_REDIS_URL.
    """
    from cloudmart import floor as floor_module

    figures = _measure_floor(
        get_settings(), samples=samples, warmup=warmup, load=load, concurrency=concurrency
    )
    if figures is None:
        typer.echo(f"cloudmart bench floor {_FLOOR_NEEDS}", err=True)
        raise typer.Exit(2)
    typer.echo(floor_module.report(figures))
    if out:
        with open(out, "w") as handle:
            json.dump(figures, handle, indent=2)


@bench_app.command("report")
def bench_report(
    results: list[str] = typer.Argument(..., help="Results files of `cloudmart bench --out`."),
    out_dir: str = typer.Option("bench-report", help="Where to write the charts and report.md."),
) -> None:
    """Charts (PNG) and a markdown table of every run, from results files."""
    from cloudmart import report as report_module

    try:
        loaded = report_module.load_results(results)
    except report_module.NotResults as exc:
        typer.echo(f"cloudmart bench report: {exc}", err=True)
        raise typer.Exit(2) from None
    written = report_module.write_report(loaded, out_dir)
    for line in written:
        typer.echo(line)


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


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def main() -> None:
    app()
