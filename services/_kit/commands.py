"""A service's command consumer: the orchestrator's commands, answered by the same operations
the REST routes call.

In the orchestration pattern on real infrastructure, each service process consumes its
RabbitMQ command queue beside its HTTP API; embedded or co-located (every service in one
process), the orchestrator calls the operations in process and no consumer runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI
from prometheus_client.core import Metric

from activities.db import Database
from activities.registry import invoke
from services._kit import failpoints
from services._kit.app import Lifespan
from services._kit.metrics import Telemetry, gauge
from services._kit.settings import Settings


def consumes_commands(settings: Settings) -> bool:
    """Whether a service process should consume RabbitMQ commands under these settings."""
    return (
        settings.pattern == "orchestration"
        and not settings.in_process
        and bool(settings.rabbitmq_url)
    )


def command_consumer(service: str) -> Lifespan:
    """A lifespan that serves ``service``'s command queue while the app runs."""

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        settings: Settings = app.state.settings
        if not consumes_commands(settings):
            yield
            return
        from services._kit.command_server import RabbitMQCommandServer

        db: Database = app.state.db
        telemetry: Telemetry = app.state.telemetry

        async def handle(
            method: str, payload: dict[str, Any], headers: dict[str, str]
        ) -> dict[str, Any]:
            # The order id is the correlation id: from the headers, else from the command.
            order_id = headers.get("order_id") or payload.get("order_id")
            name = f"{service}.{method}"
            with structlog.contextvars.bound_contextvars(order_id=order_id):
                failpoints.hit("fail_compensation", operation=name)
                failpoints.hit("poison", service=service)
                result = await invoke(db, name, payload, served_countries=settings.served_countries)
                # Committed; the reply is not published and the command not acked yet.
                failpoints.hit("crash_before_reply", service=service)
                return result

        server = RabbitMQCommandServer(
            settings.rabbitmq_url or "",
            namespace=settings.namespace,
            service=service,
            handler=telemetry.count_commands(handle),
            max_deliveries=settings.command_max_deliveries,
            outages=app.state.outages,
        )
        async with server:
            app.state.command_server = server

            async def queues() -> list[Metric]:
                depths = await server.queue_depths()
                dead = server.dead_letter_queue
                return [
                    gauge(
                        "cloudmart_dlq_depth",
                        "Messages in this service's dead-letter queue or stream.",
                        {dead: depths[dead]},
                        "queue",
                    ),
                    gauge(
                        "cloudmart_command_queue_depth",
                        "Commands waiting in this service's RabbitMQ queue.",
                        {server.queue_name: depths[server.queue_name]},
                        "queue",
                    ),
                ]

            telemetry.add_probe("rabbitmq", queues)

            async def consuming() -> bool:
                return server.connected

            app.state.health_checks["rabbitmq"] = consuming
            try:
                yield
            finally:
                telemetry.remove_probe("rabbitmq")

    return run
