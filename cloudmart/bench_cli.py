"""``cloudmart bench``: sagas through a deployment's REST API; the floor of its parts; charts.

The measuring itself is :mod:`cloudmart.bench` (a run), :mod:`cloudmart.floor` (the floor) and
:mod:`cloudmart.report` (charts and a table); these are the commands over them.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import typer

from cloudmart.db_cli import prepare_database
from cloudmart.options import Pattern
from services._kit import roster
from services._kit.settings import Settings, get_settings

__all__ = ["bench_app"]

bench_app = typer.Typer(
    help="Measure the system: sagas through the REST API, the floor of its parts, charts."
)


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
    preload: int = typer.Option(
        0,
        min=0,
        help=(
            "First write this many finished sagas into the database, in bulk (copies of a few "
            "real ones, in the mix's shares, on customers and books of their own, every "
            "invariant kept), so the run is measured against a history; its time is reported."
        ),
    ),
) -> None:
    """Drive sagas through a deployment's REST API; report throughput, latency and invariants.

    Needs CLOUDMART_DATABASE_URL (the deployment's database): the bench adds its catalogue
    there and checks every invariant after the run. With --preload N, N finished sagas are
    added first (not measured). Subcommands: floor, report, console.
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
                    "preload": preload,
                },
                progress=sys.stderr,
                watch=watch,
                preload=preload,
            )
        )

    if (start or preload) and settings.embedded:
        needs = "--start" if start else "--preload"
        typer.echo(f"cloudmart bench {needs} needs CLOUDMART_DATABASE_URL", err=True)
        raise typer.Exit(2)
    if start:
        asyncio.run(prepare_database(settings, seed=False, reset=False))
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
    from cloudmart.bench.deployment import deployment

    settings = get_settings(pattern=Pattern.orchestration.value)
    if settings.embedded:
        typer.echo("cloudmart bench console needs CLOUDMART_DATABASE_URL", err=True)
        raise typer.Exit(2)
    ports = roster.ports_from(base_port)
    target = url or f"http://127.0.0.1:{ports['orchestrator']}"
    database_url = settings.effective_database_url

    async def go() -> list[console_pages.PageTiming]:
        async with httpx.AsyncClient(base_url=target, timeout=30) as client:
            templates = await console_pages.run_templates(client, database_url)
            added = await console_pages.fill(database_url, templates, sagas)
            typer.echo(f"{added} sagas copied from {len(templates)} run", err=True)
            return await console_pages.measure(client, templates, requests=requests)

    with contextlib.ExitStack() as stack:
        if start:
            asyncio.run(prepare_database(settings, seed=False, reset=False))
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
