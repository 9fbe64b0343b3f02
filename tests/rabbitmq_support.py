"""RabbitMQ helpers for tests, plus a small round-trip benchmark.

- :func:`rabbitmq_transport_pair`: command servers for every service named in a handler dict
  (``"service.method"`` → ``async def handler(payload) -> dict``) and a client
  :class:`~engine.adapters.rabbitmq.RabbitMQTransport`, so the transport contract suite can run
  over RabbitMQ exactly as over ``InMemoryTransport`` (same wire mapping of handler errors, same
  ``current_request()`` inside a handler). Its queues and exchanges are deleted on exit.
- :func:`delete_topology`, :func:`force_close_connection` (the broker drops one named
  connection, as on a broker restart), :func:`message_count`.
- ``python tests/rabbitmq_support.py bench [-n 2000] [-c 32]``: round-trip p50/p99 at
  concurrency 1 and throughput at concurrency ``c`` with a trivial handler served by a separate
  process (as FLOOR.md measured).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import aio_pika
import structlog

from engine.adapters import amqp_names as names
from engine.adapters.memory_transport import RequestInfo
from engine.adapters.memory_transport import _current as _current_request  # contract parity
from engine.adapters.rabbitmq import RabbitMQTransport
from engine.errors import RemoteError
from services._kit.command_server import CommandHandler, RabbitMQCommandServer

TEST_RABBITMQ_URL = os.environ.get(
    "CLOUDMART_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/"
)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def unique_namespace() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


async def delete_topology(url: str, namespace: str, services: Iterable[str]) -> None:
    """Delete the command/dead-letter queues of ``services`` and the namespace's exchanges."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for service in services:
            await channel.queue_delete(names.command_queue(namespace, service))
            await channel.queue_delete(names.dead_letter_queue(namespace, service))
        await channel.exchange_delete(names.commands_exchange(namespace))
        await channel.exchange_delete(names.dead_letter_exchange(namespace))


async def message_count(url: str, queue: str) -> int:
    """Messages ready in ``queue`` (passive declare: fails if it does not exist)."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0


async def force_close_connection(connection_name: str) -> None:
    """Have the broker close the connection named ``connection_name`` (CONNECTION_FORCED)."""

    def close() -> None:
        listing = subprocess.run(
            [
                "rabbitmqctl",
                "list_connections",
                "-q",
                "--no-table-headers",
                "pid",
                "client_properties",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        marker = f'{{"connection_name","{connection_name}"}}'
        pids = [line.split("\t", 1)[0] for line in listing.splitlines() if marker in line]
        if len(pids) != 1:
            raise AssertionError(f"expected one connection named {connection_name}, got {pids}")
        subprocess.run(
            ["rabbitmqctl", "close_connection", pids[0], "test: forced close"],
            capture_output=True,
            check=True,
            timeout=30,
        )

    await asyncio.to_thread(close)


class _WireError(Exception):
    """A handler exception carried as the in-memory transport's wire mapping."""

    def __init__(self, wire: dict[str, Any]) -> None:
        super().__init__(wire["message"])
        self.wire = wire

    def to_wire(self) -> dict[str, Any]:
        return self.wire


def _dispatcher(service: str, methods: dict[str, Handler]) -> CommandHandler:
    async def handle(
        method: str, payload: dict[str, Any], headers: dict[str, str]
    ) -> dict[str, Any]:
        handler = methods.get(method)
        if handler is None:
            raise _WireError(
                {
                    "type": "UnknownCommand",
                    "message": f"no handler for {service}.{method}",
                    "non_retryable": True,
                    "details": {},
                }
            )
        caller_headers = {
            key: value
            for key, value in headers.items()
            if key not in (names.IDEMPOTENCY_KEY_HEADER, names.METHOD_HEADER)
        }
        info = RequestInfo(service, method, headers[names.IDEMPOTENCY_KEY_HEADER], caller_headers)
        token = _current_request.set(info)
        try:
            return await handler(payload)
        except Exception as exc:  # the same mapping as InMemoryTransport
            if isinstance(exc, RemoteError) or callable(getattr(exc, "to_wire", None)):
                raise
            raise _WireError(
                {
                    "type": type(exc).__name__,
                    "message": getattr(exc, "message", None) or str(exc),
                    "non_retryable": bool(getattr(exc, "non_retryable", False)),
                    "details": dict(getattr(exc, "details", None) or {}),
                }
            ) from exc
        finally:
            _current_request.reset(token)

    return handle


@contextlib.asynccontextmanager
async def rabbitmq_transport_pair(
    handlers: Mapping[str, Handler],
    namespace: str,
    *,
    url: str = TEST_RABBITMQ_URL,
    **server_options: Any,
) -> AsyncIterator[RabbitMQTransport]:
    """A started client transport and a command server per service found in ``handlers``."""
    by_service: dict[str, dict[str, Handler]] = {}
    for name, handler in handlers.items():
        service, _, method = name.partition(".")
        by_service.setdefault(service, {})[method] = handler
    try:
        async with contextlib.AsyncExitStack() as stack:
            for service, methods in by_service.items():
                server = RabbitMQCommandServer(
                    url,
                    namespace=namespace,
                    service=service,
                    handler=_dispatcher(service, methods),
                    **server_options,
                )
                await stack.enter_async_context(server)
            yield await stack.enter_async_context(RabbitMQTransport(url, namespace=namespace))
    finally:
        await delete_topology(url, namespace, by_service)


# The benchmark ---------------------------------------------------------------------------------


async def _echo(method: str, payload: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    return payload


async def _serve(url: str, namespace: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with RabbitMQCommandServer(
        url, namespace=namespace, service="bench", handler=_echo, prefetch=64
    ):
        print("ready", flush=True)
        await stop.wait()


async def _bench(url: str, n: int, concurrency: int) -> None:
    namespace = unique_namespace()
    server = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "serve", "--url", url, "--namespace", namespace,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        if (await server.stdout.readline()).strip() != b"ready":
            raise SystemExit("the bench server did not start")
        async with RabbitMQTransport(url, namespace=namespace) as transport:

            async def one(i: int) -> float:
                started = time.perf_counter()
                await transport.request(
                    "bench", "echo", {"i": i}, timeout=10, idempotency_key=f"k{i}"
                )
                return time.perf_counter() - started

            for i in range(200):  # warm up
                await one(i)
            latencies = sorted([await one(i) for i in range(n)])
            p50 = statistics.median(latencies) * 1000
            p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
            print(f"c=1:  p50 {p50:.2f} ms, p99 {p99:.2f} ms over {n} requests")

            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(n):
                queue.put_nowait(i)

            async def worker() -> None:
                while not queue.empty():
                    await one(queue.get_nowait())

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - started
            print(f"c={concurrency}: {n / elapsed:.0f} requests/s over {n} requests")
    finally:
        server.send_signal(signal.SIGTERM)
        await server.wait()
        await delete_topology(url, namespace, ["bench"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["bench", "serve"])
    parser.add_argument("--url", default=TEST_RABBITMQ_URL)
    parser.add_argument("--namespace", default="")
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("-c", "--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    if args.mode == "serve":
        asyncio.run(_serve(args.url, args.namespace))
    else:
        asyncio.run(_bench(args.url, args.n, args.concurrency))


if __name__ == "__main__":
    main()
