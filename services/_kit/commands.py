"""A service's command consumer: the orchestrator's commands, answered by the same operations
the REST routes call.

In the orchestration pattern on real infrastructure, each service process consumes its
RabbitMQ command queue beside its HTTP API; embedded, the orchestrator calls the operations in
process and no consumer runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from activities.db import Database
from activities.registry import invoke
from services._kit.app import Lifespan
from services._kit.settings import Settings


def consumes_commands(settings: Settings) -> bool:
    """Whether a service process should consume RabbitMQ commands under these settings."""
    return (
        settings.pattern == "orchestration"
        and not settings.embedded
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
        from engine.adapters.rabbitmq import RabbitMQCommandServer

        db: Database = app.state.db

        async def handle(
            method: str, payload: dict[str, Any], headers: dict[str, str]
        ) -> dict[str, Any]:
            return await invoke(
                db, f"{service}.{method}", payload, served_countries=settings.served_countries
            )

        server = RabbitMQCommandServer(
            settings.rabbitmq_url or "",
            namespace=settings.namespace,
            service=service,
            handler=handle,
        )
        async with server:
            app.state.command_server = server

            async def consuming() -> bool:
                return server.connected

            app.state.health_checks["rabbitmq"] = consuming
            yield

    return run
