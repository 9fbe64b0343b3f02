"""Running services: one per process (``serve``), all in one process (embedded, or co-located
on a database server), or a supervisor that starts one process per service and stops them all
on Ctrl-C (``up``)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import threading
from collections.abc import Coroutine, Iterator
from typing import IO, Any, TypeVar

import uvicorn

from activities.db import Database
from services._kit.roster import SERVICE_PORTS
from services._kit.settings import Settings

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop where it is installed (uvicorn[standard] brings it), else asyncio.

    uvicorn picks uvloop only when it creates the loop itself; these servers run inside a loop
    of ours, so we pick it here.
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency through uvicorn[standard]
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def _server(
    settings: Settings, service: str, port: int, database: Database | None = None
) -> uvicorn.Server:
    from services.registry import build_service_app

    config = uvicorn.Config(
        build_service_app(service, settings, database=database),
        host=settings.host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        # Longer than HTTP clients keep idle connections (httpx: 5 s), so a client never
        # sends a request on a connection the server is closing at that very moment.
        timeout_keep_alive=65,
    )
    return uvicorn.Server(config)


async def serve_one(settings: Settings, service: str, port: int) -> None:
    await _server(settings, service, port).serve()


async def run_in_one_process(
    settings: Settings, services: list[str], ports: dict[str, int] | None = None
) -> None:
    """Every service in this process, each on its own port (``ports``, else its standard one),
    sharing one database and messaging in-process: embedded (a SQLite file, demo data seeded)
    or co-located (the configured database, whose tables are made if missing)."""
    from cloudmart.schema import create_schema, seed_demo

    ports = ports or SERVICE_PORTS
    database = Database.from_url(settings.effective_database_url)
    await create_schema(database.engine)
    if settings.embedded:
        await seed_demo(database.engine)
    servers = [_server(settings, name, ports[name], database) for name in services]
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for server in servers:
            server.should_exit = True

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    for server in servers:
        # One handler for all servers (above), not one per server fighting over the signal.
        server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    for name in services:
        print(f"{name:>12}  http://{settings.host}:{ports[name]}/docs", flush=True)
    try:
        await asyncio.gather(*(server.serve() for server in servers))
    finally:
        await database.dispose()


def _pump(prefix: str, stream: Iterator[bytes]) -> None:
    for line in stream:
        sys.stdout.write(f"{prefix} | {line.decode(errors='replace')}")
        sys.stdout.flush()


def start_services(
    services: list[str],
    pattern: str,
    *,
    ports: dict[str, int] | None = None,
    output: IO[bytes] | None = None,
) -> dict[str, subprocess.Popen[bytes]]:
    """Start ``cloudmart serve NAME`` for each service (on ``ports[NAME]`` when given).

    Their logs go to ``output``, or else to our stdout, each line prefixed with the name.
    """
    width = max(len(s) for s in services)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for name in services:
        port = ["--port", str(ports[name])] if ports else []
        proc = subprocess.Popen(
            [sys.executable, "-m", "cloudmart", "serve", name, "--pattern", pattern, *port],
            stdout=output or subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        procs[name] = proc
        if output is None:
            assert proc.stdout is not None
            threading.Thread(
                target=_pump, args=(name.ljust(width), proc.stdout), daemon=True
            ).start()
    return procs


def start_colocated(
    pattern: str, ports: dict[str, int], *, output: IO[bytes]
) -> subprocess.Popen[bytes]:
    """Start ``cloudmart up --colocated``: every service of ``pattern`` in one process, on
    ``ports`` (a ``--base-port`` layout), its log to ``output``."""
    from services._kit.roster import spec_of

    base = ports["order"] - spec_of("order").offset
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cloudmart",
            "up",
            "--pattern",
            pattern,
            "--colocated",
            "--base-port",
            str(base),
        ],
        stdout=output,
        stderr=subprocess.STDOUT,
    )


def stop_services(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process still running, SIGKILL those not gone within 10 s."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.terminate()
    for proc in procs.values():
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def supervise(services: list[str], pattern: str, ports: dict[str, int] | None = None) -> int:
    """Start ``cloudmart serve NAME`` for each service (on ``ports`` when given), prefix their
    logs, stop all on Ctrl-C.

    Returns the exit code: 0 after Ctrl-C, else the code of the first process that died.
    """
    procs = start_services(services, pattern, ports=ports)
    try:
        while True:
            for name, proc in procs.items():
                code = proc.poll()
                if code is not None:
                    print(f"{name} exited with {code}; stopping the others", flush=True)
                    return code or 1
            with contextlib.suppress(subprocess.TimeoutExpired):
                next(iter(procs.values())).wait(timeout=0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        stop_services(procs)
